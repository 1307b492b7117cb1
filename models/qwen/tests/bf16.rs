//! The generated code in bf16 (the reference dtype of the real model): same graphs, weights
//! kept bf16, activations bf16; compared with the f32 references at a bf16 tolerance.

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::{ops, Array, Dtype};
use qwen_runtime::Checkpoint;

const BF16_TOL: f32 = 2e-2;

fn bf16(a: &Array) -> Array {
    a.as_dtype(Dtype::Bfloat16).unwrap()
}

#[test]
fn tiny_transformer_in_bf16() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/transformer")).unwrap();
    let w = tiny::TransformerWeights::load(&ck, "", Dtype::Bfloat16).unwrap();
    let m = tiny::TimestepModulationWeights::load(&ck, "", Dtype::Bfloat16).unwrap();
    let r = Checkpoint::open(fixture("references/transformer.safetensors")).unwrap();
    let get = |k: &str| r.array(&format!("96x64.{k}")).unwrap();
    let x = ops::split_at_indices(get("input.hidden_states"), &[1], 0)
        .unwrap()
        .swap_remove(0);
    let ctx = ops::split_at_indices(get("input.encoder_hidden_states"), &[1], 0)
        .unwrap()
        .swap_remove(0);
    let t = ops::split_at_indices(get("input.timestep"), &[1], 0)
        .unwrap()
        .swap_remove(0);
    let (mi, mt, mo) = tiny::timestep_modulation(&m, &t).unwrap();
    assert_eq!(mi.dtype(), Dtype::Bfloat16); // the timestep (f32) is cast like the weights
    let (ic, is, tc, ts) = tiny::rope(9).unwrap();
    let y = tiny::transformer(
        &w,
        &bf16(&x),
        &bf16(&ctx),
        &mi,
        &mt,
        &mo,
        &ic,
        &is,
        &tc,
        &ts,
    )
    .unwrap();
    assert_eq!(y.dtype(), Dtype::Bfloat16);
    let e = rel_err(
        &y.as_dtype(Dtype::Float32).unwrap(),
        &get("nomask.output.sample"),
    );
    println!("transformer in bf16: rel err {e:.3e} vs the f32 reference");
    assert!(e <= BF16_TOL, "{e:.3e}");
}

#[test]
fn tiny_vae_decoder_in_bf16() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/vae")).unwrap();
    let w = tiny::VaeDecoderWeights::load(&ck, "", Dtype::Bfloat16).unwrap();
    let r = Checkpoint::open(fixture("references/vae.safetensors")).unwrap();
    let z = r.array("96x64.decode.input.z").unwrap();
    let s = z.shape().to_vec();
    let z = ops::reshape(&z, &[s[0], s[1], s[3], s[4]]).unwrap();
    let z = ops::transpose_axes(&z, &[0, 2, 3, 1]).unwrap();
    let y = tiny::vae_decoder(&w, &bf16(&z)).unwrap();
    assert_eq!(y.dtype(), Dtype::Bfloat16);
    let reference = r.array("96x64.decode.output.sample").unwrap();
    let y = ops::transpose_axes(y.as_dtype(Dtype::Float32).unwrap(), &[0, 3, 1, 2]).unwrap();
    let y = ops::reshape(&y, reference.shape()).unwrap();
    let e = rel_err(&y, &reference);
    println!("vae decoder in bf16: rel err {e:.3e} vs the f32 reference");
    assert!(e <= BF16_TOL, "{e:.3e}");
}
