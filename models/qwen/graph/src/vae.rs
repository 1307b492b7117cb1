//! The VAE (`AutoencoderKLQwenImage`, spec §4): the decoder and the encoder, written as the
//! PyTorch model is: NTHWC with causal 3-D convs. The `layout` pass folds the single frame
//! away, so the generated code runs NHWC 2-D convs.

use graph_dsl::{DType, Dim, Graph, GraphBuilder, MaskKind, Result, Tensor};

use crate::config::VaeConfig;

/// `QwenImageResidualBlock(cin → cout)` (spec §4.2): `conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))
/// + shortcut(x)`, the shortcut a 1×1×1 conv when `cin ≠ cout`.
///
/// The spatial size stays symbolic (`hf`, `wf`): the block has no reshape, so its code is
/// the same at every resolution and stage.
// x: [B, 1, hf, wf, cin] -> [B, 1, hf, wf, cout]
pub fn residual_block(name: &str, cin: usize, cout: usize) -> Result<Graph> {
    let mut b = GraphBuilder::new(name);
    let shape = [
        Dim::sym("B"),
        Dim::Const(1),
        Dim::sym("hf"),
        Dim::sym("wf"),
        Dim::Const(cin),
    ];
    let x = b.input("x", shape, DType::F32)?;
    let sc = if cin != cout {
        b.causal_conv3d("conv_shortcut", x, cin, cout, 1, true)?
    } else {
        x
    };
    let y = b.channel_l2_norm("norm1", x, &[cin, 1, 1, 1])?;
    let y = b.silu(y)?;
    let y = b.causal_conv3d("conv1", y, cin, cout, 3, true)?;
    let y = b.channel_l2_norm("norm2", y, &[cout, 1, 1, 1])?;
    let y = b.silu(y)?;
    let y = b.causal_conv3d("conv2", y, cout, cout, 3, true)?;
    let y = b.add(y, sc)?;
    b.output("y", y)?;
    Ok(b.finish())
}

/// A call of the residual block `cin → cout` with the weights under `key`.
fn resnet(b: &mut GraphBuilder, x: Tensor, cin: usize, cout: usize, key: &str) -> Result<Tensor> {
    let body = residual_block(&resblock_name(cin, cout), cin, cout)?;
    Ok(b.call(&body, key, &[x])?[0])
}

/// The name of the residual block body `cin → cout` (one function per distinct pair).
pub fn resblock_name(cin: usize, cout: usize) -> String {
    format!("vae_resblock_{cin}_{cout}")
}

/// The distinct `(cin, cout)` of the encoder's residual blocks, sorted.
pub fn encoder_resblocks(c: &VaeConfig) -> Vec<(usize, usize)> {
    let d = c.encoder_dims();
    let mut v = vec![(d[d.len() - 1], d[d.len() - 1])];
    for i in 0..d.len() - 1 {
        v.push((d[i], d[i + 1]));
        v.push((d[i + 1], d[i + 1]));
    }
    v.sort();
    v.dedup();
    v
}

/// The distinct `(cin, cout)` of the decoder's residual blocks, sorted.
pub fn decoder_resblocks(c: &VaeConfig) -> Vec<(usize, usize)> {
    let d = c.decoder_dims();
    let mut v = vec![(d[0], d[0])];
    for i in 0..d.len() - 1 {
        let (cin, cout) = c.up_block_io(i);
        v.push((cin, cout));
        v.push((cout, cout));
    }
    v.sort();
    v.dedup();
    v
}

/// `[B, 1, h, w, C]` ↔ `[B, h, w, C]`: PyTorch folds time into the batch for its 2-D
/// layers; with one frame the `layout` pass turns both reshapes into nothing.
fn frames(b: &mut GraphBuilder, x: Tensor, to_4d: bool) -> Result<Tensor> {
    let s = b.shape(x).0.clone();
    let dims = if to_4d {
        vec![s[0].clone(), s[2].clone(), s[3].clone(), s[4].clone()]
    } else {
        vec![
            s[0].clone(),
            Dim::Const(1),
            s[1].clone(),
            s[2].clone(),
            s[3].clone(),
        ]
    };
    b.reshape(x, dims)
}

/// `QwenImageAttentionBlock(C)` (spec §4.2), per frame: channel-L2 norm, 1×1 `to_qkv`,
/// single-head attention over the `h·w` pixels (head dim C), 1×1 `proj`, residual.
// x: [B, 1, h, w, C] at the latent size (`L_lat = h·w`) -> same
fn attention_block(b: &mut GraphBuilder, name: &str, x: Tensor, c: usize) -> Result<Tensor> {
    b.scope(name, |b| {
        let s = b.shape(x).0.clone();
        let f = frames(b, x, true)?; // [B, h, w, C]
        let n = b.channel_l2_norm("norm", f, &[c, 1, 1])?;
        let qkv = b.conv2d("to_qkv", n, c, 3 * c, 1, 1, [(0, 0); 2], true)?; // [B, h, w, 3C]
        let qkv = b.reshape(
            qkv,
            [
                s[0].clone(),
                Dim::Const(1),
                Dim::sym("L_lat"),
                Dim::Const(3 * c),
            ],
        )?;
        let p = b.chunk(qkv, 3, 3)?; // 3 × [B, 1, h·w, C]
        let o = b.sdpa(
            p[0],
            p[1],
            p[2],
            1.0 / (c as f64).sqrt(),
            MaskKind::None,
            None,
        )?;
        let o = b.reshape(o, [s[0].clone(), s[2].clone(), s[3].clone(), Dim::Const(c)])?; // [B, h, w, C]
        let o = b.conv2d("proj", o, c, c, 1, 1, [(0, 0); 2], true)?;
        let o = frames(b, o, false)?;
        b.add(o, x)
    })
}

/// `upsample2d`/`upsample3d` for one frame (spec §4.2): nearest 2×, then the 3×3 conv
/// `resample.1` (C → C/2). The temporal conv of `upsample3d` is skipped on the first
/// chunk, so a single image never uses it.
// x: [B, 1, h, w, C] -> [B, 1, 2h, 2w, C/2]
fn upsample(b: &mut GraphBuilder, name: &str, x: Tensor, c: usize) -> Result<Tensor> {
    b.scope(name, |b| {
        let f = frames(b, x, true)?;
        let u = b.upsample2x(f)?;
        let y = b.conv2d("resample.1", u, c, c / 2, 3, 1, [(1, 1); 2], true)?;
        frames(b, y, false)
    })
}

/// `downsample2d`/`downsample3d` for one frame (spec §4.2): zero padding of one row and
/// column at the bottom and right, then the 3×3 conv `resample.1` with stride 2. The temporal
/// conv of `downsample3d` is skipped on the first chunk, so a single image never uses it.
// x: [B, 1, h, w, C] -> [B, 1, h/2, w/2, C]
fn downsample(b: &mut GraphBuilder, name: &str, x: Tensor, c: usize) -> Result<Tensor> {
    b.scope(name, |b| {
        let f = frames(b, x, true)?;
        let y = b.conv2d("resample.1", f, c, c, 3, 2, [(0, 1); 2], true)?;
        frames(b, y, false)
    })
}

/// The encoder of `AutoencoderKLQwenImage` for one frame, with `quant_conv` after it
/// (spec §4.4): an image in [−1, 1] → the posterior's mean (what the Qwen pipelines take,
/// `sample_mode="argmax"`), not yet normalized. The size is a run-time multiple of 8
/// (`h`, `w`: the latent size), as the edit pipelines' input images are; the mid-block
/// attention's `L_lat = h·w` is an argument.
// x: [B, 1, 8h, 8w, 3] -> [B, h, w, z_dim] (NHWC [B, 8h, 8w, 3] after the layout pass)
pub fn encoder(c: &VaeConfig) -> Result<Graph> {
    let dims = c.encoder_dims();
    let mut b = GraphBuilder::new("vae_encoder");
    let (bb, h, w) = (Dim::sym("B"), Dim::sym("h"), Dim::sym("w"));
    let x = b.input(
        "image",
        [bb, Dim::Const(1), h.mul(8), w.mul(8), Dim::Const(3)],
        DType::F32,
    )?;
    let y = b.scope("encoder", |b| {
        let mut x = b.causal_conv3d("conv_in", x, 3, dims[0], 3, true)?;
        // `down_blocks` is one flat list: each stage's residual blocks, then its downsampler
        let mut k = 0;
        let stages = dims.len() - 1;
        for i in 0..stages {
            let (cin, cout) = (dims[i], dims[i + 1]);
            for j in 0..c.num_res_blocks {
                let ci = if j == 0 { cin } else { cout };
                x = resnet(b, x, ci, cout, &format!("down_blocks.{k}"))?;
                k += 1;
            }
            if i + 1 < stages {
                x = downsample(b, &format!("down_blocks.{k}"), x, cout)?;
                k += 1;
            }
        }
        let last = dims[stages];
        x = resnet(b, x, last, last, "mid_block.resnets.0")?;
        x = attention_block(b, "mid_block.attentions.0", x, last)?;
        x = resnet(b, x, last, last, "mid_block.resnets.1")?;
        let x = b.channel_l2_norm("norm_out", x, &[last, 1, 1, 1])?;
        let x = b.silu(x)?;
        b.causal_conv3d("conv_out", x, last, 2 * c.z_dim, 3, true)
    })?;
    let y = b.causal_conv3d("quant_conv", y, 2 * c.z_dim, 2 * c.z_dim, 1, true)?;
    // (mean | log-variance) on the channels: the mean, per frame
    let f = frames(&mut b, y, true)?;
    let mean = b.slice(f, 3, 0, c.z_dim)?;
    b.output("mean", mean)?;
    Ok(b.finish())
}

/// The decoder of `AutoencoderKLQwenImage` for one frame, with `post_quant_conv` in front
/// and the final clamp (spec §4.3): `z` (de-normalized latents) → image in [−1, 1].
// z: [B, 1, h, w, z_dim] -> [B, 1, H, W, 3] (NHWC [B, H, W, 3] after the layout pass)
pub fn decoder(c: &VaeConfig) -> Result<Graph> {
    decoder_named(c, "vae_decoder", true)
}

/// The decoder as [`decoder`] for one tile of a tiled decode, named for its latent size
/// (`vae_tile_{h}x{w}`, its shapes bound to that size), without the final clamp: diffusers
/// blends the tiles unclamped.
pub fn tile_decoder(c: &VaeConfig, h: usize, w: usize) -> Result<Graph> {
    decoder_named(c, &tile_name(h, w), false)
}

/// The name of the tile decoder of `h × w` latents.
pub fn tile_name(h: usize, w: usize) -> String {
    format!("vae_tile_{h}x{w}")
}

fn decoder_named(c: &VaeConfig, name: &str, clamp: bool) -> Result<Graph> {
    let dims = c.decoder_dims();
    let mut b = GraphBuilder::new(name);
    let (bb, h, w) = (Dim::sym("B"), Dim::sym("h"), Dim::sym("w"));
    let z = b.input(
        "z",
        [bb, Dim::Const(1), h, w, Dim::Const(c.z_dim)],
        DType::F32,
    )?;
    let x = b.causal_conv3d("post_quant_conv", z, c.z_dim, c.z_dim, 1, true)?;
    let y = b.scope("decoder", |b| {
        let mut x = b.causal_conv3d("conv_in", x, c.z_dim, dims[0], 3, true)?;
        x = resnet(b, x, dims[0], dims[0], "mid_block.resnets.0")?;
        x = attention_block(b, "mid_block.attentions.0", x, dims[0])?;
        x = resnet(b, x, dims[0], dims[0], "mid_block.resnets.1")?;
        let stages = dims.len() - 1;
        for i in 0..stages {
            let (cin, cout) = c.up_block_io(i);
            for j in 0..=c.num_res_blocks {
                let ci = if j == 0 { cin } else { cout };
                x = resnet(b, x, ci, cout, &format!("up_blocks.{i}.resnets.{j}"))?;
            }
            if i + 1 < stages {
                x = upsample(b, &format!("up_blocks.{i}.upsamplers.0"), x, cout)?;
            }
        }
        let last = dims[stages];
        let x = b.channel_l2_norm("norm_out", x, &[last, 1, 1, 1])?;
        let x = b.silu(x)?;
        b.causal_conv3d("conv_out", x, last, 3, 3, true)
    })?;
    let y = if clamp { b.clamp(y, -1.0, 1.0)? } else { y };
    b.output("image", y)?;
    Ok(b.finish())
}
