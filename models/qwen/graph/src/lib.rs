//! qwen-graph: the Qwen-Image networks written in the graph DSL, and [`build`], which
//! makes every resolution-dependent graph of one specialization (resolution × config ×
//! CFG strategy) and runs the passes on them, and [`build_shared`], which makes what all
//! resolutions of a config share. The `specialize!` macro calls them and hands the result
//! to graph-codegen.
//!
//! - [`transformer`]: the MMDiT (dual-stream block, whole transformer, RoPE tables);
//! - [`vae`]: the decoder (and its residual block), NHWC after the `layout` pass;
//! - [`text_encoder`]: the Qwen2.5-VL language model (text only);
//! - [`config`]: the real config and the tiny test config.

pub mod config;
pub mod text_encoder;
pub mod transformer;
pub mod vae;
pub mod vision;

use std::collections::BTreeMap;

use graph_dsl::passes::{self, CfgJoin, CfgSymbols, PassConfig};
use graph_dsl::{DslError, Graph};

pub use config::ConfigName;

/// One specialization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Output width in pixels.
    pub width: usize,
    /// Output height in pixels.
    pub height: usize,
    pub config: ConfigName,
    pub cfg: CfgJoin,
    /// The ranks the image tokens are split over (sequence parallelism,
    /// [`transformer::transformer_split`]); 1: one process runs them all.
    pub parts: usize,
}

/// What codegen needs: consts, a title, the graphs after all passes.
#[derive(Debug, Clone)]
pub struct Built {
    pub title: String,
    pub consts: Vec<(String, usize)>,
    pub graphs: Vec<Graph>,
    /// The latent sizes (h, w) of the tile decoders among `graphs` (`vae::tile_name`).
    pub vae_tiles: Vec<(usize, usize)>,
}

/// Why a specialization could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Dsl(#[from] DslError),
    #[error("tiny config (tests/fixtures/tiny_config.json): {0}")]
    Config(#[from] serde_json::Error),
    #[error("{0}")]
    Request(String),
}

fn config_name(c: ConfigName) -> &'static str {
    match c {
        ConfigName::Real => "real",
        ConfigName::Tiny => "tiny",
    }
}

/// The name of the module that holds the resolution-independent parts of `config`:
/// `shared` (real) or `shared_tiny`.
pub fn shared_module(config: ConfigName) -> String {
    match config {
        ConfigName::Real => "shared".into(),
        ConfigName::Tiny => "shared_tiny".into(),
    }
}

/// The symbols an image of `height`×`width` pixels fixes: `H`, `W`, latent `h = H/8`, `w`,
/// `L_lat = h·w`, packed grid `gh = h/2`, `gw`, `L_img = gh·gw`, and the first text RoPE
/// position `txt_rope_offset = max(gh/2, gw/2)` (spec §2.5). A size that is not a multiple
/// of 16 (VAE ×8, patch ×2) is an error.
pub fn image_bindings(height: usize, width: usize) -> Result<BTreeMap<String, usize>, DslError> {
    for (what, v) in [("height", height), ("width", width)] {
        if v == 0 || v % 16 != 0 {
            return Err(DslError::NotDivisible {
                what: format!("{what} (VAE ×8, patch ×2)"),
                value: v,
                by: 16,
            });
        }
    }
    let (h, w) = (height / 8, width / 8);
    let (gh, gw) = (h / 2, w / 2);
    Ok([
        ("H", height),
        ("W", width),
        ("h", h),
        ("w", w),
        ("L_lat", h * w),
        ("gh", gh),
        ("gw", gw),
        ("L_img", gh * gw),
        (transformer::TXT_ROPE_OFFSET, (gh / 2).max(gw / 2)),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .into())
}

/// The DiT's batch and text-length symbols, for the CFG split.
fn cfg_symbols() -> CfgSymbols {
    CfgSymbols {
        batch: transformer::BATCH.into(),
        text: transformer::TEXT.into(),
        images: transformer::IMAGES.into(),
    }
}

/// Build the resolution-dependent graphs of `r` (RoPE tables, transformer, VAE decoder)
/// and run the passes on them. The transformer's block body is here too (its shapes are
/// literal); what does not depend on the resolution is in [`build_shared`].
pub fn build(r: &Request) -> Result<Built, BuildError> {
    let cfg = r.config.config()?;
    let bindings = image_bindings(r.height, r.width)?;
    let parts = r.parts;
    if parts == 0 || bindings["L_img"] % parts != 0 {
        return Err(DslError::NotDivisible {
            what: "image tokens (a sequence split over ranks)".into(),
            value: bindings["L_img"],
            by: parts,
        }
        .into());
    }
    if parts > 1 && r.cfg != CfgJoin::Batched {
        return Err(BuildError::Request(
            "a sequence split over ranks runs one text per call (no `cfg = split`)".into(),
        ));
    }
    // the CFG strategy concerns the transformer only; the other networks keep a free batch
    let pc = PassConfig {
        bindings: bindings.clone(),
        cfg: CfgJoin::Batched,
        cfg_symbols: cfg_symbols(),
        single_frame: true,
    };
    // the transformer of a sequence split over ranks sees its share of the image tokens
    let mut pc_dit = PassConfig {
        cfg: r.cfg,
        ..pc.clone()
    };
    pc_dit
        .bindings
        .insert("L_img".into(), bindings["L_img"] / parts);
    let t = &cfg.transformer;
    let dit = match parts {
        1 => transformer::transformer(t)?,
        _ => transformer::transformer_split(t, parts)?,
    };
    let mut graphs = vec![
        passes::run(&transformer::rope(t)?, &pc)?,
        passes::run(&dit, &pc_dit)?,
        passes::run(&vae::decoder(&cfg.vae)?, &pc)?,
    ];
    // a decoder per tile size of a tiled decode at this size, its shapes bound to the tile
    let tiling = r.config.vae_tiling();
    let (lh, lw) = (bindings["h"], bindings["w"]);
    let (hs, ws) = (tiling.tile_lengths(lh), tiling.tile_lengths(lw));
    let mut vae_tiles = vec![];
    if !hs.is_empty() || !ws.is_empty() {
        let or_all = |v: Vec<usize>, n: usize| if v.is_empty() { vec![n] } else { v };
        for &th in &or_all(hs, lh) {
            for &tw in &or_all(ws.clone(), lw) {
                let mut tile = pc.clone();
                tile.bindings.insert("h".into(), th);
                tile.bindings.insert("w".into(), tw);
                tile.bindings.insert("L_lat".into(), th * tw);
                graphs.push(passes::run(&vae::tile_decoder(&cfg.vae, th, tw)?, &tile)?);
                vae_tiles.push((th, tw));
            }
        }
    }
    let (gh, gw) = (bindings["gh"], bindings["gw"]);
    let mut consts = vec![
        ("width".into(), r.width),
        ("height".into(), r.height),
        ("latent_h".into(), bindings["h"]),
        ("latent_w".into(), bindings["w"]),
        ("grid_h".into(), gh),
        ("grid_w".into(), gw),
        ("img_tokens".into(), bindings["L_img"]),
        ("vae_tile_latent".into(), tiling.latent().0),
        ("vae_tile_stride_latent".into(), tiling.latent().1),
        ("packed_channels".into(), t.in_channels),
        ("num_layers".into(), t.num_layers),
        (
            "txt_rope_offset".into(),
            bindings[transformer::TXT_ROPE_OFFSET],
        ),
    ];
    if parts > 1 {
        consts.push(("seq_parts".into(), parts));
    }
    let cfg_s = match r.cfg {
        CfgJoin::Batched => "batched",
        CfgJoin::SplitHalves => "split halves (B = 2, one text length per half)",
    };
    Ok(Built {
        title: format!(
            "res = {}x{} (W×H), config = {}, CFG attention = {cfg_s}{}, VAE NHWC single frame",
            r.width,
            r.height,
            config_name(r.config),
            match parts {
                1 => String::new(),
                p => format!(", image tokens split over {p} ranks"),
            }
        ),
        consts,
        graphs,
        vae_tiles,
    })
}

/// Build what every resolution of `config` shares: the text encoder, the transformer's
/// timestep modulation (made once per schedule), the VAE residual block bodies (their spatial size is symbolic), and `vae_up1_resnet0` (that block as
/// a stand-alone component, for the block parity test).
pub fn build_shared(config: ConfigName) -> Result<Built, BuildError> {
    let cfg = config.config()?;
    let pc = PassConfig {
        single_frame: true,
        ..PassConfig::default()
    };
    let (cin, cout) = cfg.vae.up_block_io(1);
    let mut graphs = vec![
        text_encoder::text_encoder(&cfg.text_encoder)?,
        text_encoder::text_encoder_with_images(&cfg.text_encoder)?,
        transformer::timestep_modulation(&cfg.transformer)?,
        transformer::edit_transformer(&cfg.transformer)?,
        transformer::edit_transformer_zero_cond(&cfg.transformer)?,
        vae::residual_block("vae_up1_resnet0", cin, cout)?,
        vae::encoder(&cfg.vae)?,
        vision::tower(&cfg.text_encoder.vision_config)?,
    ];
    let mut resblocks = vae::decoder_resblocks(&cfg.vae);
    resblocks.extend(vae::encoder_resblocks(&cfg.vae));
    resblocks.sort();
    resblocks.dedup();
    for (ci, co) in resblocks {
        graphs.push(vae::residual_block(&vae::resblock_name(ci, co), ci, co)?);
    }
    let mut graphs = graphs
        .iter()
        .map(|g| passes::run(g, &pc))
        .collect::<Result<Vec<_>, _>>()?;
    // the edit transformers again with both CFG halves in one call
    let pc_cfg = PassConfig {
        cfg: CfgJoin::SplitHalves,
        cfg_symbols: cfg_symbols(),
        ..pc
    };
    for g in [
        transformer::edit_transformer_cfg(&cfg.transformer)?,
        transformer::edit_transformer_zero_cond_cfg(&cfg.transformer)?,
    ] {
        graphs.push(passes::run(&g, &pc_cfg)?);
    }
    Ok(Built {
        title: format!(
            "the resolution-independent parts (text encoder, with and without images, timestep modulation, the edit transformer, one text per call and both CFG halves in one, VAE encoder, vision tower, VAE residual blocks), config = {}",
            config_name(config)
        ),
        consts: vec![],
        graphs,
        vae_tiles: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(w: usize, h: usize, config: ConfigName) -> Request {
        Request {
            width: w,
            height: h,
            config,
            cfg: CfgJoin::Batched,
            parts: 1,
        }
    }

    #[test]
    fn tiny_fixture_resolution_builds() {
        let b = build(&req(96, 64, ConfigName::Tiny)).unwrap();
        let t = &b.graphs[1];
        assert_eq!(t.inputs[0].ty.shape.to_string(), "[B, 24, 64]");
        let block = &t.blocks["dual_stream_block"];
        // 8 attn (fused qkv and out, per stream, weight and bias) + 4 norms + 8 mlp; the
        // modulation linears are the timestep_modulation graph's
        assert_eq!(block.weights.len(), 20);
        // the checkpoint tensors read: the fused ones' parts (to_q, to_k, to_v, ...) count
        let stored: usize = block.weights.iter().map(|w| w.stored().len()).sum();
        assert_eq!(stored, 28); // 16 attn linears + 4 norms + 8 mlp
        assert!(!block.weights.iter().any(|w| w.reads("img_mod.1.weight")));
        assert!(block
            .weights
            .iter()
            .any(|w| w.reads("attn.add_k_proj.bias")));
        assert_eq!(block.count_op("sdpa"), 1);
        assert_eq!(block.count_op("joint_qkv_heads"), 1);
        let s = build_shared(ConfigName::Tiny).unwrap();
        let vae = s
            .graphs
            .iter()
            .find(|g| g.name == "vae_up1_resnet0")
            .unwrap();
        assert_eq!(vae.count_op("conv2d"), 3);
        assert_eq!(vae.inputs[0].ty.shape.to_string(), "[B, hf, wf, 32]");
        let names: Vec<&str> = s.graphs.iter().map(|g| g.name.as_str()).collect();
        let m = s
            .graphs
            .iter()
            .find(|g| g.name == "timestep_modulation")
            .unwrap();
        // every block's modulation for T timesteps, stacked over the layers
        let out = |i: usize| m.ty(m.outputs[i].1).shape.to_string();
        assert_eq!(
            (out(0), out(1), out(2)),
            (
                "[2, T, 384]".into(),
                "[2, T, 384]".into(),
                "[T, 128]".into()
            )
        );
        let mb = &m.blocks["block_modulation"];
        assert!(mb.weights.iter().any(|w| w.reads("img_mod.1.weight")));
        assert!(m.weights.iter().any(|w| w.reads("norm_out.linear.weight")));
        assert_eq!(
            names,
            [
                "text_encoder",
                "text_encoder_with_images",
                "timestep_modulation",
                "edit_transformer",
                "edit_transformer_zero_cond",
                "vae_up1_resnet0",
                "vae_encoder",
                "vision_tower",
                "vae_resblock_16_16",
                "vae_resblock_16_32",
                "vae_resblock_32_32",
                "vae_resblock_32_64",
                "vae_resblock_64_64",
                "edit_transformer_cfg",
                "edit_transformer_zero_cond_cfg"
            ]
        );
    }

    #[test]
    fn vae_decoder_folds_to_nhwc_2d_convs() {
        let b = build(&req(96, 64, ConfigName::Tiny)).unwrap();
        let d = &b.graphs[2];
        assert_eq!(d.inputs[0].ty.shape.to_string(), "[B, 8, 12, 16]");
        assert_eq!(d.ty(d.outputs[0].1).shape.to_string(), "[B, 64, 96, 3]");
        assert_eq!(d.count_op("causal_conv3d"), 0);
        assert_eq!(d.count_op("reshape"), 2); // only the attention's pixel flattening
        let bodies: Vec<&str> = d.blocks.keys().map(String::as_str).collect();
        assert_eq!(
            bodies,
            [
                "vae_resblock_16_16",
                "vae_resblock_32_32",
                "vae_resblock_32_64",
                "vae_resblock_64_64"
            ]
        );
    }

    #[test]
    fn real_1024_has_literal_image_shapes() {
        let b = build(&req(1024, 1024, ConfigName::Real)).unwrap();
        let t = &b.graphs[1];
        assert_eq!(t.inputs[0].ty.shape.to_string(), "[B, 4096, 64]");
        assert_eq!(
            b.consts
                .iter()
                .find(|c| c.0 == "txt_rope_offset")
                .unwrap()
                .1,
            32
        );
        assert_eq!(
            b.graphs[0].ty(b.graphs[0].outputs[0].1).shape.to_string(),
            "[4096, 64]"
        );
    }

    #[test]
    fn non_square_16_9_is_width_by_height() {
        let b = build(&req(1664, 928, ConfigName::Real)).unwrap();
        let c = |n: &str| b.consts.iter().find(|c| c.0 == n).unwrap().1;
        assert_eq!((c("grid_h"), c("grid_w"), c("img_tokens")), (58, 104, 6032));
        assert_eq!(c("txt_rope_offset"), 52); // max(58/2, 104/2)
        let vae = &b.graphs[2];
        assert_eq!(
            vae.ty(vae.outputs[0].1).shape.to_string(),
            "[B, 928, 1664, 3]"
        );
    }

    /// The shared module's joint-CFG edit transformers: the image stream (references too) at
    /// batch 2N, a RoPE text table per half, one unmasked attention per half in each block,
    /// and the same checkpoint tensors as the one-text kind.
    #[test]
    fn joint_cfg_edit_transformers_split_the_halves() {
        let s = build_shared(ConfigName::Tiny).unwrap();
        let g = |n: &str| s.graphs.iter().find(|g| g.name == n).unwrap();
        for (one, joint) in [
            ("edit_transformer", "edit_transformer_cfg"),
            (
                "edit_transformer_zero_cond",
                "edit_transformer_zero_cond_cfg",
            ),
        ] {
            let (o, j) = (g(one), g(joint));
            assert_eq!(j.inputs[0].ty.shape.to_string(), "[2*N, L_out+L_ref, 64]");
            let names: Vec<&str> = j.inputs.iter().map(|i| i.name.as_str()).collect();
            for n in ["txt_cos_0", "txt_cos_1", "txt_sin_0", "txt_sin_1"] {
                assert!(names.contains(&n), "{joint}: no {n} in {names:?}");
            }
            let block = j.blocks.values().next().unwrap();
            assert_eq!(block.count_op("sdpa"), 2, "{joint}");
            let keys = |g: &Graph| {
                let mut k: Vec<String> = g
                    .weights
                    .iter()
                    .chain(g.blocks.values().flat_map(|b| b.weights.iter()))
                    .flat_map(|w| w.stored())
                    .map(|p| p.key.to_string())
                    .collect();
                k.sort();
                k
            };
            assert_eq!(keys(o), keys(j), "{joint}");
        }
    }

    /// The real encoder reads the spec's keys (§4.4: the flat `down_blocks` list with the
    /// downsamplers at 2, 5 and 8, `conv_out` to 32 channels, `quant_conv`) and keeps the
    /// size free: NHWC `[B, 8h, 8w, 3]` → the mean `[B, h, w, 16]`.
    #[test]
    fn real_vae_encoder_reads_the_published_keys() {
        let b = build_shared(ConfigName::Real).unwrap();
        let e = b.graphs.iter().find(|g| g.name == "vae_encoder").unwrap();
        let keys: Vec<String> = e
            .weights
            .iter()
            .chain(e.blocks.values().flat_map(|bl| bl.weights.iter()))
            .flat_map(|w| w.stored())
            .map(|p| format!("{} {:?}", p.key, p.shape))
            .collect();
        for want in [
            "encoder.conv_in.weight [96, 3, 3, 3, 3]",
            "encoder.down_blocks.2.resample.1.weight [96, 96, 3, 3]",
            "encoder.down_blocks.5.resample.1.weight [192, 192, 3, 3]",
            "encoder.down_blocks.8.resample.1.weight [384, 384, 3, 3]",
            "encoder.conv_out.weight [32, 384, 3, 3, 3]",
            "quant_conv.weight [32, 32, 1, 1, 1]",
        ] {
            assert!(keys.iter().any(|k| k == want), "{want} not in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.contains("time_conv")));
        assert_eq!(e.inputs[0].ty.shape.to_string(), "[B, 8*h, 8*w, 3]");
        assert_eq!(e.ty(e.outputs[0].1).shape.to_string(), "[B, h, w, 16]");
    }

    #[test]
    fn split_halves_binds_the_batch() {
        let mut r = req(96, 64, ConfigName::Tiny);
        r.cfg = CfgJoin::SplitHalves;
        let b = build(&r).unwrap();
        let block = &b.graphs[1].blocks["dual_stream_block"];
        assert_eq!(block.count_op("sdpa"), 2);
        // each half N images of one text: the image stream 2N rows
        assert_eq!(block.inputs[0].ty.shape.to_string(), "[2*N, 24, 64]");
        // the text stream packed: both halves' rows in one value per image
        assert_eq!(
            block.inputs[1].ty.shape.to_string(),
            "[N, L_txt0+L_txt1, 64]"
        );
        // its linears run once for both halves; the joint heads once per half
        assert_eq!(block.count_op("linear"), 8); // (qkv, out, up, down) per stream
        assert_eq!(block.count_op("joint_qkv_heads"), 2);
        let t = &b.graphs[1];
        let outs: Vec<&str> = t.outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(outs, ["velocity"]);
        // x, packed text, img/txt/out modulation, img cos/sin, txt cos ×2, txt sin ×2
        assert_eq!(t.inputs.len(), 11);
        assert_eq!(t.inputs[2].ty.shape.to_string(), "[2, 2*N, 384]"); // [layers, B, 6D]
                                                                       // the VAE keeps a free batch
        assert_eq!(b.graphs[2].inputs[0].ty.shape.to_string(), "[B, 8, 12, 16]");
    }

    #[test]
    fn resolution_binds_every_image_size() {
        let b = image_bindings(1024, 1024).unwrap();
        assert_eq!((b["h"], b["gh"], b["L_img"]), (128, 64, 4096));
        let b = image_bindings(928, 1664).unwrap();
        assert_eq!((b["gh"], b["gw"], b["L_img"]), (58, 104, 6032));
        assert_eq!(b["txt_rope_offset"], 52);
    }

    #[test]
    fn bad_resolution_is_an_error() {
        let e = build(&req(1000, 1024, ConfigName::Real)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "width (VAE ×8, patch ×2) must be a multiple of 16; got 1000"
        );
    }

    #[test]
    fn text_encoder_layer_builds_with_gqa() {
        let c = config::real().text_encoder;
        let g = text_encoder::decoder_layer(&c).unwrap();
        assert_eq!(g.count_op("sdpa"), 1);
        let k = g
            .weights
            .iter()
            .find(|w| w.key == "self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(k.shape, vec![512, 3584]);
        assert!(!g.weights.iter().any(|w| w.key == "self_attn.o_proj.bias"));
    }
}
