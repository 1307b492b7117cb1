//! The Qwen-Image text-to-image pipeline: prompt → text encoder → denoise loop → VAE → PNG.
//!
//! [`Pipeline::open`] reads a model folder in the diffusers layout (`model_index.json`,
//! `tokenizer/`, `text_encoder/`, `transformer/`, `vae/`, `scheduler/`), works out which
//! config the checkpoint has (from `transformer/config.json`), picks the generated module for
//! the requested resolution and that config (see [`VARIANTS`]), checks the weights of all
//! three networks against what that module expects (every problem of every component in one
//! error), and loads the transformer and the VAE decoder. [`Pipeline::generate`] then runs the
//! steps of spec §1 in diffusers' order:
//!
//! 1. each prompt in the Qwen template ([`PROMPT_TEMPLATE`]), tokenized as one string and cut
//!    at `1024 + 34` tokens; the generated text encoder (loaded here, dropped before the
//!    loop); the first 34 rows dropped; the rest cut to `max_sequence_length` (512);
//! 2. initial latents: the given ones, or standard normal noise from an MLX key of the seed,
//!    drawn as `[1, 16, h, w]` and packed to `[1, L_img, 64]`;
//! 3. the flow-match schedule for `L_img`; per step one transformer evaluation of both CFG
//!    halves (one call where the module joins them, else two), true CFG with norm rescale,
//!    the Euler step, and one `eval`;
//! 4. unpack to NHWC, de-normalise with `latents_mean` / `latents_std` of `vae/config.json`,
//!    the generated VAE decoder, clamp to [−1, 1], and 8-bit RGB as diffusers' postprocess.
//!
//! Seeded noise comes from MLX's generator, so it cannot equal torch's; pass the initial
//! latents ([`Request::latents`]) for bit-comparable runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, random, Array, Dtype};
use qwen_runtime::guidance::true_cfg;
use qwen_runtime::scheduler::euler_step_array;
use qwen_runtime::weights::{Checkpoint, Extra, TensorSpec};
use qwen_runtime::{
    error::Problem, ImageError, RgbImage, SchedulerConfig, SchedulerError, Tokenizer,
    TokenizerError, WeightError,
};

mod variants;

/// The prompt template of Qwen-Image (spec §1.2); `{}` is the user prompt. The system text
/// must match the published one byte for byte.
pub const PROMPT_TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";

/// Tokens of the template before the prompt (the system turn and `<|im_start|>user\n`); their
/// encoder rows are dropped.
pub const TEMPLATE_DROP: usize = 34;

/// Tokens the tokenizer keeps, template included: `1024 + 34`.
pub const TOKENIZER_MAX_LENGTH: usize = 1024 + TEMPLATE_DROP;

/// Encoder rows kept after the drop (diffusers' default `max_sequence_length`).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// Latent channels (the VAE's `z_dim`) and channels of a packed 2×2 token.
const LATENT_CHANNELS: usize = 16;
const PACKED_CHANNELS: usize = 64;

/// The prompt in the template.
pub fn format_prompt(prompt: &str) -> String {
    PROMPT_TEMPLATE.replacen("{}", prompt, 1)
}

// ============================================================================================
// Errors
// ============================================================================================

/// Everything that can go wrong between a model folder and a PNG.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("model folder not found: {}", path.display())]
    ModelNotFound { path: PathBuf },

    #[error("{} is not a Qwen-Image model folder: {reason}", path.display())]
    NotAModel { path: PathBuf, reason: String },

    #[error("cannot read {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    #[error(
        "the checkpoint in {} has a transformer config ({found}) that matches no generated config; available: {}",
        path.display(), available.join("; ")
    )]
    UnknownConfig {
        path: PathBuf,
        found: String,
        available: Vec<String>,
    },

    #[error(
        "no generated module for {resolution} with the {config} config; available: {}",
        available.join(", ")
    )]
    UnsupportedResolution {
        resolution: Resolution,
        config: ModelConfig,
        available: Vec<String>,
    },

    /// A component's checkpoint could not be opened or read.
    #[error("{component} weights: {error}")]
    Weights {
        component: &'static str,
        error: WeightError,
    },

    /// The weights differ from what the module expects: every problem of every component
    /// (the message shows the first [`SHOWN_PROBLEMS`] on one line).
    #[error(
        "the checkpoint in {} does not fit the generated module {module} ({} problems): {}",
        path.display(), problems.len(), Listed(problems)
    )]
    Mismatch {
        path: PathBuf,
        module: &'static str,
        problems: Vec<String>,
    },

    #[error("cannot load the {component} weights: {message}")]
    Load {
        component: &'static str,
        message: String,
    },

    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),

    #[error(transparent)]
    Scheduler(#[from] SchedulerError),

    #[error(transparent)]
    Image(#[from] ImageError),

    #[error("initial latents have shape {got:?}, expected {expected:?}")]
    LatentsShape { expected: Vec<i32>, got: Vec<i32> },

    #[error("bad request: {0}")]
    Request(String),

    #[error("mlx failed while {what}: {message}")]
    Mlx { what: &'static str, message: String },
}

/// Problems shown in a [`PipelineError::Mismatch`] message.
pub const SHOWN_PROBLEMS: usize = 10;

struct Listed<'a>(&'a [String]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().take(SHOWN_PROBLEMS).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(p)?;
        }
        if self.0.len() > SHOWN_PROBLEMS {
            write!(f, "; and {} more", self.0.len() - SHOWN_PROBLEMS)?;
        }
        Ok(())
    }
}

type Result<T, E = PipelineError> = std::result::Result<T, E>;

fn mlx(what: &'static str) -> impl FnOnce(Exception) -> PipelineError {
    move |e| PipelineError::Mlx {
        what,
        message: e.to_string(),
    }
}

// ============================================================================================
// Resolutions, configs, and the generated modules
// ============================================================================================

/// An output size, width × height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    pub width: usize,
    pub height: usize,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Resolution {
    type Err = String;

    /// `1024` (square) or `WxH`, e.g. `96x64` (width first).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("bad resolution `{s}`: expected a size such as 1024 or WxH (e.g. 96x64)");
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let (width, height) = match s.split_once(['x', 'X', '×']) {
            Some((w, h)) => (num(w)?, num(h)?),
            None => {
                let n = num(s)?;
                (n, n)
            }
        };
        if width == 0 || height == 0 {
            return Err(bad());
        }
        Ok(Self { width, height })
    }
}

/// The network sizes a generated module was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelConfig {
    /// The published Qwen-Image (60 blocks, width 3072, Qwen2.5-VL-7B text encoder).
    Real,
    /// The tiny test config of `tests/fixtures/tiny_config.json`.
    Tiny,
}

impl ModelConfig {
    /// `(num_layers, num_attention_heads, attention_head_dim, joint_attention_dim)` of
    /// `transformer/config.json`.
    fn transformer_shape(self) -> (u64, u64, u64, u64) {
        match self {
            ModelConfig::Real => (60, 24, 128, 3584),
            ModelConfig::Tiny => (2, 2, 32, 32),
        }
    }

    /// The resolution used when none is asked for.
    pub fn default_resolution(self) -> Resolution {
        match self {
            ModelConfig::Real => Resolution {
                width: 1024,
                height: 1024,
            },
            ModelConfig::Tiny => Resolution {
                width: 96,
                height: 64,
            },
        }
    }

    fn describe(self) -> String {
        let (l, h, d, j) = self.transformer_shape();
        format!("{self}: num_layers {l}, num_attention_heads {h}, attention_head_dim {d}, joint_attention_dim {j}")
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelConfig::Real => "real",
            ModelConfig::Tiny => "tiny",
        })
    }
}

/// One generated module (one `specialize!` line) behind a common face.
pub trait Variant: Sync {
    /// The module's name in [`crate::specializations`].
    fn name(&self) -> &'static str;
    fn resolution(&self) -> Resolution;
    fn config(&self) -> ModelConfig;
    /// Whether the transformer runs both CFG halves in one call (`cfg = split`).
    fn joint_cfg(&self) -> bool;
    fn text_encoder_specs(&self) -> Vec<TensorSpec>;
    fn transformer_specs(&self) -> Vec<TensorSpec>;
    fn vae_specs(&self) -> Vec<TensorSpec>;
    fn load_text_encoder(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn TextEncoder>>;
    fn load_transformer(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn Denoiser>>;
    fn load_vae(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn Decoder>>;
}

/// A loaded text encoder: token ids `[1, S]` (int32) → final-norm states `[1, S, hidden]`.
pub trait TextEncoder {
    fn encode(&self, ids: &Array) -> Result<Array, Exception>;
}

/// A loaded transformer.
pub trait Denoiser {
    /// Binds the prompt embeddings (and the negative ones for CFG): builds the RoPE tables of
    /// their lengths once, for every step.
    fn bind<'a>(
        &'a self,
        cond: Array,
        uncond: Option<Array>,
    ) -> Result<Box<dyn Step + 'a>, Exception>;
}

/// A transformer bound to its texts.
pub trait Step {
    /// Velocities for latents `[1, L, 64]` at timestep `t` (`[1]`, t/1000): the conditional
    /// one and, when bound with a negative prompt, the unconditional one.
    fn velocity(&self, latents: &Array, t: &Array) -> Result<(Array, Option<Array>), Exception>;
}

/// A loaded VAE decoder: NHWC latents `[1, h, w, 16]` (de-normalised) → `[1, H, W, 3]`.
pub trait Decoder {
    fn decode(&self, z: &Array) -> Result<Array, Exception>;
}

/// Every generated module the pipeline can run, one per `specialize!(res = …)` line of
/// `specializations.rs`, in that order (the list is made by `specializations!`).
pub static VARIANTS: &[&dyn Variant] = variants::ALL;

/// The variant for a resolution and config (a joint-CFG one if there is one, else the first
/// listed), or the error listing what exists.
pub fn find_variant(resolution: Resolution, config: ModelConfig) -> Result<&'static dyn Variant> {
    VARIANTS
        .iter()
        .copied()
        .filter(|v| v.resolution() == resolution && v.config() == config)
        .min_by_key(|v| !v.joint_cfg())
        .ok_or_else(|| {
            let mut available: Vec<String> = VARIANTS
                .iter()
                .filter(|v| v.config() == config)
                .map(|v| v.resolution().to_string())
                .collect();
            available.dedup();
            PipelineError::UnsupportedResolution {
                resolution,
                config,
                available,
            }
        })
}

/// A variant by module name (e.g. `res96x64_tiny` to force two transformer calls per step).
pub fn variant_by_name(name: &str) -> Option<&'static dyn Variant> {
    VARIANTS.iter().copied().find(|v| v.name() == name)
}

// ============================================================================================
// The pipeline
// ============================================================================================

/// How to open a model folder.
#[derive(Debug, Clone)]
pub struct Options {
    /// `None`: the config's default resolution.
    pub resolution: Option<Resolution>,
    /// Compute dtype (weights are converted at load).
    pub dtype: Dtype,
    /// Force a generated module by name (it must fit the checkpoint's config).
    pub module: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            resolution: None,
            dtype: Dtype::Float32,
            module: None,
        }
    }
}

/// One generation.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    /// `None`: no negative prompt, no CFG (one transformer pass per step).
    pub negative_prompt: Option<String>,
    pub steps: usize,
    /// True CFG scale; CFG runs when it is above 1 and there is a negative prompt.
    pub cfg_scale: f32,
    pub seed: u64,
    /// Packed initial latents `[1, L_img, 64]` instead of seeded noise.
    pub latents: Option<Array>,
}

impl Request {
    /// Diffusers' recommended defaults: negative prompt `" "`, 50 steps, scale 4, seed 0.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: Some(" ".into()),
            steps: 50,
            cfg_scale: 4.0,
            seed: 0,
            latents: None,
        }
    }
}

/// Something the user should know that did not stop the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The prompt is empty or blank; the image is conditioned on the template alone, as in
    /// the reference. Only the prompt is checked: `" "` is the recommended negative prompt.
    EmptyPrompt { which: &'static str },
    /// The prompt gave more encoder rows than `max_sequence_length`; the rest were cut, as in
    /// the reference.
    Truncated {
        which: &'static str,
        tokens: usize,
        kept: usize,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::EmptyPrompt { which } => {
                write!(f, "the {which} is empty: the image is conditioned on the prompt template alone")
            }
            Warning::Truncated { which, tokens, kept } => write!(
                f,
                "the {which} is too long: {tokens} tokens (with the template's 5-token tail), only the first {kept} are used"
            ),
        }
    }
}

/// What [`Pipeline::generate`] reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A warning, as soon as it is known (the prompts are encoded first).
    Warning(&'a Warning),
    /// `done` of `total` denoising steps finished.
    Step { done: usize, total: usize },
}

/// Prompt embeddings: `[1, L_txt, hidden]`.
#[derive(Debug)]
pub struct Embeddings {
    pub prompt: Array,
    pub negative: Option<Array>,
}

/// What a generation produced.
#[derive(Debug)]
pub struct Generation {
    /// Final packed latents `[1, L_img, 64]`.
    pub latents: Array,
    /// Decoder output, clamped, `[1, 3, H, W]` f32 in [−1, 1].
    pub decoded: Array,
    pub image: RgbImage,
    pub warnings: Vec<Warning>,
    /// Seconds spent: text encoding, denoising, decoding.
    pub timings: Timings,
}

/// Wall-clock seconds of the three stages.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub encode: f64,
    pub denoise: f64,
    pub decode: f64,
}

/// An opened model: checked, transformer and VAE loaded. The text encoder stays loaded when
/// all three networks fit in the memory MLX may use ([`Pipeline::text_encoder_resident`]);
/// otherwise it is loaded for each generation and dropped before the denoise loop.
pub struct Pipeline {
    dir: PathBuf,
    variant: &'static dyn Variant,
    dtype: Dtype,
    tokenizer: Tokenizer,
    scheduler: SchedulerConfig,
    latents_mean: Vec<f32>,
    latents_std: Vec<f32>,
    text_encoder: Checkpoint,
    /// The loaded text encoder when it stays loaded.
    resident_encoder: Option<Box<dyn TextEncoder>>,
    transformer: Box<dyn Denoiser>,
    vae: Box<dyn Decoder>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("dir", &self.dir)
            .field("module", &self.variant.name())
            .field("dtype", &self.dtype)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The checkpoint's config, from `transformer/config.json`.
pub fn detect_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("transformer/config.json");
    let json = read_json(&path)?;
    let field = |k: &str| json.get(k).and_then(serde_json::Value::as_u64);
    let found = (
        field("num_layers"),
        field("num_attention_heads"),
        field("attention_head_dim"),
        field("joint_attention_dim"),
    );
    let all = [ModelConfig::Real, ModelConfig::Tiny];
    all.into_iter()
        .find(|c| {
            let (l, h, d, j) = c.transformer_shape();
            found == (Some(l), Some(h), Some(d), Some(j))
        })
        .ok_or_else(|| {
            let show = |v: Option<u64>| v.map_or_else(|| "missing".to_owned(), |n| n.to_string());
            PipelineError::UnknownConfig {
                path: dir.to_path_buf(),
                found: format!(
                    "num_layers {}, num_attention_heads {}, attention_head_dim {}, joint_attention_dim {}",
                    show(found.0),
                    show(found.1),
                    show(found.2),
                    show(found.3)
                ),
                available: all.iter().map(|c| c.describe()).collect(),
            }
        })
}

fn float_list(json: &serde_json::Value, key: &str, path: &Path) -> Result<Vec<f32>> {
    let bad = |reason: String| PipelineError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let list = json
        .get(key)
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad(format!("no `{key}` list")))?;
    let values: Option<Vec<f32>> = list.iter().map(|v| v.as_f64().map(|x| x as f32)).collect();
    let values = values.ok_or_else(|| bad(format!("`{key}` holds a non-number")))?;
    if values.len() != LATENT_CHANNELS {
        return Err(bad(format!(
            "`{key}` has {} values, expected {LATENT_CHANNELS}",
            values.len()
        )));
    }
    Ok(values)
}

/// Bytes of a set of tensors once loaded in `dtype` (floating tensors take the run dtype).
fn loaded_bytes(specs: &[TensorSpec], dtype: Dtype) -> usize {
    let per = match dtype {
        Dtype::Float32 => 4,
        _ => 2,
    };
    specs
        .iter()
        .map(|s| s.shape.iter().product::<usize>() * per)
        .sum()
}

/// The one rule for keeping the text encoder loaded: the three networks' weights plus a
/// working margin of a quarter of the transformer's (activations of a step, MLX's buffers)
/// fit in the memory MLX may use (`mlx_get_memory_limit`: on a GPU about the device's
/// memory; on a Mac the recommended working set). Otherwise the encoder is loaded for each
/// generation and freed before denoising, as on a 24 GB card.
pub fn encoder_fits(variant: &dyn Variant, dtype: Dtype) -> bool {
    let te = loaded_bytes(&variant.text_encoder_specs(), dtype);
    let tr = loaded_bytes(&variant.transformer_specs(), dtype);
    let vae = loaded_bytes(&variant.vae_specs(), dtype);
    let limit = qwen_runtime::__private::mlx_rs::memory::memory_limit().unwrap_or(0);
    te + tr + vae + tr / 4 <= limit
}

impl Pipeline {
    /// Opens `dir` (diffusers layout), picks the generated module, checks all weights, loads
    /// the transformer and the VAE decoder.
    pub fn open(dir: impl AsRef<Path>, options: &Options) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            return Err(PipelineError::ModelNotFound { path: dir });
        }
        if !dir.join("model_index.json").is_file() {
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

        let config = detect_config(&dir)?;
        let resolution = options
            .resolution
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
                v
            }
            None => find_variant(resolution, config)?,
        };

        // Open and check every component before loading any.
        let open = |component: &'static str, sub: &str| {
            Checkpoint::open(dir.join(sub))
                .map_err(|error| PipelineError::Weights { component, error })
        };
        let te = open("text_encoder", "text_encoder")?;
        let tr = open("transformer", "transformer")?;
        let vae = open("vae", "vae")?;
        let mut problems = Vec::new();
        for (component, ck, specs) in [
            ("text_encoder", &te, variant.text_encoder_specs()),
            ("transformer", &tr, variant.transformer_specs()),
            ("vae", &vae, variant.vae_specs()),
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

        let vae_config_path = dir.join("vae/config.json");
        let vae_config = read_json(&vae_config_path)?;
        let latents_mean = float_list(&vae_config, "latents_mean", &vae_config_path)?;
        let latents_std = float_list(&vae_config, "latents_std", &vae_config_path)?;
        if latents_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(PipelineError::Config {
                path: vae_config_path,
                reason: "`latents_std` holds a zero or non-finite value".into(),
            });
        }
        let scheduler = SchedulerConfig::from_file(dir.join("scheduler/scheduler_config.json"))?;
        let tokenizer = Tokenizer::from_dir(dir.join("tokenizer"))?;

        let encoder_resident = encoder_fits(variant, options.dtype);
        std::thread::scope(|scope| {
            let mut cks = vec![&tr, &vae];
            if encoder_resident {
                cks.push(&te);
            }
            for ck in cks {
                scope.spawn(|| ck.prefetch());
            }
        });
        let transformer = variant.load_transformer(&tr, options.dtype)?;
        let vae_decoder = variant.load_vae(&vae, options.dtype)?;
        let resident_encoder = if encoder_resident {
            Some(variant.load_text_encoder(&te, options.dtype)?)
        } else {
            None
        };
        Ok(Self {
            dir,
            variant,
            dtype: options.dtype,
            tokenizer,
            scheduler,
            latents_mean,
            latents_std,
            text_encoder: te,
            resident_encoder,
            transformer,
            vae: vae_decoder,
        })
    }

    /// Whether the text encoder stays loaded between generations (see [`encoder_fits`]).
    pub fn text_encoder_resident(&self) -> bool {
        self.resident_encoder.is_some()
    }

    /// The generated module in use.
    pub fn variant(&self) -> &'static dyn Variant {
        self.variant
    }

    pub fn resolution(&self) -> Resolution {
        self.variant.resolution()
    }

    /// `(gh, gw)`: the packed grid.
    fn grid(&self) -> (usize, usize) {
        let r = self.resolution();
        (r.height / 16, r.width / 16)
    }

    /// Packed image tokens `L_img`.
    pub fn image_seq_len(&self) -> usize {
        let (gh, gw) = self.grid();
        gh * gw
    }

    /// Token ids of a prompt in the template, cut at [`TOKENIZER_MAX_LENGTH`].
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize(prompt)?.0)
    }

    /// [`Self::token_ids`] and the length before the cut.
    fn tokenize(&self, prompt: &str) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.tokenizer.encode(&format_prompt(prompt))?;
        let untruncated = ids.len();
        ids.truncate(TOKENIZER_MAX_LENGTH);
        Ok((ids, untruncated))
    }

    /// Prompt embeddings as `encode_prompt` makes them (spec §1.2), with the warnings.
    /// Loads the text encoder and drops it before returning.
    pub fn encode(
        &self,
        prompt: &str,
        negative: Option<&str>,
        warnings: &mut Vec<Warning>,
    ) -> Result<Embeddings> {
        let loaded;
        let encoder: &dyn TextEncoder = match &self.resident_encoder {
            Some(e) => e.as_ref(),
            None => {
                loaded = self
                    .variant
                    .load_text_encoder(&self.text_encoder, self.dtype)?;
                loaded.as_ref()
            }
        };
        let mut one = |which: &'static str, text: &str| -> Result<Array> {
            if text.trim().is_empty() && which == "prompt" {
                warnings.push(Warning::EmptyPrompt { which });
            }
            let (ids, untruncated) = self.tokenize(text)?;
            let n = ids.len();
            let rows = n.saturating_sub(TEMPLATE_DROP);
            if rows == 0 {
                return Err(PipelineError::Request(format!(
                    "the {which} in the template gave only {n} tokens"
                )));
            }
            if rows > MAX_SEQUENCE_LENGTH {
                warnings.push(Warning::Truncated {
                    which,
                    tokens: untruncated - TEMPLATE_DROP,
                    kept: MAX_SEQUENCE_LENGTH,
                });
            }
            let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            let ids = Array::from_slice(&ids, &[1, n as i32]);
            let states = encoder
                .encode(&ids)
                .map_err(mlx("running the text encoder"))?;
            let keep = rows.min(MAX_SEQUENCE_LENGTH) as i32;
            let start = TEMPLATE_DROP as i32;
            let parts = ops::split_at_indices(&states, &[start, start + keep], 1)
                .map_err(mlx("slicing the prompt embeddings"))?;
            let emb = parts.into_iter().nth(1).ok_or_else(|| PipelineError::Mlx {
                what: "slicing the prompt embeddings",
                message: "no middle part".into(),
            })?;
            emb.eval().map_err(mlx("running the text encoder"))?;
            Ok(emb)
        };
        let prompt = one("prompt", prompt)?;
        let negative = match negative {
            Some(n) => Some(one("negative prompt", n)?),
            None => None,
        };
        Ok(Embeddings { prompt, negative })
    }

    /// Standard normal noise from `seed` (MLX's generator), drawn `[1, 16, h, w]`, packed.
    pub fn noise(&self, seed: u64) -> Result<Array> {
        let (gh, gw) = self.grid();
        let key = random::key(seed).map_err(mlx("making the random key"))?;
        let shape = [1, LATENT_CHANNELS as i32, 2 * gh as i32, 2 * gw as i32];
        let noise = random::normal::<f32>(&shape[..], None, None, &key)
            .map_err(mlx("drawing the noise"))?;
        pack(&noise, gh, gw).map_err(mlx("packing the noise"))
    }

    /// Runs a whole generation.
    pub fn generate(
        &self,
        request: &Request,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Generation> {
        if request.steps == 0 {
            return Err(PipelineError::Request("steps must be at least 1".into()));
        }
        if !request.cfg_scale.is_finite() {
            return Err(PipelineError::Request(format!(
                "cfg scale {} is not a finite number",
                request.cfg_scale
            )));
        }
        if let Some(l) = &request.latents {
            self.check_latents(l)?;
        }
        let mut warnings = Vec::new();
        let guided = request.cfg_scale > 1.0 && request.negative_prompt.is_some();
        let negative = if guided {
            request.negative_prompt.as_deref()
        } else {
            None
        };

        let start = std::time::Instant::now();
        let emb = self.encode(&request.prompt, negative, &mut warnings)?;
        let encode_s = start.elapsed().as_secs_f64();
        for w in &warnings {
            on_event(Event::Warning(w));
        }

        let start = std::time::Instant::now();
        let latents = match &request.latents {
            Some(l) => l
                .as_dtype(Dtype::Float32)
                .map_err(mlx("reading the initial latents"))?,
            None => self.noise(request.seed)?,
        };
        let latents = self.denoise(
            latents,
            &emb,
            request.steps,
            request.cfg_scale,
            &mut |done, total| on_event(Event::Step { done, total }),
        )?;
        let denoise_s = start.elapsed().as_secs_f64();

        let start = std::time::Instant::now();
        let decoded = self.decode(&latents)?;
        let image = RgbImage::from_array(&decoded)?;
        let decode_s = start.elapsed().as_secs_f64();
        Ok(Generation {
            latents,
            decoded,
            image,
            warnings,
            timings: Timings {
                encode: encode_s,
                denoise: denoise_s,
                decode: decode_s,
            },
        })
    }

    fn check_latents(&self, latents: &Array) -> Result<()> {
        let expected = vec![1, self.image_seq_len() as i32, PACKED_CHANNELS as i32];
        if latents.shape() != expected.as_slice() {
            return Err(PipelineError::LatentsShape {
                expected,
                got: latents.shape().to_vec(),
            });
        }
        Ok(())
    }

    /// The denoise loop from packed latents `[1, L_img, 64]`; returns the final latents (f32).
    pub fn denoise(
        &self,
        latents: Array,
        emb: &Embeddings,
        steps: usize,
        cfg_scale: f32,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Array> {
        self.check_latents(&latents)?;
        let schedule = self.scheduler.schedule(steps, self.image_seq_len())?;
        let cast = |a: &Array| a.as_dtype(self.dtype).map_err(mlx("casting"));
        let bound = self
            .transformer
            .bind(
                cast(&emb.prompt)?,
                emb.negative.as_ref().map(cast).transpose()?,
            )
            .map_err(mlx("building the rope tables"))?;
        let mut x = cast(&latents)?;
        for i in 0..schedule.steps() {
            // diffusers passes `t / 1000` with t = sigma · 1000, in f32.
            // diffusers passes `t / 1000` with t = sigma · 1000. Kept in f32 for every run
            // dtype (the generated transformer takes an f32 timestep and casts its embedding);
            // a bf16 diffusers run rounds t and t/1000 to bf16 (spacing 4 near t = 1000),
            // which moved the bf16 result 4× further from the f32 reference when tried.
            let t = Array::from_slice(&[schedule.timesteps[i] / 1000.0], &[1]);
            let (cond, uncond) = bound
                .velocity(&x, &t)
                .map_err(mlx("running the transformer"))?;
            let v = match uncond {
                Some(u) => true_cfg(&cond, &u, cfg_scale).map_err(mlx("combining cfg"))?,
                None => cond,
            };
            x = euler_step_array(&x, &v, schedule.sigmas[i], schedule.sigmas[i + 1])
                .map_err(mlx("taking the euler step"))?;
            x.eval().map_err(mlx("running the transformer"))?;
            on_step(i + 1, schedule.steps());
        }
        x.as_dtype(Dtype::Float32).map_err(mlx("casting"))
    }

    /// Packed latents → decoder output `[1, 3, H, W]` f32, clamped to [−1, 1].
    pub fn decode(&self, latents: &Array) -> Result<Array> {
        let (gh, gw) = self.grid();
        let run = || -> Result<Array, Exception> {
            let z = unpack_nhwc(&latents.as_dtype(Dtype::Float32)?, gh, gw)?;
            // diffusers: z / (1 / std) + mean, in f32.
            let inv: Vec<f32> = self.latents_std.iter().map(|s| 1.0 / s).collect();
            let inv = Array::from_slice(&inv, &[LATENT_CHANNELS as i32]);
            let mean = Array::from_slice(&self.latents_mean, &[LATENT_CHANNELS as i32]);
            let z = ops::add(&ops::divide(&z, &inv)?, &mean)?.as_dtype(self.dtype)?;
            let y = self.vae.decode(&z)?;
            let y = ops::clip(&y.as_dtype(Dtype::Float32)?, (-1.0f32, 1.0f32))?;
            let y = ops::transpose_axes(&y, &[0, 3, 1, 2])?;
            y.eval()?;
            Ok(y)
        };
        run().map_err(mlx("running the vae decoder"))
    }

    /// PNG text chunks describing a generation.
    pub fn metadata(&self, request: &Request) -> Vec<(String, String)> {
        let r = self.resolution();
        let mut m = BTreeMap::new();
        m.insert("prompt", request.prompt.clone());
        if let Some(n) = &request.negative_prompt {
            m.insert("negative_prompt", n.clone());
        }
        m.insert("steps", request.steps.to_string());
        m.insert("true_cfg_scale", request.cfg_scale.to_string());
        m.insert(
            "seed",
            if request.latents.is_some() {
                "none (initial latents given)".into()
            } else {
                request.seed.to_string()
            },
        );
        m.insert("width", r.width.to_string());
        m.insert("height", r.height.to_string());
        m.insert("module", self.variant.name().to_owned());
        m.insert("dtype", format!("{:?}", self.dtype));
        m.insert("model", self.dir.display().to_string());
        m.insert(
            "software",
            format!("qwen-aot {}", env!("CARGO_PKG_VERSION")),
        );
        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// `[1, 16, h, w]` → `[1, gh·gw, 64]`: token = row·gw + col, channel = c·4 + dy·2 + dx.
pub fn pack(x: &Array, gh: usize, gw: usize) -> Result<Array, Exception> {
    let (gh, gw) = (gh as i32, gw as i32);
    let c = LATENT_CHANNELS as i32;
    let x = ops::reshape(x, &[1, c, gh, 2, gw, 2])?;
    let x = ops::transpose_axes(&x, &[0, 2, 4, 1, 3, 5])?;
    ops::reshape(&x, &[1, gh * gw, c * 4])
}

/// `[1, gh·gw, 64]` → NHWC `[1, h, w, 16]` (the inverse of [`pack`], channels last).
pub fn unpack_nhwc(x: &Array, gh: usize, gw: usize) -> Result<Array, Exception> {
    let (gh, gw) = (gh as i32, gw as i32);
    let c = LATENT_CHANNELS as i32;
    let x = ops::reshape(x, &[1, gh, gw, c, 2, 2])?;
    let x = ops::transpose_axes(&x, &[0, 1, 4, 2, 5, 3])?;
    ops::reshape(&x, &[1, 2 * gh, 2 * gw, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each `specialize!(res = ...)` line of `specializations.rs` declares, read from
    /// the source text: (module name, resolution, config, joint CFG).
    fn declared_modules() -> Vec<(String, Resolution, ModelConfig, bool)> {
        include_str!("specializations.rs")
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("specialize!(res"))
            .map(|l| {
                let args = &l["specialize!(".len()..l.len() - 2];
                let (mut name, mut res) = (String::new(), None);
                let (mut config, mut joint) = (ModelConfig::Real, false);
                for arg in args.split(',') {
                    let (k, v) = arg.split_once('=').unwrap();
                    match (k.trim(), v.trim()) {
                        ("res", r) => {
                            name = format!("res{r}");
                            res = Some(r.parse::<Resolution>().unwrap());
                        }
                        ("config", "tiny") => {
                            name.push_str("_tiny");
                            config = ModelConfig::Tiny;
                        }
                        ("cfg", "split") => {
                            name.push_str("_split");
                            joint = true;
                        }
                        other => panic!("unknown specialize! argument {other:?}"),
                    }
                }
                (name, res.unwrap(), config, joint)
            })
            .collect()
    }

    /// The registry `specializations!` makes has exactly the resolution modules of the
    /// `specialize!` lines, in their order, each with its resolution, config and CFG mode.
    #[test]
    fn registry_is_the_specialize_lines() {
        let declared = declared_modules();
        assert!(declared.len() >= 4, "{declared:?}");
        let registry: Vec<(String, Resolution, ModelConfig, bool)> = VARIANTS
            .iter()
            .map(|v| {
                (
                    v.name().to_owned(),
                    v.resolution(),
                    v.config(),
                    v.joint_cfg(),
                )
            })
            .collect();
        assert_eq!(registry, declared);
        for v in VARIANTS {
            assert!(variant_by_name(v.name()).is_some_and(|w| std::ptr::addr_eq(w, *v)));
        }
        // a joint-CFG module wins over a batched one of the same resolution and config
        let tiny = Resolution {
            width: 96,
            height: 64,
        };
        let v = find_variant(tiny, ModelConfig::Tiny).unwrap();
        assert_eq!(v.name(), "res96x64_tiny_split");
    }

    #[test]
    fn resolutions_parse() {
        let r = |s: &str| s.parse::<Resolution>();
        assert_eq!(
            r("1024"),
            Ok(Resolution {
                width: 1024,
                height: 1024
            })
        );
        assert_eq!(
            r("96x64"),
            Ok(Resolution {
                width: 96,
                height: 64
            })
        );
        assert_eq!(r("1664X928").map(|r| r.to_string()), Ok("1664x928".into()));
        for bad in ["", "x", "0", "96x", "12y", "-5", "96x64x2"] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn template_splits_at_the_prompt() {
        let t = format_prompt("fox");
        assert!(t.starts_with("<|im_start|>system\nDescribe the image"));
        assert!(t.ends_with("<|im_end|>\n<|im_start|>user\nfox<|im_end|>\n<|im_start|>assistant\n"));
        // a `{}` in the prompt is not a placeholder
        assert!(format_prompt("{}").contains("user\n{}<|im_end|>"));
    }
}
