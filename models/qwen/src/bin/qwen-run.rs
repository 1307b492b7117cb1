//! `qwen-run`: Qwen-Image text-to-image on MLX.
//!
//! `qwen-run --prompt "..."` writes a PNG. Without `--model` it runs the tiny demo checkpoint
//! of the repository (random weights: the image is noise-like, the run shows the whole path).
//! `--bench-matmul N` instead times a matrix multiply on the chosen device.
//!
//! SIGINT and SIGTERM stop a generation between steps (exit status 130 / 143, one `error:`
//! line, no file written or left behind; with `--count`, images already written stay); a
//! second one ends the process at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use mlx_rs::{random, Array, Dtype};
use qwen::cli::{DeviceArg, DtypeArg};
use qwen::output::{check_output, remove_stale_temp_files};
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
const MAX_COUNT: usize = 64;

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
    ),
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,

    /// What to draw.
    #[arg(long, required_unless_present = "bench_matmul")]
    prompt: Option<String>,

    /// Negative prompt for true CFG.
    #[arg(long, default_value = " ")]
    negative_prompt: String,

    /// Output size: 1024 (square), WxH (e.g. 1664x928) or a trained aspect ratio (1:1, 16:9,
    /// 9:16, 4:3, 3:4, 3:2, 2:3); rounded down to multiples of 16 as diffusers does. Default:
    /// the model's (1024²).
    #[arg(long, value_name = "RES")]
    res: Option<Resolution>,

    #[command(flatten)]
    schedule: ScheduleArgs,

    /// Seed of the initial noise (MLX's generator, so not torch's).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Model folder in the diffusers layout (a Hugging Face cache snapshot folder too), or a
    /// repo id such as Qwen/Qwen-Image found in the local Hugging Face cache ($HF_HOME/hub,
    /// else ~/.cache/huggingface/hub; the snapshot refs/main names; nothing is downloaded).
    /// Default: the tiny demo checkpoint (see below).
    #[arg(long, value_name = "DIR|REPO")]
    model: Option<PathBuf>,

    /// Output PNG (replaced only when the run succeeds). Refused: an input of the run (a
    /// model file, also through a link), a folder, device node or FIFO, and a symlink (not
    /// followed: give the path it points to). Temporary files of it left by a killed run
    /// are removed.
    #[arg(long, short, default_value = "out.png")]
    output: PathBuf,

    /// Images of the prompt, seeds SEED, SEED+1, …, written as NAME-1.png … (for
    /// --output NAME.png) one after another once all are made; denoised as one batch
    /// (with CFG both halves of every image in one call) where the batch fits the memory
    /// budget, one image after another otherwise.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: usize,

    /// GPUs to run on, one process each (MLX's NCCL backend between them; rank 0 decodes
    /// and writes): the two halves of true CFG on half of them each, and the image tokens
    /// split over the GPUs of a half where a module generated for that split (`sp = N`)
    /// exists at the size; without CFG (or at a size without a module of one text per
    /// call), the tokens over all of them. 1024² and 2048²: 2 (the halves) or 4 (each half
    /// over 2), and 2 without CFG; other sizes: 2 with CFG.
    #[arg(long, value_name = "N", default_value_t = 1)]
    gpus: usize,

    /// VAE decoding in tiles of 256 px every 192, blended as diffusers' `enable_tiling`
    /// does: auto = when the untiled decode would not fit the memory limit beside what
    /// stays loaded.
    #[arg(long, value_enum, default_value_t = qwen::cli::VaeTilingArg::Auto)]
    vae_tiling: qwen::cli::VaeTilingArg,

    /// Device to run on: the GPU when the loaded libmlx has one, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,

    /// Compute dtype (weights of any stored float dtype are converted at load). Default:
    /// bf16 on a GPU (the published model in f32 needs 82 GB for the transformer alone), f32
    /// on the CPU (bf16 is slow there); bf16 for --bench-matmul.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,

    #[command(flatten)]
    weights: WeightArgs,

    /// With --quantize: fuse each LoRA into its weight before quantizing, instead of keeping
    /// it beside the quantized weight (its own small matmuls in the compute dtype; the
    /// default, closer to the unquantized result).
    #[arg(long, requires = "quantize")]
    lora_fuse: bool,

    /// With --quantize: bits per layer kind, `kind=bits,…` (bits 4, 8 or 16 = unquantized;
    /// kinds attn, img_mlp, txt_mlp, modulation, io, text_encoder), e.g. img_mlp=16.
    #[arg(long, value_name = "KIND=BITS,…", requires = "quantize")]
    quantize_layers: Option<String>,

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

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Write a copy of a model folder with the transformer's linear layers quantized (as
    /// --quantize does at load), for cards that cannot hold the bf16 transformer; run it with
    /// `qwen-run --model OUTPUT`.
    Quantize {
        /// Model folder in the diffusers layout (or a Hugging Face cache snapshot / repo id).
        #[arg(long, value_name = "DIR|REPO")]
        model: String,
        /// 8 or 4.
        #[arg(long, value_name = "BITS")]
        bits: qwen::quantize::Quantization,
        /// Bits per layer kind, as `--quantize-layers`.
        #[arg(long, value_name = "KIND=BITS,…")]
        quantize_layers: Option<String>,
        /// The new folder (must not exist).
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Edit images with a Qwen-Image-Edit-2509 or -2511 folder (`QwenImageEditPlusPipeline`
    /// layout): `qwen-run edit --model DIR --image A.png [--image B.png …] --prompt "…"`.
    Edit(EditArgs),
}

/// `qwen-run edit`'s arguments.
#[derive(Debug, clap::Args)]
struct EditArgs {
    /// Model folder of Qwen-Image-Edit-2509 or -2511 (or a Hugging Face cache snapshot / repo
    /// id).
    #[arg(long, value_name = "DIR|REPO")]
    model: String,
    /// An input image (PNG), in the prompt's order (`Picture 1`, …); repeat for several.
    #[arg(long = "image", value_name = "PNG", required = true)]
    images: Vec<PathBuf>,
    /// The instruction.
    #[arg(long)]
    prompt: String,
    /// Negative prompt (true CFG when --cfg is above 1).
    #[arg(long, default_value = " ")]
    negative_prompt: String,
    /// Output size W×H (or N for N×N); default: the last image's aspect at about 1024² pixels
    /// (as the reference), taken to the nearest size generated for the folder's config.
    #[arg(long)]
    res: Option<Resolution>,
    #[command(flatten)]
    schedule: ScheduleArgs,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Edits of the images, seeds SEED, SEED+1, …, written as NAME-1.png … (for --output
    /// NAME.png); the images and prompts encoded once, the edits denoised as one batch where it
    /// fits the memory budget, one after another otherwise.
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: usize,
    /// Compute dtype (bf16 on a GPU, f32 on the CPU by default).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// The prompt's token positions in the text encoder: `reference` (1-D, as diffusers with
    /// transformers 5 computes them) or `multimodal` (the model's own, per image grid).
    #[arg(long, value_enum, default_value = "reference")]
    positions: PositionsArg,
    #[command(flatten)]
    weights: WeightArgs,
    #[arg(long, short, default_value = "edit.png")]
    output: PathBuf,
}

/// The steps, the CFG scale and the Lightning schedule: generations and edits alike.
#[derive(Debug, clap::Args)]
struct ScheduleArgs {
    /// Denoising steps (default 50; with --lightning its steps).
    #[arg(long)]
    steps: Option<usize>,

    /// True CFG scale; 1 or less runs no negative pass (default 4; with --lightning 1).
    #[arg(long)]
    cfg: Option<f32>,

    /// Qwen-Image-Lightning: its schedule (dynamic shift ln 3, no terminal stretch), 8 or 4
    /// steps and no negative pass, for a Lightning LoRA given with --lora (an Edit-2509/2511
    /// Lightning LoRA for an edit); --steps and --cfg still override.
    #[arg(long, value_name = "STEPS", value_parser = clap::builder::PossibleValuesParser::new(["8", "4"]))]
    lightning: Option<String>,
}

impl ScheduleArgs {
    /// The steps and the CFG scale (a warning for --lightning without a LoRA; steps out of
    /// range and a scale that is not a finite number are errors, before anything loads).
    fn resolve(&self, loras: &[(PathBuf, f32)]) -> Result<(usize, f32)> {
        let lightning: Option<usize> = self.lightning.as_deref().map(|s| s.parse().unwrap_or(8));
        if lightning.is_some() && loras.is_empty() {
            eprintln!(
                "warning: --lightning without --lora: the few-step schedule on the base model (give the Lightning LoRA)"
            );
        }
        let steps = self.steps.or(lightning).unwrap_or(50);
        if !(1..=MAX_STEPS).contains(&steps) {
            bail!("--steps must be between 1 and {MAX_STEPS}, got {steps}");
        }
        let cfg = self
            .cfg
            .unwrap_or(if lightning.is_some() { 1.0 } else { 4.0 });
        if !cfg.is_finite() {
            bail!("--cfg must be a finite number, got {cfg}");
        }
        Ok((steps, cfg))
    }
}

/// How the networks are held: generations and edits alike.
#[derive(Debug, clap::Args)]
struct WeightArgs {
    /// GPU memory the run may use, in GB (10^9 bytes), e.g. 24 for a 24 GB card: networks
    /// that do not fit beside each other are loaded for their stage and freed after it (for
    /// an edit: the encoders, the modulation and the edit transformer). Default: MLX's limit
    /// (95 % of the GPU's memory).
    #[arg(long, value_name = "GB")]
    memory_limit: Option<f64>,

    /// Quantize the transformer's linear layers at load to 8 or 4 bits (MLX affine, groups of
    /// 64); the text encoder and the first and last layers stay in the compute dtype.
    #[arg(long, value_name = "BITS")]
    quantize: Option<qwen::quantize::Quantization>,

    /// A LoRA adapter to fuse into the transformer at load, `FILE` or `FILE:SCALE` (default
    /// 1); repeatable. diffusers/PEFT (`lora_A`/`lora_B`) and kohya/ComfyUI
    /// (`lora_down`/`lora_up`/`alpha`) keys; with --quantize kept beside the quantized weights
    /// (for a generation, --lora-fuse fuses them before quantizing).
    #[arg(long, value_name = "FILE[:SCALE]", value_parser = qwen::cli::parse_lora)]
    lora: Vec<(PathBuf, f32)>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PositionsArg {
    Reference,
    Multimodal,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            match error.downcast_ref::<Interrupted>() {
                Some(i) => ExitCode::from(i.code),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// A run stopped by SIGINT or SIGTERM (exit status 128 + the signal's number).
#[derive(Debug)]
struct Interrupted {
    signal: &'static str,
    code: u8,
    when: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interrupted by {} {}; no image written",
            self.signal, self.when
        )
    }
}

impl std::error::Error for Interrupted {}

/// Err([`Interrupted`]) when SIGINT or SIGTERM arrived.
fn stop_if_signalled(when: impl FnOnce() -> String) -> Result<()> {
    match signals::received() {
        Some((signal, code)) => Err(Interrupted {
            signal,
            code,
            when: when(),
        }
        .into()),
        None => Ok(()),
    }
}

/// SIGINT and SIGTERM without a dependency: `signal(2)` from the C library std links anyway.
/// The first one sets a flag that the run checks between steps; a second one `_exit`s (a
/// temporary PNG it leaves is removed by the next run).
mod signals {
    use std::os::raw::c_int;
    use std::sync::atomic::{AtomicI32, Ordering};

    const SIGINT: c_int = 2; // the same on Linux, macOS and the BSDs
    const SIGTERM: c_int = 15;
    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn on_signal(sig: c_int) {
        if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
            // SAFETY: _exit is async-signal-safe.
            unsafe { _exit(128 + sig) }
        }
    }

    /// Installs the handlers (after this, SIGINT and SIGTERM no longer end the process).
    pub fn install() -> std::io::Result<()> {
        for sig in [SIGINT, SIGTERM] {
            // SAFETY: the handler only touches an atomic (or calls _exit).
            if unsafe { signal(sig, on_signal) } == usize::MAX {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The signal received, if any, and the exit status for it.
    pub fn received() -> Option<(&'static str, u8)> {
        match RECEIVED.load(Ordering::SeqCst) {
            SIGINT => Some(("SIGINT", 130)),
            SIGTERM => Some(("SIGTERM", 143)),
            _ => None,
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let chosen = args.device.choose()?;
    chosen.set_default();
    println!("device: {}", chosen.name);
    if let Some(Command::Quantize {
        model,
        bits,
        quantize_layers,
        output,
    }) = &args.command
    {
        let q = match quantize_layers {
            Some(o) => bits
                .clone()
                .with_overrides(o)
                .map_err(|e| anyhow::anyhow!("--quantize-layers: {e}"))?,
            None => bits.clone(),
        };
        let src = qwen::model_dir::resolve(model)?;
        let start = Instant::now();
        let w = qwen::quantize_folder::write(&src, output, &q)?;
        println!(
            "wrote {} ({}): {} weights quantized, {} kept, transformer {:.2} GB in {} shard(s), {:.1} s",
            output.display(),
            q.describe(),
            w.quantized,
            w.kept,
            w.bytes as f64 / 1e9,
            w.shards,
            start.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    if let Some(Command::Edit(e)) = &args.command {
        return edit(e, &chosen);
    }
    match args.bench_matmul {
        Some(n) => bench_matmul(&chosen, args, n),
        None => generate(args, &chosen),
    }
}

/// `qwen-run edit`: the images read, the edit's latents, decoded, the PNG written.
fn edit(args: &EditArgs, chosen: &ChosenDevice) -> Result<()> {
    use qwen::pipeline::{detect_config, EditRequest, PromptPositions, VARIANTS};
    let (steps, cfg) = args.schedule.resolve(&args.weights.lora)?;
    check_count(args.count)?;
    let model = qwen::model_dir::resolve(&args.model)?;
    let mut inputs: Vec<&Path> = vec![model.as_path()];
    inputs.extend(args.images.iter().map(PathBuf::as_path));
    let outputs = checked_outputs(&args.output, args.count, &inputs, SystemTime::now())?;
    let images = args
        .images
        .iter()
        .map(qwen_runtime::RgbImage::read_png)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let last = images.last().expect("clap requires an image");
    let res = match args.res {
        Some(r) => r.rounded(),
        None => {
            // the reference's size, then the nearest one generated for this config
            let (w, h) = qwen::edit::output_size((last.width as usize, last.height as usize));
            let config = detect_config(&model)?;
            let score = |r: &Resolution| {
                let aspect = ((r.width * h) as f64 / (r.height * w) as f64).ln().abs();
                let area = ((r.width * r.height) as f64 / (w * h) as f64).ln().abs();
                aspect * 10.0 + area
            };
            let best = VARIANTS
                .iter()
                .filter(|v| v.config() == config && v.sequence_parts() == 1)
                .map(|v| v.resolution())
                .min_by(|a, b| score(a).total_cmp(&score(b)))
                .ok_or_else(|| anyhow::anyhow!("no generated size for this model's config"))?;
            if (best.width, best.height) != (w, h) {
                println!("notice: the reference would make {w}x{h}; the nearest generated size is {best}");
            }
            best
        }
    };
    let dtype = args.dtype.unwrap_or_else(|| DtypeArg::default_for(chosen));
    let start = Instant::now();
    let pipeline = Pipeline::open(
        &model,
        &Options {
            resolution: Some(res),
            dtype: dtype.mlx(),
            memory_limit: memory_limit_bytes(args.weights.memory_limit)?,
            quantize: args.weights.quantize.clone(),
            loras: args.weights.lora.clone(),
            // without a negative pass, the one-text edit transformer where the size has one
            negative_pass: cfg > 1.0,
            lightning: args.schedule.lightning.is_some(),
            edit: true,
            ..Options::default()
        },
    )?;
    println!(
        "model: {} (edit, module {})",
        model.display(),
        pipeline.variant().name()
    );
    println!("resolution: {res} (W×H)");
    print_load(&pipeline, start.elapsed().as_secs_f64());
    let start = Instant::now();
    let request = EditRequest {
        request: Request {
            negative_prompt: Some(args.negative_prompt.clone()),
            steps,
            cfg_scale: cfg,
            seed: args.seed,
            ..Request::new(args.prompt.clone())
        },
        images,
        positions: match args.positions {
            PositionsArg::Reference => PromptPositions::OneDimensional,
            PositionsArg::Multimodal => PromptPositions::Multimodal,
        },
    };
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("edit {bar:30} {pos}/{len} steps [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    signals::install().context("installing the SIGINT/SIGTERM handlers")?;
    let latents = pipeline.edit_images_with(&request, args.count, &mut |event| match event {
        Event::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
        Event::Step { done, total } => step_done(&bar, done, total),
    });
    bar.finish_and_clear();
    let images = latents?
        .iter()
        .map(|l| Ok(qwen_runtime::RgbImage::from_array(&pipeline.decode(l)?)?))
        .collect::<Result<Vec<_>>>()?;
    println!("edit: {:.2} s", start.elapsed().as_secs_f64());
    if let Ok(peak) = mlx_rs::memory::peak_memory() {
        println!("peak memory: {:.2} GB", peak as f64 / 1e9);
    }
    let images: Vec<&qwen_runtime::RgbImage> = images.iter().collect();
    write_images(&pipeline, &request.request, &images, &outputs)
}

/// A denoising step done: the bar moves; after SIGINT or SIGTERM the run ends here (the
/// pipeline's callback cannot stop its loop; no file is open during the steps).
fn step_done(bar: &ProgressBar, done: usize, total: usize) {
    bar.set_length(total as u64);
    bar.set_position(done as u64);
    if let Some((signal, code)) = signals::received() {
        bar.finish_and_clear();
        let when = format!("after step {done} of {total}");
        eprintln!("error: {}", Interrupted { signal, code, when });
        std::process::exit(code.into());
    }
}

/// `--memory-limit` in bytes.
fn memory_limit_bytes(gb: Option<f64>) -> Result<Option<usize>> {
    gb.map(|gb| {
        if gb.is_finite() && gb > 0.0 {
            Ok((gb * 1e9) as usize)
        } else {
            Err(anyhow::anyhow!(
                "--memory-limit {gb}: give a positive number of GB"
            ))
        }
    })
    .transpose()
}

fn generate(args: &Args, chosen: &ChosenDevice) -> Result<()> {
    let Some(prompt) = args.prompt.clone() else {
        bail!("--prompt is required");
    };
    let (steps, cfg) = args.schedule.resolve(&args.weights.lora)?;
    let rank = ranks::this_rank();
    if args.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    let started = SystemTime::now();
    signals::install().context("installing the SIGINT/SIGTERM handlers")?;
    let dtype = args.dtype.unwrap_or_else(|| DtypeArg::default_for(chosen));
    let model = match &args.model {
        Some(m) => qwen::model_dir::resolve(m)?,
        None => std::fs::canonicalize(DEMO_MODEL).unwrap_or_else(|_| PathBuf::from(DEMO_MODEL)),
    };
    check_count(args.count)?;
    if args.count > 1 && args.latents_file.is_some() {
        bail!("--latents-file gives the initial latents of one image: not with --count");
    }
    let mut inputs = vec![model.as_path()];
    inputs.extend(args.latents_file.as_deref());
    let outputs = checked_outputs(&args.output, args.count, &inputs, started)?;
    // the model, the latents and the outputs are checked above before any rank starts (each
    // rank checks them again)
    // how the GPUs share the image (the same answer in every rank)
    let plan = match args.gpus {
        1 => None,
        n => {
            let config = qwen::pipeline::detect_config(&model)?;
            let resolution = args
                .res
                .map(|r| r.rounded())
                .unwrap_or_else(|| config.default_resolution());
            Some(qwen::pipeline::plan_ranks(
                resolution,
                config,
                n,
                cfg > 1.0,
                args.module.as_deref(),
            )?)
        }
    };
    if args.gpus > 1 && rank.is_none() {
        if args.count > 1 {
            bail!("--gpus {} makes one image: not with --count", args.gpus);
        }
        return ranks::launch(args.gpus, chosen);
    }

    if let Some(r) = args.res {
        if r.rounded() != r {
            println!(
                "notice: {r} rounded down to {} (multiples of 16, as diffusers does)",
                r.rounded()
            );
        }
    }
    let start = Instant::now();
    let options = Options {
        resolution: args.res,
        dtype: dtype.mlx(),
        module: args.module.clone(),
        memory_limit: memory_limit_bytes(args.weights.memory_limit)?,
        quantize: match (&args.weights.quantize, &args.quantize_layers) {
            (Some(q), Some(o)) => Some(
                q.clone()
                    .with_overrides(o)
                    .map_err(|e| anyhow::anyhow!("--quantize-layers: {e}"))?,
            ),
            (q, _) => q.clone(),
        },
        loras: args.weights.lora.clone(),
        lora_on_quantized: if args.lora_fuse {
            qwen_runtime::lora::OnQuantized::Fuse
        } else {
            qwen_runtime::lora::OnQuantized::Separate
        },
        lightning: args.schedule.lightning.is_some(),
        // a rank of split CFG halves runs one of them: one text per call
        negative_pass: cfg > 1.0 && !plan.is_some_and(|p| p.halves),
        sequence_parts: plan.map_or(1, |p| p.parts),
        vae_tiling: args.vae_tiling.mode(),
        edit: false,
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
    if let (Some(0), Some(p)) = (rank, plan) {
        let split = match (p.halves, p.parts) {
            (true, 1) => "the two CFG halves, one GPU each".to_string(),
            (true, n) => format!("the two CFG halves, each over {n} GPUs sharing its image tokens"),
            (false, n) => format!("the image tokens over {n} GPUs"),
        };
        println!("split: {split}");
        if p.joint_fallback {
            eprintln!(
                "warning: --gpus {}: no module of one text per call is generated at {}x{}: each GPU runs both CFG halves of its text (no faster than one GPU)",
                args.gpus, r.width, r.height
            );
        }
    }
    print_load(&pipeline, start.elapsed().as_secs_f64());
    stop_if_signalled(|| "while loading".into())?;
    ranks::beat("loaded");

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
        steps,
        cfg_scale: cfg,
        seed: args.seed,
        latents,
    };

    // the other ranks of --gpus N run along rank 0: one bar
    let bar = if rank.is_some_and(|r| r > 0) {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("denoise {bar:30} {pos}/{len} steps [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let group = match rank {
        Some(_) => {
            let g = ranks::join(chosen, args.gpus)?;
            pipeline.connect_ranks(&g)?;
            ranks::beat("connected");
            Some(g)
        }
        None => None,
    };
    // the other ranks encode the same prompts: rank 0 says their warnings
    let warns = rank.is_none_or(|r| r == 0);
    let on_event = &mut |event: Event| match event {
        Event::Warning(w) if warns => bar.suspend(|| eprintln!("warning: {w}")),
        Event::Warning(_) => {}
        Event::Step { done, total } => {
            ranks::beat(&format!("step {done} of {total}"));
            step_done(&bar, done, total)
        }
    };
    let result = match &group {
        Some(g) => pipeline
            .generate_parallel(&request, g, on_event)
            .map(|one| one.into_iter().collect::<Vec<_>>()),
        None => pipeline.generate_images(&request, args.count, on_event),
    };
    bar.finish_and_clear();
    let generations = result?;
    if generations.is_empty() {
        // a rank other than 0: its share is done; rank 0 writes the image
        return Ok(());
    }
    let t = generations[0].timings;
    println!(
        "encode: {:.2} s, denoise: {:.2} s ({:.3} s/step), decode: {:.2} s",
        t.encode, t.denoise, t.step, t.decode
    );
    // MLX's largest memory in use in this process (weights, activations; not its cache)
    if let Ok(peak) = mlx_rs::memory::peak_memory() {
        println!("peak memory: {:.2} GB", peak as f64 / 1e9);
    }

    let images: Vec<&qwen_runtime::RgbImage> = generations.iter().map(|g| &g.image).collect();
    write_images(&pipeline, &request, &images, &outputs)?;
    // The process ends here: the system takes back the loaded networks (tens of GB of
    // MLX buffers) at once, faster than freeing them buffer by buffer.
    std::mem::forget(generations);
    std::mem::forget(pipeline);
    Ok(())
}

/// The `load:` line: `load` seconds to open `pipeline`, and where they went.
fn print_load(pipeline: &Pipeline, load: f64) {
    let o = pipeline.open_timings();
    match o.kernels {
        Some(k) if o.kernels_beside => println!(
            "load: {load:.2} s (weights {:.2} s{}; fused kernels compiled beside them in {k:.2} s)",
            o.weights,
            o.first_uses
                .map(|f| format!(" and the first uses {f:.2} s"))
                .unwrap_or_default()
        ),
        Some(k) => println!(
            "load: {load:.2} s (fused kernels compiled in {k:.2} s, then weights {:.2} s)",
            o.weights
        ),
        None => println!("load: {load:.2} s"),
    }
}

/// `--count` within 1..=[`MAX_COUNT`].
fn check_count(count: usize) -> Result<()> {
    if !(1..=MAX_COUNT).contains(&count) {
        bail!("--count must be between 1 and {MAX_COUNT}, got {count}");
    }
    Ok(())
}

/// The `count` files `output` names (numbered when several), each checked writable and not
/// one of `inputs`, with the temporary files a killed run left there before `started`
/// removed (and said). The path as given is checked too: a folder, `.` or a name ending in
/// `/` is refused as it is for one image, not numbered into a sibling.
fn checked_outputs(
    output: &Path,
    count: usize,
    inputs: &[&Path],
    started: SystemTime,
) -> Result<Vec<PathBuf>> {
    check_output(output, inputs)?;
    let outputs = numbered(output, count);
    for output in &outputs {
        check_output(output, inputs)?;
        for stale in remove_stale_temp_files(output, started) {
            println!("removed {} (left by a killed run)", stale.display());
        }
    }
    Ok(outputs)
}

/// Writes image i (seed `request.seed + i`, in its PNG metadata) to `outputs[i]`, each
/// unless SIGINT or SIGTERM came (then the run ends as interrupted, the file as it was).
fn write_images(
    pipeline: &Pipeline,
    request: &Request,
    images: &[&qwen_runtime::RgbImage],
    outputs: &[PathBuf],
) -> Result<()> {
    for (i, (image, output)) in images.iter().zip(outputs).enumerate() {
        let seeded = Request {
            seed: request.seed.wrapping_add(i as u64),
            ..request.clone()
        };
        let meta = pipeline.metadata(&seeded);
        let text: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        stop_if_signalled(|| "before writing".into())?;
        let written = image
            .write_png_unless(output, &text, &|| signals::received().is_some())
            .with_context(|| format!("writing {}", output.display()))?;
        if !written {
            stop_if_signalled(|| "while writing".into())?;
        }
        if images.len() > 1 {
            println!("wrote {} (seed {})", output.display(), seeded.seed);
        } else {
            println!("wrote {}", output.display());
        }
    }
    Ok(())
}

/// `--output` for `count` images: itself for one, else `NAME-1.EXT` … `NAME-count.EXT`
/// beside it (the name's bytes kept as given).
fn numbered(output: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![output.to_path_buf()];
    }
    let stem = output.file_stem().unwrap_or_default();
    (1..=count)
        .map(|i| {
            let mut name = stem.to_os_string();
            name.push(format!("-{i}"));
            if let Some(ext) = output.extension() {
                name.push(".");
                name.push(ext);
            }
            output.with_file_name(name)
        })
        .collect()
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

/// `--gpus N`: one process per GPU, started by the one the user runs.
mod ranks {
    use std::net::TcpListener;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, SystemTime};

    use anyhow::{bail, Context, Result};
    use qwen_runtime::device::{self, Backend, ChosenDevice};
    use qwen_runtime::distributed::Group;

    /// The rank this process is (set by [`launch`] in its children).
    pub fn this_rank() -> Option<usize> {
        std::env::var_os("MLX_WORLD_SIZE")?;
        std::env::var("QWEN_RANK").ok()?.parse().ok()
    }

    /// Whether ranks may run on the CPU (MLX's TCP ring between them): for tests only.
    fn on_cpu_allowed() -> bool {
        std::env::var("QWEN_RANKS_ON_CPU").is_ok_and(|v| v == "1")
    }

    /// Starts `n` copies of this process, rank `r` on GPU `r`, and waits for them: the first
    /// that fails ends the others, and its failure is this one's.
    pub fn launch(n: usize, chosen: &ChosenDevice) -> Result<()> {
        let timeout = rank_timeout()?;
        let gpu = chosen.backend == Backend::Gpu;
        if gpu {
            let have = device::count(Backend::Gpu);
            if have < n {
                bail!(
                    "--gpus {n}: MLX sees {have} GPU(s) here (CUDA_VISIBLE_DEVICES may hide some)"
                );
            }
        } else if !on_cpu_allowed() {
            bail!("--gpus {n}: no GPU here (the loaded libmlx runs on the CPU)");
        }
        let backend = if gpu { "nccl" } else { "ring" };
        if !Group::is_available(backend) {
            bail!("--gpus {n}: the loaded libmlx has no {backend} backend");
        }
        let exe = std::env::current_exe().context("finding this program")?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let port = |what: &str| -> Result<u16> {
            Ok(TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .with_context(|| format!("finding a free port for {what}"))?
                .port())
        };
        // the GPUs the user gave (CUDA_VISIBLE_DEVICES), one per rank
        let visible: Vec<String> = std::env::var("CUDA_VISIBLE_DEVICES")
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_else(|_| (0..n).map(|i| i.to_string()).collect());
        let hostfile: Option<PathBuf> = if gpu {
            None
        } else {
            let ports: Vec<u16> = (0..n).map(|_| port("the ring")).collect::<Result<_>>()?;
            let hosts: Vec<String> = ports
                .iter()
                .map(|p| format!("[\"127.0.0.1:{p}\"]"))
                .collect();
            let f =
                std::env::temp_dir().join(format!("qwen-run-ranks-{}.json", std::process::id()));
            std::fs::write(&f, format!("[{}]", hosts.join(", ")))
                .context("writing the ranks' host file")?;
            Some(f)
        };
        let nccl_port = port("NCCL")?;
        let beats = std::env::temp_dir().join(format!("qwen-run-beats-{}", std::process::id()));
        std::fs::create_dir_all(&beats).context("making the ranks' progress folder")?;
        let mut ranks = Ranks {
            children: vec![],
            hostfile,
            beats: beats.clone(),
        };
        for rank in 0..n {
            let mut c = Command::new(&exe);
            c.args(&args)
                .env("QWEN_RANK", rank.to_string())
                .env("MLX_RANK", rank.to_string())
                .env("MLX_WORLD_SIZE", n.to_string())
                .env(BEAT_ENV, beats.join(format!("rank-{rank}")));
            if gpu {
                c.env("CUDA_VISIBLE_DEVICES", device_of(&visible, rank, n)?)
                    .env("NCCL_HOST_IP", "127.0.0.1")
                    .env("NCCL_PORT", nccl_port.to_string());
            }
            if let Some(f) = &ranks.hostfile {
                c.env("MLX_HOSTFILE", f);
            }
            if rank > 0 {
                c.stdout(Stdio::null());
            }
            ranks
                .children
                .push(c.spawn().with_context(|| format!("starting rank {rank}"))?);
        }
        let pids: Vec<String> = ranks.children.iter().map(|c| c.id().to_string()).collect();
        eprintln!("ranks: {n} (pids {})", pids.join(", "));
        wait(&mut ranks.children, &beats, timeout)
    }

    /// Where a rank says how far it got ([`beat`]): a file the launcher reads.
    const BEAT_ENV: &str = "QWEN_RANK_BEAT";

    /// Seconds a rank may go without progress (loading, connecting, a step) before the
    /// launcher takes it for hung and stops every rank: `QWEN_RANK_TIMEOUT`, 600 by default
    /// (a cold load of the 58 GB checkpoint takes tens of seconds, a step at most seconds).
    fn rank_timeout() -> Result<Duration> {
        match std::env::var("QWEN_RANK_TIMEOUT") {
            Err(_) => Ok(Duration::from_secs(600)),
            Ok(v) => match v.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
                _ => bail!("QWEN_RANK_TIMEOUT must be a number of seconds above 0, got {v:?}"),
            },
        }
    }

    /// In a rank (started by [`launch`]): says how far it got (`what`: "loaded", "step 3 of
    /// 50", …) to the launcher, which takes a rank that says nothing for too long for hung.
    /// Elsewhere nothing.
    pub fn beat(what: &str) {
        if let Some(f) = std::env::var_os(BEAT_ENV) {
            // best effort: a beat that cannot be written shows as no progress, with a message
            let _ = std::fs::write(f, what);
        }
    }

    /// Each rank's last word and how long ago it came (the files [`beat`] writes; before the
    /// first, since `started`).
    fn last_beats(beats: &Path, n: usize, started: SystemTime) -> Vec<(String, Duration)> {
        (0..n)
            .map(|rank| {
                let f = beats.join(format!("rank-{rank}"));
                let when = std::fs::metadata(&f)
                    .and_then(|m| m.modified())
                    .unwrap_or(started);
                let what = std::fs::read_to_string(&f).unwrap_or_else(|_| "starting".into());
                (what, when.elapsed().unwrap_or_default())
            })
            .collect()
    }

    /// `CUDA_VISIBLE_DEVICES` of rank `rank`: the `rank`-th of the GPUs given.
    fn device_of(visible: &[String], rank: usize, n: usize) -> Result<String> {
        match visible.get(rank) {
            Some(d) => Ok(d.clone()),
            None => bail!("--gpus {n}: CUDA_VISIBLE_DEVICES names fewer GPUs"),
        }
    }

    /// The started ranks and their host file: whatever ends `launch` (an error, a panic)
    /// kills the ranks still running and removes the file.
    struct Ranks {
        children: Vec<Child>,
        hostfile: Option<PathBuf>,
        /// the ranks' progress files ([`beat`])
        beats: PathBuf,
    }

    impl Drop for Ranks {
        fn drop(&mut self) {
            stop(&mut self.children);
            if let Some(f) = &self.hostfile {
                let _ = std::fs::remove_file(f);
            }
            let _ = std::fs::remove_dir_all(&self.beats);
        }
    }

    /// Waits for every rank; the first to fail has the others killed (a rank whose peer is
    /// gone would wait in the exchange forever), and so does a rank that makes no progress
    /// for `timeout` (hung: the others soon wait for it in a collective).
    fn wait(children: &mut [Child], beats: &Path, timeout: Duration) -> Result<()> {
        let started = SystemTime::now();
        let mut done = vec![false; children.len()];
        let interrupted = |children: &mut [Child]| -> Option<anyhow::Error> {
            let (signal, code) = super::signals::received()?;
            stop(children);
            Some(
                super::Interrupted {
                    signal,
                    code,
                    when: "while the ranks ran".into(),
                }
                .into(),
            )
        };
        loop {
            // a signal to this process (Ctrl-C reaches the ranks too): they stop at once, and
            // the run ends as an interrupted one-process run does
            if let Some(e) = interrupted(children) {
                return Err(e);
            }
            for (rank, c) in children.iter_mut().enumerate() {
                if done[rank] {
                    continue;
                }
                if let Some(status) = c.try_wait().context("waiting for a rank")? {
                    done[rank] = true;
                    if !status.success() {
                        if let Some(e) = interrupted(children) {
                            return Err(e);
                        }
                        stop(children);
                        bail!(
                            "rank {rank} of {} ended ({status}): the others were stopped",
                            children.len()
                        );
                    }
                }
            }
            if done.iter().all(|d| *d) {
                return Ok(());
            }
            let last = last_beats(beats, children.len(), started);
            let stalled = last
                .iter()
                .enumerate()
                .filter(|(rank, (_, ago))| !done[*rank] && *ago > timeout)
                .max_by_key(|(_, (_, ago))| *ago);
            if let Some((rank, (what, ago))) = stalled {
                stop(children);
                let all: Vec<String> = last
                    .iter()
                    .enumerate()
                    .map(|(r, (w, a))| format!("rank {r}: {w}, {:.0} s ago", a.as_secs_f64()))
                    .collect();
                bail!(
                    "rank {rank} of {} made no progress for {:.0} s (hung?; it was at: {what}): the ranks were stopped ({}; QWEN_RANK_TIMEOUT sets the limit, now {} s)",
                    children.len(),
                    ago.as_secs_f64(),
                    all.join("; "),
                    timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(children: &mut [Child]) {
        for c in children.iter_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// Joins the group [`launch`] set up: NCCL between GPUs, MLX's TCP ring on the CPU.
    pub fn join(chosen: &ChosenDevice, n: usize) -> Result<Group> {
        let backend = if chosen.backend == Backend::Gpu {
            "nccl"
        } else {
            "ring"
        };
        let g =
            Group::init(backend, true).with_context(|| format!("joining the ranks ({backend})"))?;
        if g.size() as usize != n {
            bail!("the group has {} ranks, not {n}", g.size());
        }
        Ok(g)
    }
}
