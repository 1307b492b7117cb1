//! `qwen-run`: Qwen-Image text-to-image on MLX.
//!
//! `qwen-run --prompt "..."` writes a PNG. Without `--model` it runs the tiny demo checkpoint
//! of the repository (random weights: the image is noise-like, the run shows the whole path).
//! `--bench-matmul N` instead times a matrix multiply on the chosen device.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mlx_rs::{random, Array, Dtype};
use qwen::cli::{DeviceArg, DtypeArg};
use qwen::pipeline::{Event, Options, Pipeline, Request, Resolution};
use qwen_runtime::device::ChosenDevice;
use qwen_runtime::Checkpoint;

/// The tiny demo checkpoint, resolved at compile time.
const DEMO_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/tiny-qwen-image"
);

/// More steps than any schedule needs (diffusers' default is 50).
const MAX_STEPS: usize = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "qwen-run",
    version,
    about = "Qwen-Image text-to-image on MLX",
    after_help = concat!(
        "Without --model, the tiny demo checkpoint of the source tree is used (random weights; ",
        "its default resolution is 96x64):\n  ",
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny-qwen-image"
    )
)]
struct Args {
    /// What to draw.
    #[arg(long, required_unless_present = "bench_matmul")]
    prompt: Option<String>,

    /// Negative prompt for true CFG.
    #[arg(long, default_value = " ")]
    negative_prompt: String,

    /// Output size: 1024 (square) or WxH, e.g. 96x64; default: the model's default.
    #[arg(long, value_name = "RES")]
    res: Option<Resolution>,

    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,

    /// True CFG scale (1 or less: no negative pass).
    #[arg(long, default_value_t = 4.0)]
    cfg: f32,

    /// Seed of the initial noise (MLX's generator, so not torch's).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Model folder in the diffusers layout; default: the tiny demo checkpoint (see below).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,

    /// Output PNG (replaced only when the run succeeds).
    #[arg(long, short, default_value = "out.png")]
    output: PathBuf,

    /// Device to run on: the GPU when the loaded libmlx has one, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,

    /// Compute dtype (weights of any stored float dtype are converted at load). Default:
    /// bf16 on a GPU (the published model in f32 needs 82 GB for the transformer alone), f32
    /// on the CPU (bf16 is slow there); bf16 for --bench-matmul.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,

    /// Instead of generating: time an N×N by N×N matrix multiply on the chosen device.
    #[arg(long, value_name = "N")]
    bench_matmul: Option<usize>,

    /// Timed repetitions of --bench-matmul (after one warm-up).
    #[arg(long, default_value_t = 10)]
    iters: u32,

    /// Testing: packed initial latents [1, L_img, 64] from this safetensors file instead of
    /// seeded noise (with --latents-key).
    #[arg(long, hide = true, requires = "latents_key")]
    latents_file: Option<PathBuf>,

    /// Testing: the tensor name in --latents-file.
    #[arg(long, hide = true, requires = "latents_file")]
    latents_key: Option<String>,

    /// Testing: force a generated module by name (e.g. res96x64_tiny).
    #[arg(long, hide = true)]
    module: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let chosen = args.device.choose()?;
    chosen.set_default();
    println!("device: {}", chosen.name);
    match args.bench_matmul {
        Some(n) => bench_matmul(&chosen, args, n),
        None => generate(args, &chosen),
    }
}

/// Fails early, before any work, when the PNG could not be written: the folder is missing or
/// not writable, or the path is a folder. An existing file is left alone until the image is
/// ready (then replaced atomically).
fn check_output(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!("output {} is a folder, not a file", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    let probe = parent.join(format!(".qwen-run-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("cannot write {}: {e}", path.display()),
    }
}

fn generate(args: &Args, chosen: &ChosenDevice) -> Result<()> {
    let Some(prompt) = args.prompt.clone() else {
        bail!("--prompt is required");
    };
    if !(1..=MAX_STEPS).contains(&args.steps) {
        bail!(
            "--steps must be between 1 and {MAX_STEPS}, got {}",
            args.steps
        );
    }
    check_output(&args.output)?;
    let dtype = args.dtype.unwrap_or_else(|| DtypeArg::default_for(chosen));
    let model = match &args.model {
        Some(m) => m.clone(),
        None => std::fs::canonicalize(DEMO_MODEL).unwrap_or_else(|_| PathBuf::from(DEMO_MODEL)),
    };

    let start = Instant::now();
    let options = Options {
        resolution: args.res,
        dtype: dtype.mlx(),
        module: args.module.clone(),
    };
    let pipeline = Pipeline::open(&model, &options)?;
    let r = pipeline.resolution();
    println!(
        "model: {} ({} config, module {}, {})",
        model.display(),
        pipeline.variant().config(),
        pipeline.variant().name(),
        dtype.name()
    );
    println!("resolution: {}x{} (W×H)", r.width, r.height);
    println!("load: {:.2} s", start.elapsed().as_secs_f64());

    let latents = match (&args.latents_file, &args.latents_key) {
        (Some(file), Some(key)) => {
            let ck = Checkpoint::open(file)?;
            Some(ck.array(key)?)
        }
        _ => None,
    };
    let request = Request {
        prompt,
        negative_prompt: Some(args.negative_prompt.clone()),
        steps: args.steps,
        cfg_scale: args.cfg,
        seed: args.seed,
        latents,
    };

    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("denoise {bar:30} {pos}/{len} steps [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = pipeline.generate(&request, &mut |event| match event {
        Event::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
        Event::Step { done, .. } => bar.set_position(done as u64),
    });
    bar.finish_and_clear();
    let generation = result?;
    let t = generation.timings;
    println!(
        "encode: {:.2} s, denoise: {:.2} s ({:.3} s/step), decode: {:.2} s",
        t.encode,
        t.denoise,
        t.denoise / args.steps as f64,
        t.decode
    );

    let meta = pipeline.metadata(&request);
    let text: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    generation
        .image
        .write_png(&args.output, &text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    Ok(())
}

/// Multiplies two seeded random N×N matrices `iters` times and reports the mean time.
fn bench_matmul(chosen: &ChosenDevice, args: &Args, n: usize) -> Result<()> {
    if n == 0 || n > 65_536 {
        bail!("--bench-matmul must be between 1 and 65536, got {n}");
    }
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let dtype = args.dtype.unwrap_or(DtypeArg::Bf16);
    let side = i32::try_from(n).context("matrix side does not fit MLX's i32 shapes")?;
    let shape = [side, side];
    let key = random::key(0).context("creating the random key")?;
    let (ka, kb) = random::split(&key, 2).context("splitting the random key")?;
    let make = |k: &Array| -> Result<Array> {
        let x = random::normal::<f32>(&shape[..], None, None, k)?.as_dtype(dtype.mlx())?;
        x.eval()?;
        Ok(x)
    };
    let a = make(&ka).context("creating the input matrices")?;
    let b = make(&kb).context("creating the input matrices")?;

    // Warm-up: kernel selection, allocation.
    let c = a.matmul(&b).context("matmul")?;
    c.eval().context("matmul")?;

    let start = Instant::now();
    let mut c = c;
    for _ in 0..args.iters {
        c = a.matmul(&b).context("matmul")?;
        c.eval().context("matmul")?;
    }
    let seconds = start.elapsed().as_secs_f64() / f64::from(args.iters);

    // A cheap sanity check that the device produced numbers, not garbage.
    let checksum = c
        .as_dtype(Dtype::Float32)?
        .abs()?
        .mean(None)?
        .item_exact::<f32>();
    if !checksum.is_finite() {
        bail!("matmul on {} produced non-finite values", chosen.name);
    }
    let flops = 2.0 * (n as f64).powi(3);
    println!(
        "matmul {n}x{n}x{n} {}: {:.3} ms, {:.2} TFLOP/s (mean of {}; mean |c| = {checksum:.3})",
        dtype.name(),
        seconds * 1e3,
        flops / seconds / 1e12,
        args.iters
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("qwen-run").chain(argv.iter().copied())).unwrap()
    }

    #[test]
    fn small_matmul_runs_on_the_cpu() {
        run(&args(&[
            "--device",
            "cpu",
            "--bench-matmul",
            "8",
            "--dtype",
            "f32",
            "--iters",
            "1",
        ]))
        .unwrap();
    }

    #[test]
    fn bad_sizes_are_errors_not_panics() {
        let err = run(&args(&["--device", "cpu", "--bench-matmul", "0"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--bench-matmul must be between 1 and 65536, got 0"
        );
        let err = run(&args(&[
            "--device",
            "cpu",
            "--bench-matmul",
            "8",
            "--iters",
            "0",
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "--iters must be at least 1");
    }

    #[test]
    fn unknown_options_are_rejected_by_the_parser() {
        assert!(Args::try_parse_from(["qwen-run", "--device", "tpu"]).is_err());
        assert!(Args::try_parse_from(["qwen-run", "--bench-matmul", "-3"]).is_err());
        assert!(Args::try_parse_from(["qwen-run", "--prompt", "x", "--res", "12y"]).is_err());
        // a prompt is needed unless benchmarking
        assert!(Args::try_parse_from(["qwen-run"]).is_err());
        assert!(Args::try_parse_from(["qwen-run", "--bench-matmul", "8"]).is_ok());
    }

    #[test]
    fn asking_for_a_missing_gpu_is_an_error() {
        use qwen_runtime::device::{self, Backend};
        if device::count(Backend::Gpu) > 0 {
            return; // linked against a GPU libmlx: nothing to refuse
        }
        let err = run(&args(&["--device", "gpu", "--bench-matmul", "8"])).unwrap_err();
        assert!(
            err.to_string().starts_with("no gpu in the loaded libmlx"),
            "{err}"
        );
    }
}
