//! Device benchmark (not CI): one true-CFG step of the generated res1024 transformer on
//! random weights, with and without the fused CUDA kernels and compiled blocks, and the
//! kernels checked against the plain ops. Run on a GPU machine:
//! `cargo test -p qwen --release --test gpu_block -- --ignored --nocapture` (or build it
//! here with `--no-run`, carry the binary and the MLX CUDA pack; see ../shared/docs/gpu.md).

use std::collections::BTreeMap;
use std::time::Instant;

use qwen::specializations::res1024_split as real;
use qwen_runtime::__private::mlx_rs::error::Exception;
use qwen_runtime::__private::mlx_rs::transforms::eval;
use qwen_runtime::__private::mlx_rs::{memory, ops, random, Array, Dtype};
use qwen_runtime::kernels;

fn normal(shape: &[i32], std: f32) -> Array {
    random::normal::<f32>(shape, None, std, None)
        .unwrap()
        .as_dtype(Dtype::Bfloat16)
        .unwrap()
}

/// Random bf16 weights of the real shapes (std 1/√fan_in), each evaluated as it is made so
/// the f32 draws never pile up.
fn random_weights<W>(
    specs: Vec<qwen_runtime::TensorSpec>,
    load: impl FnOnce(
        &mut dyn FnMut(&str) -> Result<Array, real::LoadError>,
    ) -> Result<W, real::LoadError>,
) -> W {
    random_weights_of(specs, usize::MAX, load)
}

/// [`random_weights`] for the first `blocks` transformer blocks only; the others' tensors
/// are 1-element placeholders (truncate the blocks before use).
fn random_weights_of<W>(
    specs: Vec<qwen_runtime::TensorSpec>,
    blocks: usize,
    load: impl FnOnce(
        &mut dyn FnMut(&str) -> Result<Array, real::LoadError>,
    ) -> Result<W, real::LoadError>,
) -> W {
    let shapes: BTreeMap<String, Vec<i32>> = specs
        .into_iter()
        .map(|s| (s.name, s.shape.iter().map(|&d| d as i32).collect()))
        .collect();
    let skipped = |key: &str| {
        key.strip_prefix("transformer_blocks.")
            .and_then(|k| k.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= blocks)
    };
    let mut get = |key: &str| -> Result<Array, real::LoadError> {
        if skipped(key) {
            return Ok(Array::from_slice(&[0.0f32], &[1]));
        }
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

/// One true-CFG denoising step at 1024² of the whole generated transformer (`res1024_split`:
/// 60 blocks, random weights of the real shapes, both halves in one call with texts of 27
/// and 6 tokens, one eval per step), with the fused CUDA kernels off and on, eager and with
/// each block through `transforms::compile`. Also checks the kernels against the plain ops:
/// the whole step in bf16, and 2 blocks in f32. Prints JSON lines.
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

    let step = CfgStep::new(Dtype::Bfloat16)?;
    let mut outs = vec![];
    // (fused kernels, compiled blocks, async_eval per block)
    let configs = [
        (false, false, false),
        (false, true, false),
        (true, false, false),
        (true, true, false),
        (true, false, true),
    ];
    for (fused, compiled, pipelined) in configs {
        kernels::set_fused_kernels(fused);
        kernels::set_compile_blocks(compiled);
        kernels::set_pipeline_blocks(pipelined);
        memory::reset_peak_memory()?;
        let ms = ms_per_step(2, 5, &mut || Ok(vec![step.run(&w)?]))?;
        let peak = gb(memory::peak_memory()?);
        println!(
            "{{\"what\":\"res1024_split transformer CFG step bf16\",\"fused_kernels\":{fused},\"compiled_blocks\":{compiled},\"pipelined_blocks\":{pipelined},\"ms\":{ms:.1},\"peak_gb\":{peak:.1}}}"
        );
        outs.push(step.run(&w)?);
    }
    eval(&outs)?;
    println!(
        "{{\"check\":\"velocity bf16, fused vs plain (compiled)\",\"rel\":{:.2e},\"plain eager vs compiled\":{:.2e},\"pipelined vs not\":{:.2e}}}",
        rel(&outs[3], &outs[1])?,
        rel(&outs[1], &outs[0])?,
        rel(&outs[4], &outs[2])?
    );
    drop(outs);
    drop(weights);
    drop(w);
    memory::clear_cache()?;

    // f32, 2 blocks: the kernels against the plain ops at full precision.
    let mut w32 = random_weights_of(real::TransformerWeights::specs(""), 2, |get| {
        real::TransformerWeights::load_with(get, "", Dtype::Float32)
    });
    w32.transformer_blocks.truncate(2);
    let step = CfgStep::new(Dtype::Float32)?;
    let mut outs = vec![];
    for fused in [false, true] {
        kernels::set_fused_kernels(fused);
        kernels::set_compile_blocks(false);
        kernels::set_pipeline_blocks(false);
        outs.push(step.run(&w32)?);
        eval(&outs)?;
    }
    println!(
        "{{\"check\":\"velocity f32 2 blocks, fused vs plain\",\"rel\":{:.2e}}}",
        rel(&outs[1], &outs[0])?
    );
    Ok(())
}

/// The inputs of one true-CFG step at 1024²: the latents for both halves, the texts of 27
/// and 6 tokens packed into one sequence (as `pipeline/variants.rs` passes them), the
/// step's modulation (random, of the size `timestep_modulation` gives), the RoPE tables.
struct CfgStep {
    x: Array,
    texts: Array,
    /// img, txt `[60, 2, 6·3072]`, out `[2, 2·3072]`
    modulation: [Array; 3],
    /// img cos, img sin, txt cos (27, 6), txt sin (27, 6)
    rope: [Array; 6],
}

impl CfgStep {
    fn new(dtype: Dtype) -> Result<Self, Exception> {
        let (ic, is, tc0, ts0) = real::rope(27)?;
        let (_, _, tc1, ts1) = real::rope(6)?;
        let x = normal(&[2, real::IMG_TOKENS as i32, 64], 1.0).as_dtype(dtype)?;
        let (c0, c1) = (normal(&[1, 27, 3584], 1.0), normal(&[1, 6, 3584], 1.0));
        let texts = ops::concatenate(&[c0, c1], 1)?.as_dtype(dtype)?;
        let layers = real::NUM_LAYERS as i32;
        let modulation = [
            normal(&[layers, 2, 6 * 3072], 0.5).as_dtype(dtype)?,
            normal(&[layers, 2, 6 * 3072], 0.5).as_dtype(dtype)?,
            normal(&[2, 2 * 3072], 0.5).as_dtype(dtype)?,
        ];
        let step = CfgStep {
            x,
            texts,
            modulation,
            rope: [ic, is, tc0, tc1, ts0, ts1],
        };
        eval(
            [&step.x, &step.texts]
                .into_iter()
                .chain(&step.modulation)
                .chain(&step.rope),
        )?;
        Ok(step)
    }

    /// The velocity of both halves `[2, L_img, 64]`.
    fn run(&self, w: &real::TransformerWeights) -> Result<Array, Exception> {
        let [ic, is, tc0, tc1, ts0, ts1] = &self.rope;
        let [mi, mt, mo] = &self.modulation;
        real::transformer(
            w,
            &self.x,
            &self.texts,
            mi,
            mt,
            mo,
            ic,
            is,
            tc0,
            tc1,
            ts0,
            ts1,
        )
    }
}

/// ‖a − b‖ / ‖b‖ in f32.
fn rel(a: &Array, b: &Array) -> Result<f32, Exception> {
    let (a, b) = (a.as_dtype(Dtype::Float32)?, b.as_dtype(Dtype::Float32)?);
    let d = ops::subtract(&a, &b)?;
    let n = |v: &Array| ops::sqrt(&ops::sum(&ops::square(v)?, None)?);
    Ok(ops::divide(&n(&d)?, &n(&b)?)?.item_cast::<f32>())
}

/// One CFG step through 2 blocks with the fused kernels, for a per-kernel profile under
/// Nsight Compute: `ncu --metrics gpu__time_duration.sum --csv <this binary> --ignored
/// profile_two_blocks` (one warm-up step, then the profiled one; weights are made first).
#[test]
#[ignore = "device profile"]
fn profile_two_blocks() -> Result<(), Exception> {
    let mut w = random_weights_of(real::TransformerWeights::specs(""), 2, |get| {
        real::TransformerWeights::load_with(get, "", Dtype::Bfloat16)
    });
    w.transformer_blocks.truncate(2);
    eval(&w.arrays())?;
    let step = CfgStep::new(Dtype::Bfloat16)?;
    kernels::set_fused_kernels(true);
    kernels::set_compile_blocks(false);
    kernels::set_pipeline_blocks(false);
    for _ in 0..2 {
        eval([&step.run(&w)?])?;
    }
    Ok(())
}

/// A plan for the first `.1` blocks only (the others are 1-element placeholders).
struct FirstBlocks<P>(P, usize);

impl<P: qwen_runtime::quant::Plan> qwen_runtime::quant::Plan for FirstBlocks<P> {
    fn spec(&self, key: &str) -> Option<qwen_runtime::quant::QuantSpec> {
        let block = key
            .strip_prefix("transformer_blocks.")
            .and_then(|k| k.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        match block {
            Some(i) if i >= self.1 => None,
            _ => self.0.spec(key),
        }
    }
}

/// Milliseconds of `f`, the median of `n` evaluated runs after one warm-up.
fn median_ms(n: usize, mut f: impl FnMut() -> Result<Array, Exception>) -> Result<f64, Exception> {
    eval([&f()?])?;
    let mut ms = vec![];
    for _ in 0..n {
        let t = Instant::now();
        eval([&f()?])?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[n / 2])
}

/// The first use of the fused kernels in a process: `warm_up_kernels` (what `Pipeline::open`
/// runs while the weights are read) compiles them all; the first step after it then
/// compiles none of ours. Then a 2-block CFG step dense, with q8 and with q4 weights
/// (quantized at load as `--quantize` does; many rows: dequantized per layer), and the VAE
/// decode's peak at 1024² beside nothing else. One JSON line each.
#[test]
#[ignore = "device benchmark"]
fn warm_up_quantized_step_and_decode_peak() -> Result<(), Exception> {
    use qwen::quantize::Quantization;

    kernels::set_compile_blocks(false);
    let t = Instant::now();
    real::warm_up_kernels(Dtype::Bfloat16)?;
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut w = random_weights_of(real::TransformerWeights::specs(""), 2, |get| {
        real::TransformerWeights::load_with(get, "", Dtype::Bfloat16)
    });
    w.transformer_blocks.truncate(2);
    eval(&w.arrays())?;
    let step = CfgStep::new(Dtype::Bfloat16)?;
    let t = Instant::now();
    eval([&step.run(&w)?])?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let dense_ms = median_ms(5, || step.run(&w))?;
    println!(
        "{{\"what\":\"first use\",\"warm_up_kernels_ms\":{warm_ms:.0},\"first_2block_step_after_ms\":{first_ms:.0},\"warm_2block_step_ms\":{dense_ms:.1}}}"
    );
    drop(w);
    for bits in [8, 4] {
        let q = Quantization::new(bits).map_err(Exception::custom)?;
        let plan = FirstBlocks(q.transformer(), 2);
        let mut wq = random_weights_of(real::TransformerWeights::specs(""), 2, |get| {
            real::TransformerWeights::load_from(get, &plan, "", Dtype::Bfloat16)
        });
        wq.transformer_blocks.truncate(2);
        assert!(wq.transformer_blocks[0].quantized());
        let ms = median_ms(5, || step.run(&wq))?;
        println!(
            "{{\"what\":\"2-block CFG step, 1024², bf16\",\"quantize\":{bits},\"ms\":{ms:.1},\"dense_ms\":{dense_ms:.1},\"ratio\":{:.2}}}",
            ms / dense_ms
        );
    }
    memory::clear_cache()?;

    let vae = random_weights(real::VaeDecoderWeights::specs(""), |get| {
        real::VaeDecoderWeights::load_with(get, "", Dtype::Bfloat16)
    });
    eval(&vae.arrays())?;
    let z = normal(&[1, real::LATENT_H as i32, real::LATENT_W as i32, 16], 1.0);
    eval([&z])?;
    let before = memory::active_memory()?;
    memory::reset_peak_memory()?;
    let t = Instant::now();
    let y = real::vae_decoder(&vae, &z)?;
    eval([&y])?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let peak = memory::peak_memory()?;
    println!(
        "{{\"what\":\"vae decode 1024² bf16\",\"ms\":{ms:.0},\"work_gb\":{:.2},\"weights_and_inputs_gb\":{:.2}}}",
        gb(peak - before),
        gb(before)
    );
    Ok(())
}
