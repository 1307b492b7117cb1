//! `qwen-bench`: measurements of the Qwen-Image pipeline, for `benches/device.sh`.
//!
//! - `warm`: opens the pipeline once, makes one warm-up image (not recorded), then `--images`
//!   images in the same process, and appends one JSON line per measurement to `--out` (the
//!   schema of `benches/README.md`: `load`, then per image `image`, `step`, `encode`,
//!   `denoise`, `decode`), printing each line too.
//! - `edit`: as `warm`, for edits (`Pipeline::edit_latents_with` and the decode) of the given
//!   images: rows `load`, then per timed edit `edit` and `step`.
//! - `dump`: from given packed initial latents, writes the tensors `diffusers_qwen_e2e.py`
//!   writes (`prompt_emb`, `negative_emb`, `latents_N` for each N, `decoded` of the last N),
//!   so that `compare_tensors.py` can judge them.
//!
//! Everything goes through the pipeline's public API (`Pipeline::open`, `generate` with its
//! step events and timings, `encode`, `denoise`, `decode`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mlx_rs::{memory, Array, Dtype};
use qwen::cli::{DeviceArg, DtypeArg};
use qwen::pipeline::{Embeddings, Event, Options, Pipeline, Request, Resolution};
use qwen_runtime::Checkpoint;
use serde_json::{json, Map, Value};

#[derive(Debug, Parser)]
#[command(
    name = "qwen-bench",
    about = "Timings and fidelity dumps of the Qwen-Image pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One process, one load, a warm-up image, then N timed images (JSON lines).
    Warm(WarmArgs),
    /// Prompt embeddings, latents after N steps from given latents, decoded image (safetensors).
    Dump(DumpArgs),
    /// One process, one load, a warm-up edit, then N timed edits of the same images (JSON lines).
    Edit(EditArgs),
    /// How fast a file's tensors reach the GPU, several ways (JSON lines on stdout).
    LoadProbe(LoadProbeArgs),
}

#[derive(Debug, Args)]
struct LoadProbeArgs {
    /// A safetensors file (written, of bf16 `[3072, 12288]` tensors, when it does not exist).
    #[arg(long)]
    file: PathBuf,

    /// Gigabytes to write when the file does not exist.
    #[arg(long, default_value_t = 12.0)]
    gb: f64,

    /// Ways, in order: `serial`, `staged:THREADS`, `staged-copy:THREADS` (then a GPU copy of each).
    #[arg(long, value_delimiter = ',', default_value = "serial,staged:16")]
    ways: Vec<String>,

    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

/// What both subcommands take.
#[derive(Debug, Args)]
struct Common {
    /// Model folder in the diffusers layout.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,

    /// Output size: 1024 (square) or WxH, e.g. 96x64; default: the model's default.
    #[arg(long, value_name = "RES")]
    res: Option<Resolution>,

    /// True CFG scale (1 or less: no negative pass).
    #[arg(long, default_value_t = 4.0)]
    cfg: f32,

    /// What to draw.
    #[arg(long)]
    prompt: String,

    /// Negative prompt for true CFG.
    #[arg(long, default_value = " ")]
    negative: String,

    /// Device to run on: the GPU when the loaded libmlx has one, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,

    /// Force a generated module by name (e.g. res96x64_tiny).
    #[arg(long)]
    module: Option<String>,

    /// GPU memory the pipeline may use, in GB (as `qwen-run --memory-limit`).
    #[arg(long, value_name = "GB")]
    memory_limit: Option<f64>,

    /// Quantize the transformer's linear layers to 8 or 4 bits (as `qwen-run --quantize`).
    #[arg(long, value_name = "BITS")]
    quantize: Option<qwen::quantize::Quantization>,

    /// Bits per layer kind (as `qwen-run --quantize-layers`).
    #[arg(long, value_name = "KIND=BITS,…", requires = "quantize")]
    quantize_layers: Option<String>,

    /// A LoRA fused at load, repeatable (as `qwen-run --lora`; rows get `lora`).
    #[arg(long, value_name = "FILE[:SCALE]", value_parser = qwen::cli::parse_lora)]
    lora: Vec<(PathBuf, f32)>,

    /// The Lightning schedule (as `qwen-run --lightning`; give `--steps` and `--cfg 1` too;
    /// rows get `lightning`).
    #[arg(long)]
    lightning: bool,
}

/// What `warm` and `edit` both take: the runs' dtype and steps, the seeds, where rows go.
#[derive(Debug, Args)]
struct Timed {
    /// Compute dtype (weights are converted at load).
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    dtype: DtypeArg,

    /// Denoising steps per run.
    #[arg(long, default_value_t = 50)]
    steps: usize,

    /// Seed of the first timed run (run i uses seed + i, or seed + i·count; warm-ups
    /// seed + 1000 + i).
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// JSON lines file the rows are appended to.
    #[arg(long, value_name = "FILE.jsonl")]
    out: PathBuf,

    /// The `gpu` field of every row (e.g. "NVIDIA H200").
    #[arg(long, default_value = "unknown")]
    gpu: String,
}

impl Common {
    /// The request of one timed run: the prompt, the negative prompt, the CFG scale.
    fn request(&self, steps: usize, seed: u64) -> Request {
        Request {
            prompt: self.prompt.clone(),
            negative_prompt: Some(self.negative.clone()),
            steps,
            cfg_scale: self.cfg,
            seed,
            latents: None,
        }
    }
}

#[derive(Debug, Args)]
struct WarmArgs {
    #[command(flatten)]
    common: Common,

    #[command(flatten)]
    timed: Timed,

    /// Timed images (after the warm-up ones).
    #[arg(long, default_value_t = 3)]
    images: usize,

    /// Images per generation (`Pipeline::generate_images`: one batch through a module of one
    /// text per call); rows get `count` and `images_per_s`.
    #[arg(long, default_value_t = 1)]
    count: usize,

    /// Untimed warm-up images before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

#[derive(Debug, Args)]
struct EditArgs {
    #[command(flatten)]
    common: Common,

    /// An input image (PNG), in the prompt's order; repeat for several.
    #[arg(long = "image", value_name = "PNG", required = true)]
    images: Vec<PathBuf>,

    #[command(flatten)]
    timed: Timed,

    /// Timed edits (after the warm-up one).
    #[arg(long, default_value_t = 3)]
    edits: usize,
}

#[derive(Debug, Args)]
struct DumpArgs {
    #[command(flatten)]
    common: Common,

    /// Compute dtype (weights are converted at load).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,

    /// Packed initial latents [1, L_img, 64] (safetensors, as make_latents.py writes).
    #[arg(long, value_name = "LAT.safetensors")]
    latents: PathBuf,

    /// The tensor name in --latents.
    #[arg(long, default_value = "latents")]
    latents_key: String,

    /// Step counts to run from the initial latents, each a schedule of its own: `2` or `2,4`.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    steps_list: Vec<usize>,

    /// Output safetensors file.
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Warm(args) => warm(args),
        Command::Dump(args) => dump(args),
        Command::Edit(args) => edit(args),
        Command::LoadProbe(args) => load_probe(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Picks the device (stderr says which) and opens the pipeline.
fn open(common: &Common, dtype: DtypeArg) -> Result<Pipeline> {
    open_for(common, dtype, false)
}

/// [`open`], for edits (`Options::edit`) or generations.
fn open_for(common: &Common, dtype: DtypeArg, edit: bool) -> Result<Pipeline> {
    let chosen = common.device.choose()?;
    chosen.set_default();
    eprintln!("device: {}", chosen.name);
    let options = Options {
        resolution: common.res,
        dtype: dtype.mlx(),
        module: common.module.clone(),
        memory_limit: common.memory_limit.map(|gb| (gb * 1e9) as usize),
        quantize: quantization(common)?,
        loras: common.lora.clone(),
        lightning: common.lightning,
        negative_pass: common.cfg > 1.0,
        edit,
        ..Options::default()
    };
    let pipeline = Pipeline::open(qwen::model_dir::resolve(&common.model)?, &options)
        .with_context(|| format!("opening {}", common.model.display()))?;
    eprintln!(
        "model: {} (module {}, {})",
        common.model.display(),
        pipeline.variant().name(),
        dtype.name()
    );
    Ok(pipeline)
}

/// `file:scale` of each `--lora`, file names only.
fn lora_names(loras: &[(PathBuf, f32)]) -> Value {
    loras
        .iter()
        .map(|(f, scale)| {
            let name = f.file_name().map_or(f.display().to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
            Value::from(format!("{name}:{scale}"))
        })
        .collect()
}

/// `--quantize` with `--quantize-layers` applied.
fn quantization(c: &Common) -> Result<Option<qwen::quantize::Quantization>> {
    Ok(match (&c.quantize, &c.quantize_layers) {
        (Some(q), Some(o)) => Some(
            q.clone()
                .with_overrides(o)
                .map_err(|e| anyhow::anyhow!("--quantize-layers: {e}"))?,
        ),
        (q, _) => q.clone(),
    })
}

/// MLX's peak memory since the last reset, in GB.
fn peak_gb() -> Result<f64> {
    Ok(memory::peak_memory().context("reading MLX's peak memory")? as f64 / 1e9)
}

/// The process's resident-set high-water mark (`VmHWM`), in GB; `None` where /proc has none.
fn rss_hwm_gb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e9)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    Some(xs[xs.len() / 2])
}

/// Appends rows to a JSON lines file and prints them, keys in the order given (the base
/// fields, `what`, `ms`, `peak_gb`, then the extra ones).
struct Rows {
    base: Vec<(&'static str, Value)>,
    file: std::fs::File,
}

impl Rows {
    /// The `load` row: the open's time, the module, the host memory, where the time went.
    fn push_load(&mut self, pipeline: &Pipeline, load_ms: f64) -> Result<()> {
        let opened = pipeline.open_timings();
        self.push(
            "load",
            load_ms,
            peak_gb()?,
            &[
                ("module", pipeline.variant().name().into()),
                ("rss_gb", rss_hwm_gb().map(|g| round(g, 2)).into()),
                ("weights_ms", round(opened.weights * 1000.0, 1).into()),
                (
                    "kernels_ms",
                    opened.kernels.map(|k| round(k * 1000.0, 1)).into(),
                ),
                ("kernels_beside", opened.kernels_beside.into()),
                (
                    "first_uses_ms",
                    opened.first_uses.map(|f| round(f * 1000.0, 1)).into(),
                ),
            ],
        )
    }

    fn open(path: &Path, base: Vec<(&'static str, Value)>) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { base, file })
    }

    fn push(
        &mut self,
        what: &str,
        ms: f64,
        peak_gb: f64,
        extra: &[(&'static str, Value)],
    ) -> Result<()> {
        let fields = [
            ("what", Value::from(what)),
            ("ms", round(ms, 2).into()),
            ("peak_gb", round(peak_gb, 2).into()),
        ];
        let line = self
            .base
            .iter()
            .chain(&fields)
            .chain(extra)
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect::<Vec<_>>()
            .join(",");
        let line = format!("{{{line}}}");
        println!("{line}");
        writeln!(self.file, "{line}").context("writing a row")?;
        self.file.flush().context("writing a row")?;
        Ok(())
    }
}

fn warm(args: &WarmArgs) -> Result<()> {
    let c = &args.common;
    if args.timed.steps == 0 {
        bail!("--steps must be at least 1");
    }
    memory::reset_peak_memory().context("resetting MLX's peak memory")?;
    let start = Instant::now();
    let pipeline = open(c, args.timed.dtype)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut rows = Rows::open(&args.timed.out, base_fields(c, &pipeline, &args.timed)?)?;
    rows.push_load(&pipeline, load_ms)?;

    let request = |seed: u64| c.request(args.timed.steps, seed);
    for i in 0..args.warmup {
        let start = Instant::now();
        pipeline.generate(&request(args.timed.seed + 1000 + i as u64), &mut |_| {})?;
        eprintln!(
            "warm-up image {}: {:.2} s (not recorded)",
            i + 1,
            start.elapsed().as_secs_f64()
        );
    }
    for i in 0..args.images {
        memory::reset_peak_memory().context("resetting MLX's peak memory")?;
        let mut stamps = Vec::with_capacity(args.timed.steps);
        let start = Instant::now();
        let mut all = pipeline.generate_images(
            &request(args.timed.seed + (i * args.count) as u64),
            args.count,
            &mut |event| match event {
                Event::Step { .. } => stamps.push(Instant::now()),
                Event::Warning(w) => eprintln!("warning: {w}"),
            },
        )?;
        let image_ms = start.elapsed().as_secs_f64() * 1e3;
        let g = all.swap_remove(0);
        let peak = peak_gb()?;
        let t = g.timings;
        let steps: Vec<f64> = stamps
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect();
        let mean_step = t.denoise * 1e3 / args.timed.steps as f64;
        let run = ("run", Value::from(i));
        let rss = ("rss_gb", rss_hwm_gb().map(|g| round(g, 2)).into());
        let stages: Map<String, Value> = g
            .peaks
            .iter()
            .map(|(stage, bytes)| (stage.to_string(), round(*bytes as f64 / 1e9, 2).into()))
            .collect();
        let stages = ("stage_peaks_gb", Value::Object(stages));
        let mut extra = vec![run.clone(), rss, stages];
        if args.count > 1 {
            extra.push(("count", args.count.into()));
            extra.push((
                "images_per_s",
                round(args.count as f64 / (image_ms / 1e3), 3).into(),
            ));
        }
        rows.push("image", image_ms, peak, &extra)?;
        let mean = ("mean_ms", round(mean_step, 2).into());
        let step = median(steps).unwrap_or(mean_step);
        rows.push("step", step, peak, &[run.clone(), mean])?;
        for (what, s) in [
            ("encode", t.encode),
            ("denoise", t.denoise),
            ("decode", t.decode),
        ] {
            rows.push(what, s * 1e3, peak, std::slice::from_ref(&run))?;
        }
    }
    Ok(())
}

/// The fields every row of a measurement starts with.
fn base_fields(c: &Common, pipeline: &Pipeline, t: &Timed) -> Result<Vec<(&'static str, Value)>> {
    let r = pipeline.resolution();
    Ok([
        ("system", "qwen-aot".into()),
        ("gpu", t.gpu.as_str().into()),
        ("width", r.width.into()),
        ("height", r.height.into()),
        ("steps", t.steps.into()),
        ("cfg", f64::from(c.cfg).into()),
        ("dtype", t.dtype.name().into()),
        (
            "memory_limit_gb",
            c.memory_limit.map(|g| round(g, 2)).into(),
        ),
        ("quantize", quantization(c)?.map(|q| q.describe()).into()),
    ]
    .into_iter()
    .chain((!c.lora.is_empty()).then(|| ("lora", lora_names(&c.lora))))
    .chain(c.lightning.then(|| ("lightning", true.into())))
    .collect())
}

/// `edit`: rows `load`, then per timed edit `edit` (the images read to the decoded image:
/// the vision and VAE paths, the prompts, every step, the decode), `step` (median of its
/// steps, `mean_ms` beside it), with the field `edit` = the input images' count.
fn edit(args: &EditArgs) -> Result<()> {
    use qwen::pipeline::{EditRequest, PromptPositions};
    let c = &args.common;
    if args.timed.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let images = args
        .images
        .iter()
        .map(qwen_runtime::RgbImage::read_png)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    memory::reset_peak_memory().context("resetting MLX's peak memory")?;
    let start = Instant::now();
    let pipeline = open_for(c, args.timed.dtype, true)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut base = base_fields(c, &pipeline, &args.timed)?;
    base.push(("edit", images.len().into()));
    let mut rows = Rows::open(&args.timed.out, base)?;
    rows.push_load(&pipeline, load_ms)?;
    let request = |seed: u64| EditRequest {
        request: c.request(args.timed.steps, seed),
        images: images.clone(),
        positions: PromptPositions::OneDimensional,
    };
    let run = |seed: u64, stamps: &mut Vec<Instant>| -> Result<()> {
        let latents = pipeline.edit_latents_with(&request(seed), &mut |event| {
            if let Event::Step { .. } = event {
                stamps.push(Instant::now())
            }
        })?;
        let decoded = pipeline.decode(&latents)?;
        mlx_rs::transforms::eval([&decoded]).context("decoding")?;
        Ok(())
    };
    let start = Instant::now();
    run(args.timed.seed + 1000, &mut vec![])?;
    eprintln!(
        "warm-up edit: {:.2} s (not recorded; it loads what the open did not)",
        start.elapsed().as_secs_f64()
    );
    for i in 0..args.edits {
        memory::reset_peak_memory().context("resetting MLX's peak memory")?;
        let mut stamps = Vec::with_capacity(args.timed.steps);
        let start = Instant::now();
        run(args.timed.seed + i as u64, &mut stamps)?;
        let edit_ms = start.elapsed().as_secs_f64() * 1e3;
        let peak = peak_gb()?;
        let steps: Vec<f64> = stamps
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect();
        let run = ("run", Value::from(i));
        let rss = ("rss_gb", rss_hwm_gb().map(|g| round(g, 2)).into());
        rows.push("edit", edit_ms, peak, &[run.clone(), rss])?;
        let mean = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
        let mean = ("mean_ms", round(mean, 2).into());
        if let Some(step) = median(steps) {
            rows.push("step", step, peak, &[run, mean])?;
        }
    }
    Ok(())
}

fn dump(args: &DumpArgs) -> Result<()> {
    let c = &args.common;
    if args.steps_list.contains(&0) {
        bail!("--steps-list: every step count must be at least 1");
    }
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("--out must end in .safetensors: {}", args.out.display());
    }
    let start = Instant::now();
    let pipeline = open(c, args.dtype)?;
    let load_s = start.elapsed().as_secs_f64();
    let latents = Checkpoint::open(&args.latents)
        .and_then(|ck| ck.array(&args.latents_key))
        .with_context(|| {
            format!(
                "reading `{}` from {}",
                args.latents_key,
                args.latents.display()
            )
        })?;

    let f32 = |a: &Array| -> Result<Array> { Ok(a.as_dtype(Dtype::Float32)?) };
    let mut tensors: Vec<(String, Array)> = Vec::new();
    let start = Instant::now();
    let mut warnings = Vec::new();
    let emb = pipeline.encode(&c.prompt, Some(&c.negative), &mut warnings)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let encode_s = start.elapsed().as_secs_f64();
    tensors.push(("prompt_emb".into(), f32(&emb.prompt)?));
    if let Some(n) = &emb.negative {
        tensors.push(("negative_emb".into(), f32(n)?));
    }
    // As `generate`: CFG only above scale 1 (the negative embeddings are dumped regardless).
    let emb = Embeddings {
        prompt: emb.prompt,
        negative: if c.cfg > 1.0 { emb.negative } else { None },
    };

    let mut last = None;
    let mut step_s = Vec::new();
    for &n in &args.steps_list {
        let start = Instant::now();
        let out = pipeline.denoise(latents.clone(), &emb, n, c.cfg, &mut |_, _| {})?;
        step_s.push(json!({ "steps": n, "s": round(start.elapsed().as_secs_f64(), 3) }));
        tensors.push((format!("latents_{n}"), f32(&out)?));
        last = Some(out);
    }
    let start = Instant::now();
    if let Some(out) = &last {
        tensors.push(("decoded".into(), pipeline.decode(out)?));
    }
    let decode_s = start.elapsed().as_secs_f64();

    Array::save_safetensors(tensors.iter().map(|(k, v)| (k, v)), None, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let shapes: Map<String, Value> = tensors
        .iter()
        .map(|(k, v)| (k.clone(), json!(v.shape())))
        .collect();
    println!(
        "{}",
        json!({
            "what": "dump",
            "out": args.out.display().to_string(),
            "dtype": args.dtype.name(),
            "tensors": shapes,
            "load_s": round(load_s, 3),
            "encode_s": round(encode_s, 3),
            "denoise_s": step_s,
            "decode_s": round(decode_s, 3),
        })
    );
    Ok(())
}

fn load_probe(args: &LoadProbeArgs) -> Result<()> {
    let chosen = args.device.choose()?;
    chosen.set_default();
    eprintln!("device: {}", chosen.name);
    const ROWS: usize = 3072;
    const COLS: usize = 12288;
    if !args.file.exists() {
        let count = ((args.gb * 1e9) as usize / (ROWS * COLS * 2)).max(1);
        let t = Instant::now();
        let block: Vec<u8> = (0..ROWS * COLS)
            .flat_map(|i| (0x3c00u16 + (i as u16 % 0x380)).to_le_bytes())
            .collect();
        let header: Map<String, Value> = (0..count)
            .map(|i| {
                let n = ROWS * COLS * 2;
                let spec = json!({"dtype": "BF16", "shape": [ROWS, COLS], "data_offsets": [i * n, (i + 1) * n]});
                (format!("w{i:04}"), spec)
            })
            .collect();
        let mut raw = serde_json::to_vec(&header)?;
        raw.resize(raw.len().div_ceil(8) * 8, b' ');
        let mut f = std::io::BufWriter::new(std::fs::File::create(&args.file)?);
        f.write_all(&(raw.len() as u64).to_le_bytes())?;
        f.write_all(&raw)?;
        for _ in 0..count {
            f.write_all(&block)?;
        }
        f.flush()?;
        eprintln!(
            "wrote {} tensors in {:.1} s",
            count,
            t.elapsed().as_secs_f64()
        );
    }
    let ck = Checkpoint::open(&args.file)?;
    let names: Vec<String> = ck.names().into_iter().map(String::from).collect();
    let gb = names.len() as f64 * (ROWS * COLS * 2) as f64 / 1e9;
    let touch = |ws: &[Array]| -> Result<f64> {
        let t = Instant::now();
        let sums: Vec<Array> = ws
            .iter()
            .map(|w| w.as_dtype(Dtype::Float32).and_then(|w| w.sum(None)))
            .collect::<std::result::Result<_, _>>()?;
        mlx_rs::transforms::eval(&sums)?;
        Ok(t.elapsed().as_secs_f64())
    };
    for way in &args.ways {
        memory::clear_cache()?;
        let (kind, threads) = match way.split_once(':') {
            Some((k, n)) => (k, n.parse::<usize>().context("threads")?),
            None => (way.as_str(), 0),
        };
        let t = Instant::now();
        let ws: Vec<Array> = match kind {
            "serial" | "staged" | "staged-copy" => {
                let staging = qwen_runtime::Staging {
                    threads,
                    ..Default::default()
                };
                ck.staged_with(staging, &names, |get| -> Result<Vec<Array>> {
                    let mut ws = vec![];
                    for n in &names {
                        let mut w = get(n)?;
                        if kind == "staged-copy" {
                            w = w.multiply(Array::from_f32(1.0).as_dtype(Dtype::Bfloat16)?)?;
                        }
                        w.eval()?;
                        ws.push(w);
                    }
                    Ok(ws)
                })?
            }
            other => bail!("unknown way {other}"),
        };
        let load = t.elapsed().as_secs_f64();
        let first = touch(&ws)?;
        let second = touch(&ws)?;
        let row = json!({"way": way, "gb": round(gb, 2), "load_s": round(load, 3),
            "load_gbps": round(gb / load, 2), "first_use_s": round(first, 3),
            "second_use_s": round(second, 3), "rss_hwm_gb": rss_hwm_gb(),
            "mlx_active_gb": round(memory::active_memory()? as f64 / 1e9, 2)});
        println!("{row}");
        drop(ws);
    }
    Ok(())
}
