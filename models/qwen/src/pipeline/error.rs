//! What can go wrong between a model folder and a PNG ([`PipelineError`]), and what the user
//! should know that did not stop the run ([`Warning`]).

use std::fmt;
use std::path::PathBuf;

use qwen_runtime::__private::mlx_rs::error::Exception;
use qwen_runtime::error::Listed;
use qwen_runtime::{ImageError, SchedulerError, TokenizerError, WeightError};

use super::{ModelConfig, Resolution};

/// Everything that can go wrong between a model folder and a PNG.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("model folder not found: {}", path.display())]
    ModelNotFound { path: PathBuf },

    #[error("{} is not a Qwen-Image model folder: {reason}", path.display())]
    NotAModel { path: PathBuf, reason: String },

    #[error("cannot read {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    #[error(transparent)]
    Lora(#[from] qwen_runtime::lora::LoraError),

    /// A file or folder `qwen-run quantize` could not write.
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },

    /// A json file of the folder that is not what the run needs: not json, another
    /// pipeline, a value out of range.
    #[error("invalid {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },

    /// The component configs describe other networks than the generated module was built
    /// for: every differing field of every file, each as `file: field is found, expected`.
    #[error(
        "the configs in {} do not fit the generated module {module} ({}): {}",
        path.display(), Count(problems.len(), "problem"), problems.join("; ")
    )]
    ConfigMismatch {
        path: PathBuf,
        module: &'static str,
        problems: Vec<String>,
    },

    /// A token's id is past the text encoder's embedding table.
    #[error(
        "token `{token}` in {} has id {id}, past the text encoder's embedding table of {rows} rows",
        dir.display()
    )]
    TokenId {
        dir: PathBuf,
        token: String,
        id: u32,
        rows: usize,
    },

    #[error(
        "{} describes a transformer ({found}) that matches no generated config; available: {}",
        path.display(), available.join("; ")
    )]
    /// `path` is the transformer's `config.json`.
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
        "the checkpoint in {} does not fit the generated module {module} ({}): {}",
        path.display(), Count(problems.len(), "problem"), Listed { items: problems, shown: SHOWN_PROBLEMS, sep: "; " }
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

    /// The latents held a NaN or an infinity after denoising step `step` (1-based).
    #[error("the latents are not finite (NaN or infinity) after denoising step {step} of {steps}")]
    NonFinite { step: usize, steps: usize },

    #[error("bad request: {0}")]
    Request(String),

    /// An MLX call failed; `source` is MLX's exception.
    #[error("mlx failed while {what}")]
    Mlx {
        what: &'static str,
        source: Exception,
    },
}

/// `1 problem`, `2 problems`.
struct Count(usize, &'static str);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} {}{s}", self.0, self.1)
    }
}

/// Problems shown in a [`PipelineError::Mismatch`] message.
pub const SHOWN_PROBLEMS: usize = 10;

pub(super) type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// `map_err(mlx("doing what"))`: an MLX exception as [`PipelineError::Mlx`].
pub(super) fn mlx(what: &'static str) -> impl FnOnce(Exception) -> PipelineError {
    move |source| PipelineError::Mlx { what, source }
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
