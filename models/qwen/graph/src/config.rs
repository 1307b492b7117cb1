//! Model configurations. Key names follow the published `config.json` files so they can be
//! grepped against them. The real values are constants with their source; the tiny test
//! config is read from `tests/fixtures/tiny_config.json` (the one place it lives).

use serde::{Deserialize, Serialize};

/// `transformer/config.json` (the fields the graph uses).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TransformerConfig {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub axes_dims_rope: [usize; 3],
    /// Qwen-Image has no guidance embedding (diffusers' default, false).
    #[serde(default)]
    pub guidance_embeds: bool,
}

impl TransformerConfig {
    /// D = heads · head_dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// `text_encoder/config.json` (flat Qwen2.5-VL keys; language model only).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TextEncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// The vision tower (Qwen-Image-Edit's image prompts; text-to-image does not use it).
    pub vision_config: VisionConfig,
    /// The multimodal RoPE's split of the head's half dims (temporal, rows, columns).
    pub rope_scaling: RopeScaling,
}

/// `text_encoder/config.json`'s `rope_scaling`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RopeScaling {
    pub mrope_section: [usize; 3],
}

/// `text_encoder/config.json`'s `vision_config`: the Qwen2.5-VL vision tower (spec §5.3).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    /// The merger's output: the language model's width.
    pub out_hidden_size: usize,
    pub in_chans: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Pixels per attention window side.
    pub window_size: usize,
    /// The blocks with full attention (the others attend within windows).
    pub fullatt_block_indexes: Vec<usize>,
}

impl VisionConfig {
    /// Values per patch row: channels × temporal patch × patch².
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Head dim = hidden / heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Merged cells per window side (112 px / 14 px / 2 = 4).
    pub fn window_cells(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
}

impl TextEncoderConfig {
    /// Head dim = hidden / heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// `vae/config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VaeConfig {
    pub base_dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
}

impl VaeConfig {
    /// Decoder stage widths: `base_dim · [mult[-1]] + reversed(mult)` (diffusers
    /// `QwenImageDecoder3d`), e.g. 384, 384, 384, 192, 96.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|m| m * self.base_dim)
            .collect()
    }

    /// Channels of the encoder: `conv_in`'s output, then each down stage's (spec §4.4: 96,
    /// 96, 192, 384, 384).
    pub fn encoder_dims(&self) -> Vec<usize> {
        std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|m| m * self.base_dim)
            .collect()
    }

    /// (in, out) channels of `decoder.up_blocks.{i}.resnets.0`: stages after the first
    /// start from the upsampler's halved width.
    pub fn up_block_io(&self, i: usize) -> (usize, usize) {
        let d = self.decoder_dims();
        let cin = if i == 0 { d[i] } else { d[i] / 2 };
        (cin, d[i + 1])
    }
}

/// All three networks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Config {
    pub transformer: TransformerConfig,
    pub text_encoder: TextEncoderConfig,
    pub vae: VaeConfig,
}

/// Which configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigName {
    /// The published Qwen-Image checkpoint.
    Real,
    /// The tiny test config of `tests/fixtures/tiny_config.json`.
    Tiny,
}

/// Tiled VAE decoding as diffusers' `AutoencoderKLQwenImage.tiled_decode` does it, in pixels:
/// tiles of `min` × `min` (the latents' `min / 8`) every `stride`, blended over `min − stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    pub min: usize,
    pub stride: usize,
}

impl VaeTiling {
    /// Latent rows or columns per tile and between tiles (the VAE scales by 8).
    pub fn latent(self) -> (usize, usize) {
        (self.min / 8, self.stride / 8)
    }

    /// The distinct tile lengths along a latent axis of `n`: `min(tile, n − i)` for
    /// `i = 0, stride, …` (none when `n` fits one tile: diffusers then decodes untiled).
    pub fn tile_lengths(self, n: usize) -> Vec<usize> {
        let (tile, stride) = self.latent();
        if n <= tile || stride == 0 {
            return vec![];
        }
        let mut v: Vec<usize> = (0..n).step_by(stride).map(|i| tile.min(n - i)).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.dedup();
        v
    }
}

impl ConfigName {
    /// The tiling of the VAE decode: diffusers' defaults for the real model (256 px tiles
    /// every 192); 32 every 24 for the tiny one, so that its 96×64 and 64² fixtures have
    /// tiles (its parity test runs diffusers with the same).
    pub fn vae_tiling(self) -> VaeTiling {
        match self {
            ConfigName::Real => VaeTiling {
                min: 256,
                stride: 192,
            },
            ConfigName::Tiny => VaeTiling {
                min: 32,
                stride: 24,
            },
        }
    }

    /// The configuration.
    pub fn config(self) -> Result<Config, serde_json::Error> {
        match self {
            ConfigName::Real => Ok(real()),
            ConfigName::Tiny => tiny(),
        }
    }
}

/// The published Qwen-Image configuration.
///
/// Sources (qwen-image-spec.md): transformer §2.1 (`transformer/config.json`, identical to
/// the diffusers `QwenImageTransformer2DModel` defaults), text encoder §3.1
/// (Qwen2.5-VL-7B-Instruct `config.json`, transformers 4.53.1), VAE §4.1
/// (`vae/config.json`, identical to the diffusers `AutoencoderKLQwenImage` defaults).
pub fn real() -> Config {
    Config {
        transformer: TransformerConfig {
            patch_size: 2,
            in_channels: 64,
            out_channels: 16,
            num_layers: 60,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 3584,
            axes_dims_rope: [16, 56, 56],
            guidance_embeds: false,
        },
        text_encoder: TextEncoderConfig {
            vocab_size: 152064,
            hidden_size: 3584,
            intermediate_size: 18944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            rope_scaling: RopeScaling {
                mrope_section: [16, 24, 24],
            },
            vision_config: VisionConfig {
                depth: 32,
                hidden_size: 1280,
                intermediate_size: 3420,
                num_heads: 16,
                out_hidden_size: 3584,
                in_chans: 3,
                patch_size: 14,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                window_size: 112,
                fullatt_block_indexes: vec![7, 15, 23, 31],
            },
        },
        vae: VaeConfig {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
        },
    }
}

/// The tiny config, parsed from the fixture file at build time of this crate.
pub fn tiny() -> Result<Config, serde_json::Error> {
    serde_json::from_str(include_str!("../../../../tests/fixtures/tiny_config.json"))
}

/// RoPE θ of the DiT (`QwenEmbedRope(theta=10000)`, spec §2.5).
pub const DIT_ROPE_THETA: f64 = 10000.0;
/// LayerNorm / RMSNorm eps of the DiT (spec §2.3–2.4).
pub const DIT_EPS: f64 = 1e-6;
/// Sinusoid channels of the timestep embedding (spec §2.3).
pub const TIMESTEP_CHANNELS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_config_parses_from_the_fixture() {
        let t = tiny().unwrap();
        assert_eq!(t.transformer.inner_dim(), 64);
        assert_eq!(t.transformer.axes_dims_rope, [8, 12, 12]);
        assert_eq!(t.vae.decoder_dims(), vec![64, 64, 64, 32, 16]);
        assert_eq!(t.vae.up_block_io(1), (32, 64));
        assert_eq!(t.text_encoder.head_dim(), 8);
    }

    #[test]
    fn tile_lengths_are_diffusers_tiles() {
        let real = ConfigName::Real.vae_tiling();
        // 1024²: latents 128, tiles of 32 at 0, 24, …, 96, and 8 at 120
        assert_eq!(real.tile_lengths(128), vec![32, 8]);
        assert_eq!(real.tile_lengths(166), vec![32, 22]);
        assert_eq!(real.tile_lengths(32), Vec::<usize>::new());
        let tiny = ConfigName::Tiny.vae_tiling();
        assert_eq!(tiny.tile_lengths(12), vec![4, 3]);
        assert_eq!(tiny.tile_lengths(8), vec![4, 2]);
    }

    #[test]
    fn real_config_derivations() {
        let r = real();
        assert_eq!(r.transformer.inner_dim(), 3072);
        assert_eq!(r.vae.decoder_dims(), vec![384, 384, 384, 192, 96]);
        assert_eq!(r.vae.up_block_io(1), (192, 384));
        assert_eq!(r.text_encoder.head_dim(), 128);
    }
}
