//! `--quantize 8|4` on the tiny checkpoint (f32 on the CPU): the generated code with the
//! transformer's linear layers quantized at load, against diffusers' f32 run of
//! `references/pipeline.safetensors` (same prompts, steps, CFG, initial latents).
//!
//! Random weights have none of the outliers of trained ones, so these errors check that the
//! quantized path is consistent (8 bits much closer than 4, both close enough to be the same
//! image), not the image quality of a quantized real model.

mod common;

use common::{fixture, rel_err};
use qwen::pipeline::{Options, Pipeline, Request, Resolution};
use qwen::quantize::{LayerKind, Quantization};
use qwen_runtime::__private::mlx_rs::Dtype;
use qwen_runtime::Checkpoint;
use safetensors::SafeTensors;

/// Final latents against diffusers f32, relative (measured 2026-11-29 on the CPU: dense
/// 6.3e-7, q8 1.05e-3, q4 1.67e-2, q4 on the attention only 1.05e-2): the bounds are 3×.
const Q8_TOL: f32 = 3e-3;
const Q4_TOL: f32 = 5e-2;

fn latents_error(q: Option<Quantization>) -> f32 {
    let path = fixture("references/pipeline.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let res = "96x64";
    let options = Options {
        resolution: Some(res.parse::<Resolution>().unwrap()),
        dtype: Dtype::Float32,
        module: None,
        memory_limit: None,
        quantize: q,
    };
    let pipeline = Pipeline::open(fixture("tiny-qwen-image"), &options).unwrap();
    let request = Request {
        prompt: meta["prompt"].clone(),
        negative_prompt: Some(meta["negative_prompt"].clone()),
        steps: meta["num_inference_steps"].parse().unwrap(),
        cfg_scale: meta["true_cfg_scale"].parse().unwrap(),
        seed: 0,
        latents: Some(ck.array(&format!("{res}.input.latents")).unwrap()),
    };
    let g = pipeline.generate(&request, &mut |_| {}).unwrap();
    rel_err(
        &g.latents,
        &ck.array(&format!("{res}.output.latents")).unwrap(),
    )
}

#[test]
fn quantized_latents_stay_near_the_f32_reference() {
    let dense = latents_error(None);
    let q8 = latents_error(Some(Quantization::new(8).unwrap()));
    let q4 = latents_error(Some(Quantization::new(4).unwrap()));
    // only the attention quantized: between dense and all kinds quantized
    let attn_only = Quantization::new(4)
        .unwrap()
        .with_overrides("img_mlp=16,txt_mlp=16,modulation=16")
        .unwrap();
    assert_eq!(attn_only.bits(LayerKind::Attn), Some(4));
    let q4_attn = latents_error(Some(attn_only));
    println!(
        "final latents vs diffusers f32: dense {dense:.3e}, q8 {q8:.3e}, q4 {q4:.3e}, q4 attention only {q4_attn:.3e}"
    );
    assert!(dense <= 1e-4, "dense {dense:.3e}");
    // quantization really happened, and more bits are closer
    assert!(q8 > 10.0 * dense, "q8 {q8:.3e} vs dense {dense:.3e}");
    assert!(q4 > 2.0 * q8, "q4 {q4:.3e} vs q8 {q8:.3e}");
    assert!(
        q4_attn < q4 && q4_attn > dense,
        "q4 attention only {q4_attn:.3e}"
    );
    assert!(q8 <= Q8_TOL, "q8 {q8:.3e} > {Q8_TOL:e}");
    assert!(q4 <= Q4_TOL, "q4 {q4:.3e} > {Q4_TOL:e}");
}
