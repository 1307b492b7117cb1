//! `qwen-run`: the qwen-aot command line.
//!
//! At this stage it reports the MLX device it would run on and times a bf16 matrix
//! multiply there (`--bench-matmul N`); the text-to-image pipeline grows here later.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use mlx_rs::{random, Array, Dtype};
use qwen_runtime::device::{self, Backend, ChosenDevice};

#[derive(Debug, Parser)]
#[command(name = "qwen-run", version, about = "Qwen-Image text-to-image on MLX")]
struct Args {
    /// Device to run on: the GPU when the loaded libmlx has one, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,

    /// Time an N×N by N×N matrix multiply on the chosen device.
    #[arg(long, value_name = "N", default_value_t = 512)]
    bench_matmul: usize,

    /// Element type of the matrix multiply.
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    dtype: DtypeArg,

    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 10)]
    iters: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DtypeArg {
    Bf16,
    F16,
    F32,
}

impl DtypeArg {
    fn mlx(self) -> Dtype {
        match self {
            DtypeArg::Bf16 => Dtype::Bfloat16,
            DtypeArg::F16 => Dtype::Float16,
            DtypeArg::F32 => Dtype::Float32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            DtypeArg::Bf16 => "bf16",
            DtypeArg::F16 => "f16",
            DtypeArg::F32 => "f32",
        }
    }
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
    let chosen = match args.device {
        DeviceArg::Auto => device::choose(),
        DeviceArg::Cpu => device::cpu(),
        DeviceArg::Gpu => device::select(Backend::Gpu)?,
    };
    chosen.set_default();
    println!("device: {}", chosen.name);
    bench_matmul(&chosen, args)
}

/// Multiplies two seeded random N×N matrices `iters` times and reports the mean time.
fn bench_matmul(chosen: &ChosenDevice, args: &Args) -> Result<()> {
    let n = args.bench_matmul;
    if n == 0 || n > 65_536 {
        bail!("--bench-matmul must be between 1 and 65536, got {n}");
    }
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let side = i32::try_from(n).context("matrix side does not fit MLX's i32 shapes")?;
    let shape = [side, side];
    let key = random::key(0).context("creating the random key")?;
    let (ka, kb) = random::split(&key, 2).context("splitting the random key")?;
    let make = |k: &Array| -> Result<Array> {
        let x = random::normal::<f32>(&shape[..], None, None, k)?.as_dtype(args.dtype.mlx())?;
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
        args.dtype.name(),
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
        let err = run(&args(&["--device", "cpu", "--iters", "0"])).unwrap_err();
        assert_eq!(err.to_string(), "--iters must be at least 1");
    }

    #[test]
    fn unknown_options_are_rejected_by_the_parser() {
        assert!(Args::try_parse_from(["qwen-run", "--device", "tpu"]).is_err());
        assert!(Args::try_parse_from(["qwen-run", "--bench-matmul", "-3"]).is_err());
    }

    #[test]
    fn asking_for_a_missing_gpu_is_an_error() {
        if device::count(Backend::Gpu) > 0 {
            return; // linked against a GPU libmlx: nothing to refuse
        }
        let err = run(&args(&["--device", "gpu"])).unwrap_err();
        assert!(
            err.to_string().starts_with("no gpu in the loaded libmlx"),
            "{err}"
        );
    }
}
