//! The Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`, spec §5.3): what
//! Qwen-Image-Edit feeds its input images through for the prompt.
//!
//! The graph runs in *window order*: the tower attends within windows of merged cells in
//! most blocks, and the reference reorders its tokens so that each window is one contiguous
//! run. Everything before the merger is per token except attention, so the caller gives the
//! patch rows, their RoPE tables and the windows' mask already in that order (all made at bind
//! time from the image's patch grid, a run-time size), and the rows of the merged tokens back
//! in the image's order (`reverse`).
//!
//! Symbols: `M` merged tokens (run time; `4M` patches, the merge groups 2×2 patches).

use graph_dsl::{DType, Dim, Graph, GraphBuilder, MaskKind, Result, RopeLayout};

use crate::config::VisionConfig;

/// RMSNorm eps of the vision tower.
const EPS: f64 = 1e-6;

fn merged() -> Dim {
    Dim::sym("M")
}

/// One block (`Qwen2_5_VLVisionBlock`): RMSNorm, QKV with the 2-D rotary embedding
/// (rotate-half over the head), attention within the windows (`windowed`: the additive mask
/// input) or over all tokens, projection, residual; RMSNorm, SiLU-gated MLP, residual.
// x: [1, 4M, D], cos/sin: [4M, Dh/2], (mask: [4M, 4M]) -> [1, 4M, D]
pub fn block(c: &VisionConfig, windowed: bool) -> Result<Graph> {
    let name = if windowed {
        "vision_block_windowed"
    } else {
        "vision_block_full"
    };
    let mut b = GraphBuilder::new(name);
    let (d, h, dh) = (c.hidden_size, c.num_heads, c.head_dim());
    let l = merged().mul(4);
    let x = b.input("x", [Dim::Const(1), l.clone(), Dim::Const(d)], DType::F32)?;
    let cos = b.input("cos", [l.clone(), Dim::Const(dh / 2)], DType::F32)?;
    let sin = b.input("sin", [l.clone(), Dim::Const(dh / 2)], DType::F32)?;
    let mask = if windowed {
        Some(b.input("mask", [l.clone(), l.clone()], DType::F32)?)
    } else {
        None
    };
    let n = b.rms_norm("norm1", x, d, EPS)?;
    let a = b.scope("attn", |b| {
        let qkv = b.linear("qkv", n, d, 3 * d, true)?; // [1, L, 3D]: q, k, v one after another
        let heads = |b: &mut GraphBuilder, t| {
            b.reshape(t, [Dim::Const(1), l.clone(), Dim::Const(h), Dim::Const(dh)])
        };
        let p = b.chunk(qkv, 3, 2)?;
        let (q, k, v) = (heads(b, p[0])?, heads(b, p[1])?, heads(b, p[2])?);
        let q = b.rope(q, cos, sin, RopeLayout::RotateHalf)?;
        let k = b.rope(k, cos, sin, RopeLayout::RotateHalf)?;
        let [q, k, v] = [q, k, v].map(|t| b.transpose(t, &[0, 2, 1, 3]));
        let scale = 1.0 / (dh as f64).sqrt();
        let o = match mask {
            Some(m) => b.sdpa(q?, k?, v?, scale, MaskKind::Additive, Some(m))?,
            None => b.sdpa(q?, k?, v?, scale, MaskKind::None, None)?,
        }; // [1, H, L, Dh]
        let o = b.transpose(o, &[0, 2, 1, 3])?;
        let o = b.reshape(o, [Dim::Const(1), l.clone(), Dim::Const(d)])?;
        b.linear("proj", o, d, d, true)
    })?;
    let x = b.add(x, a)?;
    let n = b.rms_norm("norm2", x, d, EPS)?;
    let m = b.scope("mlp", |b| {
        let g = b.linear("gate_proj", n, d, c.intermediate_size, true)?;
        let g = b.silu(g)?;
        let u = b.linear("up_proj", n, d, c.intermediate_size, true)?;
        let y = b.mul(g, u)?;
        b.linear("down_proj", y, c.intermediate_size, d, true)
    })?;
    let x = b.add(x, m)?;
    b.output("x", x)?;
    Ok(b.finish())
}

/// The tower: patch embedding (the `[D, C, T, P, P]` conv over whole patches as a linear),
/// the blocks (windowed but for `fullatt_block_indexes`), the merger (RMSNorm, 2×2 patches
/// → one row, MLP with exact GELU) and the merged rows put back in the image's order.
// patches: [4M, C·T·P·P] (window order), cos/sin: [4M, Dh/2], mask: [4M, 4M],
// reverse: [M] int -> [M, out_hidden]
pub fn tower(c: &VisionConfig) -> Result<Graph> {
    let mut b = GraphBuilder::new("vision_tower");
    let (d, dh, pd) = (c.hidden_size, c.head_dim(), c.patch_dim());
    let l = merged().mul(4);
    let patches = b.input("patches", [l.clone(), Dim::Const(pd)], DType::F32)?;
    let cos = b.input("cos", [l.clone(), Dim::Const(dh / 2)], DType::F32)?;
    let sin = b.input("sin", [l.clone(), Dim::Const(dh / 2)], DType::F32)?;
    let mask = b.input("mask", [l.clone(), l.clone()], DType::F32)?;
    let reverse = b.input("reverse", [merged()], DType::I32)?;
    let windowed = block(c, true)?;
    let full = block(c, false)?;
    let out = b.scope("visual", |b| {
        let p = c.patch_size;
        let stored = [d, c.in_chans, c.temporal_patch_size, p, p];
        let x = b.linear_stored("patch_embed.proj", patches, &stored, pd, d, false)?;
        let mut x = b.reshape(x, [Dim::Const(1), l.clone(), Dim::Const(d)])?;
        for i in 0..c.depth {
            let key = format!("blocks.{i}");
            x = if c.fullatt_block_indexes.contains(&i) {
                b.call(&full, &key, &[x, cos, sin])?[0]
            } else {
                b.call(&windowed, &key, &[x, cos, sin, mask])?[0]
            };
        }
        b.scope("merger", |b| {
            let x = b.rms_norm("ln_q", x, d, EPS)?;
            let x = b.reshape(x, [merged(), Dim::Const(4 * d)])?;
            let x = b.linear("mlp.0", x, 4 * d, 4 * d, true)?;
            let x = b.gelu(x)?;
            b.linear("mlp.2", x, 4 * d, c.out_hidden_size, true)
        })
    })?;
    // the merged rows in the image's order: rows `reverse` of the window-ordered ones
    let out = b.take_rows(out, reverse)?;
    b.output("embeds", out)?;
    Ok(b.finish())
}
