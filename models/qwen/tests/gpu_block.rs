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
use qwen_runtime::__private::mlx_rs::error::Exception;
use qwen_runtime::__private::mlx_rs::transforms::{compile::compile, eval};
use qwen_runtime::__private::mlx_rs::{memory, random, Array, Dtype};

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
    let w = random_weights(real::DualStreamBlockWeights::specs(prefix), |get| {
        real::DualStreamBlockWeights::load_with(get, prefix, Dtype::Bfloat16)
    });
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

/// Random bf16 weights of the real shapes (std 1/√fan_in), each evaluated as it is made so
/// the f32 draws never pile up.
fn random_weights<W>(
    specs: Vec<qwen_runtime::TensorSpec>,
    load: impl FnOnce(
        &mut dyn FnMut(&str) -> Result<Array, real::LoadError>,
    ) -> Result<W, real::LoadError>,
) -> W {
    let shapes: BTreeMap<String, Vec<i32>> = specs
        .into_iter()
        .map(|s| (s.name, s.shape.iter().map(|&d| d as i32).collect()))
        .collect();
    let mut get = |key: &str| -> Result<Array, real::LoadError> {
        let s = &shapes[key];
        let fan_in = if s.len() > 1 { s[1] as f32 } else { 1.0 };
        let a = normal(s, 1.0 / fan_in.sqrt());
        a.eval().unwrap();
        Ok(a)
    };
    load(&mut get).unwrap()
}

/// Mean wall time (ms) of one step after `warm` untimed steps; a step is `f` and one eval
/// of all its outputs together (as the pipeline evaluates once per step).
fn ms_per_step(
    warm: usize,
    n: usize,
    f: &mut dyn FnMut() -> Result<Vec<Array>, Exception>,
) -> Result<f64, Exception> {
    for _ in 0..warm {
        eval(&f()?)?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        eval(&f()?)?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0 / n as f64)
}

fn gb(bytes: usize) -> f64 {
    bytes as f64 / 1e9
}

/// One true-CFG denoising step at 1024² of the whole generated transformer (60 blocks,
/// random bf16 weights of the real shapes), in the two CFG shapes: "batched" (one batch-2
/// call, L_txt 100 for both halves, as the `batched` module runs when both texts have one
/// length) and "pipeline" (diffusers' QwenImagePipeline: two batch-1 calls, L_txt 100 and
/// 6); each eager and with `transformer_flat` through `transforms::compile` (one trace per
/// input shape), one eval per step. Rows 3-5 split the "pipeline" case to find where its
/// compiled time goes. Prints JSON lines and the MLX peak memory of each (weights included).
///
/// Measured 2026-11-27 on an **H200** (MLX 0.32.4 CUDA), ms per CFG step, 2 warm-up + 5
/// timed steps; two device calls, diffusers 0.42.1 eager (`diffusers_qwen_dit.py`) in each:
///
/// | shape | eager | compiled | peak GB eager / compiled | diffusers, same call |
/// | --- | --- | --- | --- | --- |
/// | batched B2 txt 100/100 | 449.8, 450.7 | 372.9, 389.6 | 49.2 / 53.4 | batched (txt 100/6 + mask) 361.2 |
/// | pipeline 2× B1 txt 100 + 6 | 495.1, 498.4 | 504.8, 540.9 | 46.6 / 49.3 | pipeline 350.1, 349.4 |
/// | pipeline, one compiled fn per length | 537.9 | 559.6 | 46.6 / 49.3 | |
/// | B1 txt 100 alone | 262.9 | 219.7 | 46.3 / 50.7 | |
/// | B1 txt 6 alone | 258.3 | 216.1 | 46.2 / 50.4 | |
///
/// Weights 40.9 GB (1933 arrays); diffusers' peak 41.3 (pipeline) / 41.7 GB (batched).
/// Against diffusers pipeline on the same card: batched 1.29× eager, 1.07-1.12× compiled
/// (against diffusers batched: 1.25×, 1.03×); pipeline shape 1.41-1.43× eager, 1.44-1.55×
/// compiled. The compiled pipeline shape loses its
/// gain only when both batch-1 graphs go into one eval (each alone: ~17 % faster compiled,
/// 220 + 216 = 436 ms, 1.25×); a compiled function per text length does not help, so it is
/// not re-tracing.
#[test]
#[ignore = "device benchmark"]
fn res1024_transformer_cfg_step() -> Result<(), Exception> {
    let w = random_weights(real::TransformerWeights::specs(""), |get| {
        real::TransformerWeights::load_with(get, "", Dtype::Bfloat16)
    });
    let weights = w.arrays();
    eval(&weights)?;
    memory::clear_cache()?;
    let weights_gb = gb(memory::active_memory()?);
    println!("{{\"what\":\"res1024 transformer weights bf16\",\"arrays\":{},\"active_gb\":{weights_gb:.1}}}", weights.len());

    let l_img = real::IMG_TOKENS as i32;
    // One call's inputs: (x, ctx, t, img cos, img sin, txt cos, txt sin).
    let inputs = |b: i32, l_txt: i32| -> Result<[Array; 7], Exception> {
        let (ic, is, tc, ts) = real::rope(l_txt)?;
        let x = normal(&[b, l_img, 64], 1.0);
        let ctx = normal(&[b, l_txt, 3584], 1.0);
        let t = Array::from_slice(&vec![0.5f32; b as usize], &[b]);
        let a = [x, ctx, t, ic, is, tc, ts];
        eval(&a)?;
        Ok(a)
    };
    let (b2, c100, c6) = (inputs(2, 100)?, inputs(1, 100)?, inputs(1, 6)?);
    // (name, the calls of one step, one compiled function per call instead of one shared)
    let shapes: [(&str, Vec<&[Array; 7]>, bool); 5] = [
        ("batched B2 txt 100/100", vec![&b2], false),
        ("pipeline 2x B1 txt 100+6", vec![&c100, &c6], false),
        ("pipeline, compiled fn per length", vec![&c100, &c6], true),
        ("B1 txt 100 only", vec![&c100], false),
        ("B1 txt 6 only", vec![&c6], false),
    ];
    let mut table = vec![];
    for (name, calls, per_call) in &shapes {
        let mut eager = || -> Result<Vec<Array>, Exception> {
            calls
                .iter()
                .map(|[x, c, t, ic, is, tc, ts]| real::transformer(&w, x, c, t, ic, is, tc, ts))
                .collect()
        };
        memory::reset_peak_memory()?;
        let eager_ms = ms_per_step(2, 5, &mut eager)?;
        let eager_peak = gb(memory::peak_memory()?);

        let flat: Vec<Vec<Array>> = calls
            .iter()
            .map(|call| weights.iter().chain(call.iter()).cloned().collect())
            .collect();
        let n_fns = if *per_call { calls.len() } else { 1 };
        let mut fns: Vec<_> = (0..n_fns)
            .map(|_| compile(real::transformer_flat, None))
            .collect();
        let mut compiled = || -> Result<Vec<Array>, Exception> {
            let mut out = vec![];
            for (i, args) in flat.iter().enumerate() {
                out.extend(fns[i % n_fns](args)?);
            }
            Ok(out)
        };
        memory::reset_peak_memory()?;
        let compiled_ms = ms_per_step(2, 5, &mut compiled)?;
        let compiled_peak = gb(memory::peak_memory()?);
        println!(
            "{{\"what\":\"res1024 transformer CFG step bf16\",\"shape\":\"{name}\",\"eager_ms\":{eager_ms:.1},\"compiled_ms\":{compiled_ms:.1},\"eager_peak_gb\":{eager_peak:.1},\"compiled_peak_gb\":{compiled_peak:.1}}}"
        );
        table.push(format!(
            "| {name} | {eager_ms:.1} | {compiled_ms:.1} | {eager_peak:.1} / {compiled_peak:.1} |"
        ));
    }
    println!("\n| shape (60 blocks, weights {weights_gb:.1} GB) | eager ms/step | compiled ms/step | peak GB eager / compiled |");
    println!("| --- | --- | --- | --- |");
    for row in table {
        println!("{row}");
    }
    Ok(())
}
