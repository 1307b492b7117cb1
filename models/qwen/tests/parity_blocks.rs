//! Parity of the macro-generated blocks with diffusers, on the reference files of
//! tests/fixtures/blocks (weights bf16 under the published keys, computed in f32 from the
//! bf16-rounded weights). Run on CPU in f32: weights are cast bf16 → f32 at load.

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::{ops, Array, Dtype};
use qwen_runtime::{Checkpoint, Extra};

const TOL: f32 = 1e-4;

/// The block's modulation from the fixture's `temb` `[B, D]`: the generated
/// `block_modulation` (the body of `timestep_modulation`'s scan) of SiLU(temb), with the
/// block's `img_mod.1` / `txt_mod.1` weights.
fn block_modulation(ck: &Checkpoint, temb: &Array) -> (Array, Array) {
    let w = tiny::BlockModulationWeights::load(ck, "transformer_blocks.0", Dtype::Float32).unwrap();
    let silu = ops::multiply(temb, ops::sigmoid(temb).unwrap()).unwrap();
    tiny::block_modulation(&w, &silu).unwrap()
}

#[test]
fn dual_stream_block_matches_diffusers() {
    let ck = Checkpoint::open(fixture("blocks/transformer_block.safetensors")).unwrap();
    let prefix = "transformer_blocks.0";
    ck.check(&tiny::DualStreamBlockWeights::specs(prefix), Extra::Allow)
        .unwrap();
    let w = tiny::DualStreamBlockWeights::load(&ck, prefix, Dtype::Float32).unwrap();
    let x = ck.array("input.hidden_states").unwrap();
    let ctx = ck.array("input.encoder_hidden_states").unwrap();
    let (img_mod, txt_mod) = block_modulation(&ck, &ck.array("input.temb").unwrap());
    let l_txt = ctx.shape()[1];
    assert_eq!(x.shape(), &[2, tiny::IMG_TOKENS as i32, 64]);

    // the RoPE tables assembled from the embedded per-axis tables
    let (img_cos, img_sin, txt_cos, txt_sin) = tiny::rope(l_txt).unwrap();
    for (name, ours) in [
        ("rope.img_cos", &img_cos),
        ("rope.img_sin", &img_sin),
        ("rope.txt_cos", &txt_cos),
        ("rope.txt_sin", &txt_sin),
    ] {
        let e = rel_err(ours, &ck.array(name).unwrap());
        println!("{name}: rel err {e:.3e}");
        assert!(e <= 1e-6, "{name}: rel err {e:.3e}");
    }

    let (y, c) = tiny::dual_stream_block(
        &w, &x, &ctx, &img_mod, &txt_mod, &img_cos, &img_sin, &txt_cos, &txt_sin,
    )
    .unwrap();
    let ey = rel_err(&y, &ck.array("output.hidden_states").unwrap());
    let ec = rel_err(&c, &ck.array("output.encoder_hidden_states").unwrap());
    println!("dual_stream_block: image stream rel err {ey:.3e}, text stream rel err {ec:.3e}");
    assert!(ey <= TOL, "image stream rel err {ey:.3e} > {TOL:e}");
    assert!(ec <= TOL, "text stream rel err {ec:.3e} > {TOL:e}");
}

#[test]
fn vae_residual_block_matches_diffusers() {
    let ck = Checkpoint::open(fixture("blocks/vae_resblock.safetensors")).unwrap();
    let prefix = "decoder.up_blocks.1.resnets.0";
    ck.check(&tiny::VaeUp1Resnet0Weights::specs(prefix), Extra::Allow)
        .unwrap();
    let w = tiny::VaeUp1Resnet0Weights::load(&ck, prefix, Dtype::Float32).unwrap();
    // NCTHW [2, 32, 1, 12, 8] -> NHWC [2, 12, 8, 32] (the harness's job, not the block's)
    let x = ck.array("input.x").unwrap();
    let s = x.shape().to_vec();
    let x = ops::reshape(&x, &[s[0], s[1], s[3], s[4]]).unwrap();
    let x = ops::transpose_axes(&x, &[0, 2, 3, 1]).unwrap();

    let y = tiny::vae_up1_resnet0(&w, &x).unwrap(); // [2, 12, 8, 64]
    let y = ops::transpose_axes(&y, &[0, 3, 1, 2]).unwrap();
    let r = ck.array("output.y").unwrap(); // [2, 64, 1, 12, 8]
    let rs = r.shape().to_vec();
    let y = ops::reshape(&y, &rs).unwrap();
    let e = rel_err(&y, &r);
    println!("vae_up1_resnet0: rel err {e:.3e}");
    assert!(e <= TOL, "rel err {e:.3e} > {TOL:e}");
}

/// The same block through `mlx_rs::transforms::compile` (its flat twin takes weights and
/// inputs as arrays, as compile requires): same result as eager, same parity.
#[test]
fn compiled_dual_stream_block_matches_eager() {
    use qwen_runtime::__private::mlx_rs::transforms::compile::compile;

    let ck = Checkpoint::open(fixture("blocks/transformer_block.safetensors")).unwrap();
    let w =
        tiny::DualStreamBlockWeights::load(&ck, "transformer_blocks.0", Dtype::Float32).unwrap();
    let x = ck.array("input.hidden_states").unwrap();
    let ctx = ck.array("input.encoder_hidden_states").unwrap();
    let (mi, mt) = block_modulation(&ck, &ck.array("input.temb").unwrap());
    let (ic, is, tc, ts) = tiny::rope(ctx.shape()[1]).unwrap();
    let (y, c) = tiny::dual_stream_block(&w, &x, &ctx, &mi, &mt, &ic, &is, &tc, &ts).unwrap();

    let mut args = w.arrays();
    assert_eq!(args.len(), tiny::DualStreamBlockWeights::COUNT);
    args.extend([x, ctx, mi, mt, ic, is, tc, ts]);
    let mut block = compile(tiny::dual_stream_block_flat, None);
    let out = block(&args).unwrap();
    let out2 = block(&args).unwrap(); // second call reuses the compiled graph
    let (ey, ec) = (rel_err(&out[0], &y), rel_err(&out[1], &c));
    println!("compiled vs eager: image {ey:.3e}, text {ec:.3e}");
    assert!(
        ey <= 1e-6 && ec <= 1e-6,
        "compiled differs from eager: {ey:.3e} {ec:.3e}"
    );
    assert_eq!(rel_err(&out2[0], &out[0]), 0.0);
    let e = rel_err(&out[0], &ck.array("output.hidden_states").unwrap());
    assert!(e <= TOL, "compiled vs diffusers {e:.3e}");
}
