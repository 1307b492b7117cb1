//! Opening a model folder: [`Options`] and [`Pipeline::open`].

use std::path::Path;
use std::time::Instant;

use qwen_runtime::__private::mlx_rs::Dtype;
use qwen_runtime::lora::Loras;
use qwen_runtime::quant::{Dense, Stored};
use qwen_runtime::weights::{Checkpoint, Extra};
use qwen_runtime::{error::Problem, SchedulerConfig, Tokenizer, WeightError};

use qwen_runtime::__private::mlx_rs::memory as mlx_memory;

use super::checks::{check_configs, check_model_index, check_token_ids, latents_stats};
use super::memory::{load_at_open, Sizes};
use super::{
    detect_config, find_one_text_variant, find_sequence_variant, find_variant, sequence_modules,
    variant_by_name, Checkpoints, Network, Pipeline, PipelineError, Purpose, Resolution, Result,
    Variant, VARIANTS,
};
use crate::quantize::Quantization;

/// How to open a model folder.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None`: the config's default resolution; a size that is not a multiple of 16 is
    /// rounded down as diffusers rounds it ([`Resolution::rounded`]).
    pub resolution: Option<Resolution>,
    /// Compute dtype (weights are converted at load).
    pub dtype: Dtype,
    /// Force a generated module by name (it must fit the checkpoint's config).
    pub module: Option<String>,
    /// Bytes the networks may take (see [`super::memory`]); `None`: MLX's memory limit. When
    /// set, MLX's own limit is set to it too, so that freed buffers are given back.
    pub memory_limit: Option<usize>,
    /// Quantize linear layers at load (`--quantize`); `None`: every weight in `dtype`.
    pub quantize: Option<Quantization>,
    /// LoRA files and their scales, fused into the transformer's weights at load (before
    /// quantizing) in this order.
    pub loras: Vec<(std::path::PathBuf, f32)>,
    /// What the LoRAs do on layers quantized at load (fused first, or kept beside).
    pub lora_on_quantized: qwen_runtime::lora::OnQuantized,
    /// The schedule of Qwen-Image-Lightning instead of the folder's
    /// ([`qwen_runtime::SchedulerConfig::lightning`]), for a Lightning LoRA.
    pub lightning: bool,
    /// Whether requests will make a negative pass (CFG scale above 1). Without one, a module
    /// of one text per call is picked where the size has one (batch 1; a joint-CFG module
    /// would compute a second half for nothing); requests with CFG still run on it, as two
    /// calls.
    pub negative_pass: bool,
    /// The ranks of a process group the image tokens are split over (sequence parallelism):
    /// above 1, the module generated for that split (`sp = N`) at the resolution, or an
    /// error where there is none. 1: a module one process runs alone.
    pub sequence_parts: usize,
    /// Tiled VAE decoding (diffusers' tiles and blending): always, never, or when the
    /// untiled decode would not fit the memory budget ([`super::memory`]).
    pub vae_tiling: VaeTiling,
    /// The pipeline runs edits ([`Pipeline::edit_latents`]) of an Edit-2509/2511 folder, not
    /// generations: the text encoder's and the denoiser's places in the memory rule hold the
    /// edit networks ([`super::Purpose`]).
    pub edit: bool,
}

/// When the VAE decodes in tiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VaeTiling {
    /// When the untiled decode's working memory would not fit beside what stays loaded.
    #[default]
    Auto,
    On,
    Off,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resolution: None,
            dtype: Dtype::Float32,
            module: None,
            memory_limit: None,
            quantize: None,
            loras: vec![],
            lora_on_quantized: Default::default(),
            lightning: false,
            negative_pass: true,
            sequence_parts: 1,
            vae_tiling: VaeTiling::Auto,
            edit: false,
        }
    }
}

impl Pipeline {
    /// Opens `dir` (diffusers layout), picks the generated module, checks all weights and
    /// loads the VAE decoder; the text encoder, the modulation and the denoiser (the edit
    /// networks for `Options::edit`) too where they all fit the memory budget, else each when
    /// its stage first needs it ([`super::memory`]).
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            return Err(PipelineError::ModelNotFound { path: dir });
        }
        // present (of any kind: a FIFO is refused by name when it is read, not opened)
        if std::fs::symlink_metadata(dir.join("model_index.json")).is_err() {
            return Err(PipelineError::NotAModel {
                path: dir,
                reason: "no model_index.json".into(),
            });
        }
        for sub in [
            "tokenizer",
            "text_encoder",
            "transformer",
            "vae",
            "scheduler",
        ] {
            if !dir.join(sub).is_dir() {
                return Err(PipelineError::NotAModel {
                    path: dir,
                    reason: format!("no {sub}/ folder"),
                });
            }
        }

        check_model_index(&dir, options.edit)?;
        let config = detect_config(&dir)?;
        // rounded down to multiples of 16 as diffusers does (the CLI says so when it changes)
        let resolution = options
            .resolution
            .map(Resolution::rounded)
            .unwrap_or_else(|| config.default_resolution());
        let variant = match &options.module {
            Some(name) => {
                let v = variant_by_name(name).ok_or_else(|| {
                    PipelineError::Request(format!(
                        "no generated module `{name}`; available: {}",
                        VARIANTS
                            .iter()
                            .map(|v| v.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                if v.config() != config || v.resolution() != resolution {
                    return Err(PipelineError::Request(format!(
                        "module `{name}` is for {} with the {} config, not {resolution} with the {config} config",
                        v.resolution(),
                        v.config()
                    )));
                }
                // a module that splits the tokens runs in a group of its ranks, one of them
                // (and one that does not, in none)
                if v.sequence_parts() != options.sequence_parts {
                    return Err(PipelineError::Request(format!(
                        "module `{name}` splits the image tokens over {} rank(s), not {} (`qwen-run --gpus` runs it)",
                        v.sequence_parts(),
                        options.sequence_parts
                    )));
                }
                v
            }
            None if options.sequence_parts > 1 => {
                find_sequence_variant(resolution, config, options.sequence_parts).ok_or_else(
                    || {
                        PipelineError::Request(format!(
                            "no generated module splits {resolution} over {} ranks ({}; a `specialize!(res = …, sp = N)` line makes one)",
                            options.sequence_parts,
                            sequence_modules()
                        ))
                    },
                )?
            }
            // without a negative pass, a module of one text per call where there is one
            None if !options.negative_pass => match find_one_text_variant(resolution, config) {
                Some(v) => v,
                None => find_variant(resolution, config)?,
            },
            None => find_variant(resolution, config)?,
        };
        check_configs(&dir, config, variant.name())?;
        let purpose = if options.edit {
            Purpose::Edit {
                zero_cond: zero_cond_t(&dir)?,
            }
        } else {
            Purpose::Generate
        };
        // MLX compiles the fused kernels (NVRTC, in every process) on a thread of its own
        // from here on, beside the checks and the load below
        let kernels = qwen_runtime::kernels::enabled();
        let compiling = (kernels && qwen_runtime::kernels::warm_up_beside_load())
            .then(|| Compiling::start(variant, options.dtype));

        // Open and check every component before loading any.
        let open = |component: &'static str, sub: &str| {
            Checkpoint::open(dir.join(sub))
                .map_err(|error| PipelineError::Weights { component, error })
        };
        let te = open("text_encoder", "text_encoder")?;
        let te_specs = match purpose {
            Purpose::Generate => variant.text_encoder_specs(),
            Purpose::Edit { .. } => variant.edit_encoder_specs(),
        };
        let tr = open("transformer", "transformer")?;
        let vae = open("vae", "vae")?;
        let mut problems = Vec::new();
        let mut tr_specs = variant.modulation_specs();
        tr_specs.extend(match purpose {
            Purpose::Generate => variant.transformer_specs(),
            Purpose::Edit { zero_cond } => variant.edit_denoiser_specs(zero_cond),
        });
        let loras = Loras::open(&options.loras, &tr_specs)?.on_quantized(options.lora_on_quantized);
        // a folder `qwen-run quantize` wrote: its quantized layers as stored
        let stored_quantization = crate::quantize_folder::stored(&dir.join("transformer"))?;
        let stored_group = stored_quantization.as_ref().map(|q| q.group_size);
        if stored_group.is_some() && !loras.is_empty() {
            return Err(PipelineError::Request(format!(
                "{} holds a quantized transformer: LoRA adapters on it are not supported yet; \
                 give the unquantized folder with --quantize",
                dir.display()
            )));
        }
        if let Some(group_size) = stored_group {
            let stored = Stored {
                checkpoint: &tr,
                group_size,
                fallback: Box::new(Dense),
            };
            tr_specs = stored.stored_specs(&tr_specs);
        }
        let mut vae_specs = variant.vae_specs();
        if let Purpose::Edit { .. } = purpose {
            vae_specs.extend(variant.vae_encoder_specs());
        }
        for (component, ck, specs) in [
            ("text_encoder", &te, te_specs.clone()),
            ("transformer", &tr, tr_specs),
            ("vae", &vae, vae_specs),
        ] {
            // The text encoder checkpoint also holds the vision tower and the LM head; the VAE
            // its encoder. Neither is used for text-to-image.
            match ck.check(&specs, Extra::Allow) {
                Ok(()) => {}
                Err(WeightError::Mismatch { problems: p, .. }) => {
                    problems.extend(p.iter().map(|p: &Problem| format!("{component}: {p}")));
                }
                Err(error) => return Err(PipelineError::Weights { component, error }),
            }
        }
        if !problems.is_empty() {
            return Err(PipelineError::Mismatch {
                path: dir,
                module: variant.name(),
                problems,
            });
        }

        let (latents_mean, latents_std) = latents_stats(&dir)?;
        let mut scheduler =
            SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
        if options.lightning {
            scheduler = scheduler.lightning();
        }
        let tokenizer = Tokenizer::from_dir(dir.join("tokenizer"))?;
        check_token_ids(&tokenizer, &te_specs, config)?;

        let budget = match options.memory_limit {
            Some(limit) => {
                mlx_memory::set_memory_limit(limit)
                    .map_err(super::mlx("setting the memory limit"))?;
                limit
            }
            None => mlx_memory::memory_limit().map_err(super::mlx("reading the memory limit"))?,
        };
        let sizes = Sizes {
            loras: loras.bytes(),
            ..Sizes::of(
                variant,
                purpose,
                options.dtype,
                options.quantize.as_ref(),
                stored_group.map(|g| (&tr, g)),
            )
        };
        let all = load_at_open(&sizes, budget);
        let mut timings = OpenTimings {
            kernels_beside: compiling.is_some(),
            ..OpenTimings::default()
        };
        if compiling.is_none() {
            timings.kernels = std::thread::scope(|scope| -> Result<Option<f64>> {
                let mut cks = vec![&vae];
                if all {
                    cks.extend([&tr, &te]);
                }
                for ck in cks {
                    scope.spawn(|| ck.prefetch());
                }
                // while the weights are read: the fused kernels compile here instead of in
                // the first step
                kernels
                    .then(|| Compiling::start(variant, options.dtype).finish())
                    .transpose()
            })?;
        }
        let start = Instant::now();
        let vae_decoder = variant.load_vae(&vae, options.dtype)?;
        let mut pipeline = Self {
            dir,
            variant,
            dtype: options.dtype,
            tokenizer,
            scheduler,
            latents_mean,
            latents_std,
            checkpoints: Checkpoints {
                text_encoder: te,
                transformer: tr,
                vae,
            },
            loaded: Default::default(),
            sizes: sizes.into(),
            budget,
            quantize: options.quantize.clone(),
            loras,
            lightning: options.lightning,
            vae_tiling: options.vae_tiling,
            stored_quantization,
            vae: vae_decoder,
            open_timings: timings,
            image_encoder: Default::default(),
            purpose,
        };
        if all {
            pipeline.ensure(Network::TextEncoder)?;
            // the first uses before the transformer's weights, while the fused kernels
            // compile: what of them waits for the compilation (MLX compiles one kernel at a
            // time, for every thread) waits beside that load, not after it
            if compiling.is_some() && qwen_runtime::kernels::warm_up_first_uses() {
                let warm = Instant::now();
                pipeline.warm_up()?;
                pipeline.open_timings.first_uses = Some(warm.elapsed().as_secs_f64());
            }
            for n in [Network::Denoiser, Network::Modulation] {
                pipeline.ensure(n)?;
            }
        }
        pipeline.open_timings.weights =
            start.elapsed().as_secs_f64() - pipeline.open_timings.first_uses.unwrap_or(0.0);
        if let Some(c) = compiling {
            pipeline.open_timings.kernels = Some(c.finish()?);
        }
        Ok(pipeline)
    }

    /// A process's first use of MLX's GPU libraries costs far more than the later ones
    /// (measured on an H200 with MLX 0.32.4: cuBLAS's first matmul 126 ms against 5 ms for a
    /// new shape, cuDNN's first attention 107 ms, its first convolution 68 ms and 13-82 ms per
    /// further shape), which a cold image paid in its encode (0.5 s against 20 ms warm) and
    /// its decode (0.35 s against 62 ms). `open` pays them instead, between the text
    /// encoder's weights and the transformer's, while the fused kernels compile on their
    /// thread: the text encoder on the prompt `" "` (the libraries' set-up, and the plans of
    /// a text of that length, the usual negative prompt) and the decoder on latents of this
    /// resolution, which fixes every one of its convolutions' shapes (an Edit pipeline: the
    /// decoder only; its vision tower and VAE encoder still pay theirs in the first edit).
    /// Nothing is kept: an image made after it is the image made without it. Meant for a
    /// pipeline with every network loaded, as `open` runs it; under a memory budget it loads
    /// and frees networks as an image's encode and decode would.
    pub fn warm_up(&self) -> Result<()> {
        if let Purpose::Generate = self.purpose {
            self.encode(" ", None, &mut vec![])?;
        }
        self.decode(&self.noise(0)?)?;
        // and MLX's cache lets its buffers go: the transformer's weights, loaded next, took
        // cached buffers larger than they are (a peak 1.2-2.6 GB higher, on an H200)
        mlx_memory::clear_cache().map_err(super::mlx("freeing memory"))
    }
}

/// Whether the folder's transformer is Edit-2511's (`zero_cond_t` in its config).
fn zero_cond_t(dir: &Path) -> Result<bool> {
    let json = super::config::read_json(&dir.join("transformer/config.json"))?;
    Ok(json
        .get("zero_cond_t")
        .and_then(|v| v.as_bool())
        .unwrap_or(false))
}

/// The fused kernels compiling on a thread of their own (and so on an MLX stream of its own:
/// MLX 0.32 gives each thread its own default stream); dropping it waits for them.
struct Compiling(Option<std::thread::JoinHandle<Result<f64>>>);

impl Compiling {
    fn start(variant: &'static dyn Variant, dtype: Dtype) -> Self {
        Compiling(Some(std::thread::spawn(move || {
            let start = Instant::now();
            variant
                .warm_up_kernels(dtype)
                .map_err(super::mlx("compiling the fused kernels"))?;
            Ok(start.elapsed().as_secs_f64())
        })))
    }

    /// Waits for the compilation: its seconds.
    fn finish(mut self) -> Result<f64> {
        let handle = self.0.take().expect("joined once");
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Compiling {
    fn drop(&mut self) {
        // an open that fails before the end still waits: no MLX work left running
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

/// Where [`Pipeline::open`]'s time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpenTimings {
    /// MLX compiling the fused kernels (`None` where they do not run: CPU, Metal).
    pub kernels: Option<f64>,
    /// Whether that compilation ran on a thread of its own from the moment the module was
    /// known, beside the checks and the load (`qwen_runtime::kernels::warm_up_beside_load`),
    /// rather than beside a page-cache prefetch, before them.
    pub kernels_beside: bool,
    /// Loading the VAE decoder and the networks that load at open (all of them where they
    /// fit the memory budget, else none), less `first_uses`, which runs between them.
    pub weights: f64,
    /// The first uses of MLX's GPU libraries made while the fused kernels compile beside
    /// the load (`qwen_runtime::kernels::warm_up_first_uses`; not in `weights`): `None`
    /// where they were not.
    pub first_uses: Option<f64>,
}
