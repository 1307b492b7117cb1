//! `--quantize 8|4`: which linear layers of Qwen-Image are quantized, by layer kind.
//!
//! | kind | layers | default |
//! | --- | --- | --- |
//! | `attn` | each block's q/k/v (joined), `to_out.0`, `to_add_out` | quantized |
//! | `img_mlp` | each block's image MLP | quantized |
//! | `txt_mlp` | each block's text MLP | quantized |
//! | `modulation` | `img_mod.1`, `txt_mod.1`, `norm_out.linear` | quantized |
//! | `io` | `img_in`, `txt_in`, `proj_out`, the timestep embedder | bf16 (small, first and last) |
//! | `text_encoder` | every linear of the text encoder | bf16 (peers keep it unquantized) |
//!
//! `--quantize-layers kind=bits,…` overrides a kind (`bits` 4, 8, or 16 for unquantized),
//! e.g. `--quantize 8 --quantize-layers img_mlp=16` keeps the image MLP in bf16. Groups of 64
//! values share a scale and a bias (MLX's default).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use qwen_runtime::quant::{Plan, QuantSpec};

/// A kind of linear layer (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerKind {
    Attn,
    ImgMlp,
    TxtMlp,
    Modulation,
    Io,
    TextEncoder,
}

impl LayerKind {
    pub const ALL: [LayerKind; 6] = [
        LayerKind::Attn,
        LayerKind::ImgMlp,
        LayerKind::TxtMlp,
        LayerKind::Modulation,
        LayerKind::Io,
        LayerKind::TextEncoder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Attn => "attn",
            LayerKind::ImgMlp => "img_mlp",
            LayerKind::TxtMlp => "txt_mlp",
            LayerKind::Modulation => "modulation",
            LayerKind::Io => "io",
            LayerKind::TextEncoder => "text_encoder",
        }
    }

    /// The kind of a transformer weight key (full checkpoint key).
    pub fn of_transformer_key(key: &str) -> LayerKind {
        let in_block = key
            .strip_prefix("transformer_blocks.")
            .and_then(|k| k.split_once('.'))
            .map(|(_, rest)| rest);
        match in_block {
            Some(k) if k.starts_with("attn.") => LayerKind::Attn,
            Some(k) if k.starts_with("img_mlp.") => LayerKind::ImgMlp,
            Some(k) if k.starts_with("txt_mlp.") => LayerKind::TxtMlp,
            Some(k) if k.starts_with("img_mod.") || k.starts_with("txt_mod.") => {
                LayerKind::Modulation
            }
            _ if key.starts_with("norm_out.") => LayerKind::Modulation,
            _ => LayerKind::Io,
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bits per layer kind (`None`: unquantized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantization {
    kinds: BTreeMap<LayerKind, Option<i32>>,
}

impl Quantization {
    /// `--quantize bits` with the default kinds of the module doc.
    pub fn new(bits: i32) -> Result<Self, String> {
        check_bits(bits)?;
        let kinds = LayerKind::ALL
            .into_iter()
            .map(|k| {
                let q = !matches!(k, LayerKind::Io | LayerKind::TextEncoder);
                (k, q.then_some(bits))
            })
            .collect();
        Ok(Self { kinds })
    }

    /// Applies `kind=bits,…` (16: unquantized).
    pub fn with_overrides(mut self, spec: &str) -> Result<Self, String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, b) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: write kind=bits, e.g. img_mlp=16"))?;
            let kind = LayerKind::ALL
                .into_iter()
                .find(|x| x.name() == k.trim())
                .ok_or_else(|| {
                    let names: Vec<&str> = LayerKind::ALL.iter().map(|k| k.name()).collect();
                    format!("`{k}` is not a layer kind; kinds: {}", names.join(", "))
                })?;
            let bits: i32 = b
                .trim()
                .parse()
                .map_err(|_| format!("`{b}`: bits are 4, 8 or 16"))?;
            let q = if bits == 16 {
                None
            } else {
                check_bits(bits)?;
                Some(bits)
            };
            self.kinds.insert(kind, q);
        }
        Ok(self)
    }

    /// The bits of a kind (`None`: unquantized).
    pub fn bits(&self, kind: LayerKind) -> Option<i32> {
        self.kinds.get(&kind).copied().flatten()
    }

    /// The plan for the transformer's weights.
    pub fn transformer(&self) -> TransformerPlan<'_> {
        TransformerPlan(self)
    }

    /// The plan for the text encoder's weights.
    pub fn text_encoder(&self) -> TextEncoderPlan {
        TextEncoderPlan(self.bits(LayerKind::TextEncoder).map(QuantSpec::bits))
    }

    /// `attn=8,img_mlp=8,…` for metadata and logs.
    pub fn describe(&self) -> String {
        self.kinds
            .iter()
            .map(|(k, b)| format!("{k}={}", b.unwrap_or(16)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bits: i32 = s.parse().map_err(|_| format!("`{s}`: bits are 4 or 8"))?;
        Quantization::new(bits)
    }
}

fn check_bits(bits: i32) -> Result<(), String> {
    match bits {
        4 | 8 => Ok(()),
        b => Err(format!("{b} bits: 4 and 8 are supported")),
    }
}

/// The transformer's layers by kind.
#[derive(Debug, Clone, Copy)]
pub struct TransformerPlan<'a>(&'a Quantization);

impl Plan for TransformerPlan<'_> {
    fn spec(&self, key: &str) -> Option<QuantSpec> {
        self.0
            .bits(LayerKind::of_transformer_key(key))
            .map(QuantSpec::bits)
    }
}

/// Every linear layer of the text encoder alike (its token embedding is not one).
#[derive(Debug, Clone, Copy)]
pub struct TextEncoderPlan(pub Option<QuantSpec>);

impl Plan for TextEncoderPlan {
    fn spec(&self, key: &str) -> Option<QuantSpec> {
        self.0.filter(|_| !key.contains("embed_tokens"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_keys() {
        let k = LayerKind::of_transformer_key;
        assert_eq!(
            k("transformer_blocks.3.attn.to_qkv.weight"),
            LayerKind::Attn
        );
        assert_eq!(
            k("transformer_blocks.0.attn.to_add_out.weight"),
            LayerKind::Attn
        );
        assert_eq!(
            k("transformer_blocks.59.img_mlp.net.2.weight"),
            LayerKind::ImgMlp
        );
        assert_eq!(
            k("transformer_blocks.1.txt_mlp.net.0.proj.weight"),
            LayerKind::TxtMlp
        );
        assert_eq!(
            k("transformer_blocks.1.txt_mod.1.weight"),
            LayerKind::Modulation
        );
        assert_eq!(k("norm_out.linear.weight"), LayerKind::Modulation);
        assert_eq!(k("img_in.weight"), LayerKind::Io);
        assert_eq!(
            k("time_text_embed.timestep_embedder.linear_1.weight"),
            LayerKind::Io
        );
    }

    #[test]
    fn defaults_and_overrides() {
        let q = Quantization::new(8).unwrap();
        assert_eq!(q.bits(LayerKind::Attn), Some(8));
        assert_eq!(q.bits(LayerKind::Io), None);
        assert_eq!(q.bits(LayerKind::TextEncoder), None);
        let q = q.with_overrides("img_mlp=16, text_encoder=4").unwrap();
        assert_eq!(q.bits(LayerKind::ImgMlp), None);
        assert_eq!(q.bits(LayerKind::TextEncoder), Some(4));
        let plan = q.transformer();
        assert_eq!(plan.spec("transformer_blocks.2.img_mlp.net.2.weight"), None);
        assert_eq!(
            plan.spec("transformer_blocks.2.txt_mlp.net.2.weight"),
            Some(QuantSpec::bits(8))
        );
        assert!(Quantization::new(3).is_err());
        assert!("x".parse::<Quantization>().is_err());
        let e = Quantization::new(4)
            .unwrap()
            .with_overrides("mlp=8")
            .unwrap_err();
        assert!(e.contains("img_mlp"), "{e}");
        assert!(Quantization::new(4)
            .unwrap()
            .with_overrides("attn=5")
            .is_err());
    }
}
