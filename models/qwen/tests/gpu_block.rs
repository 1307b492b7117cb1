//! Device benchmark (not CI): the generated res1024 dual-stream block in bf16 on random
//! weights, eager and through `transforms::compile` (its flat twin). Run on a GPU machine:
//! `cargo test -p qwen --release --test gpu_block -- --ignored --nocapture` (or build it
//! here with `--no-run`, carry the binary and the MLX CUDA pack; see ../shared/docs/gpu.md).
//!
//! Measured 2026-11-27 on an H100 (MLX 0.32.4 CUDA), batch 2 (CFG), L_txt 100: eager
//! 9.51 ms, compiled 7.15 ms per block, i.e. ~571 / ~429 ms for the 60 blocks of one CFG
//! step (diffusers on H100: 371 eager, 287 compiled, gpu.md).

use std::collections::BTreeMap;
use std::time::Instant;

use qwen::specializations::res1024 as real;
use qwen_runtime::__private::mlx_rs::transforms::compile::compile;
use qwen_runtime::__private::mlx_rs::{random, Array, Dtype};

fn normal(shape: &[i32], std: f32) -> Array {
    random::normal::<f32>(shape, None, std, None)
        .unwrap()
        .as_dtype(Dtype::Bfloat16)
        .unwrap()
}

#[test]
#[ignore = "device benchmark"]
fn res1024_block_eager_vs_compiled() {
    let prefix = "transformer_blocks.0";
    let shapes: BTreeMap<String, Vec<i32>> = real::DualStreamBlockWeights::specs(prefix)
        .into_iter()
        .map(|s| (s.name, s.shape.iter().map(|&d| d as i32).collect()))
        .collect();
    let mut get = |key: &str| -> Result<Array, real::LoadError> {
        let s = &shapes[key];
        let fan_in = if s.len() > 1 { s[1] as f32 } else { 1.0 };
        Ok(normal(s, 1.0 / fan_in.sqrt()))
    };
    let w = real::DualStreamBlockWeights::load_with(&mut get, prefix, Dtype::Bfloat16).unwrap();
    for l_txt in [100, 6] {
        let (b, l_img) = (2, real::IMG_TOKENS as i32);
        let x = normal(&[b, l_img, 3072], 1.0);
        let ctx = normal(&[b, l_txt, 3072], 1.0);
        let temb = normal(&[b, 3072], 1.0);
        let (ic, is, tc, ts) = real::rope(l_txt).unwrap();
        let time = |f: &mut dyn FnMut() -> Vec<Array>| {
            for _ in 0..3 {
                for a in f() {
                    a.eval().unwrap();
                }
            }
            let n = 10;
            let t0 = Instant::now();
            for _ in 0..n {
                for a in f() {
                    a.eval().unwrap();
                }
            }
            t0.elapsed().as_secs_f64() * 1000.0 / n as f64
        };
        let eager = time(&mut || {
            let (y, c) = real::dual_stream_block(&w, &x, &ctx, &temb, &ic, &is, &tc, &ts).unwrap();
            vec![y, c]
        });
        let mut args = w.arrays();
        args.extend([
            x.clone(),
            ctx.clone(),
            temb.clone(),
            ic.clone(),
            is.clone(),
            tc.clone(),
            ts.clone(),
        ]);
        let mut block = compile(real::dual_stream_block_flat, None);
        let compiled = time(&mut || block(&args).unwrap());
        println!(
            "{{\"what\":\"res1024 dual_stream_block bf16\",\"batch\":{b},\"l_txt\":{l_txt},\"eager_ms\":{eager:.2},\"compiled_ms\":{compiled:.2},\"x60_eager_ms\":{:.0},\"x60_compiled_ms\":{:.0}}}",
            eager * 60.0,
            compiled * 60.0
        );
    }
}
