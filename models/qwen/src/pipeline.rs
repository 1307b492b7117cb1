//! The Qwen-Image text-to-image pipeline: prompt → text encoder → denoise loop → VAE → PNG.
//!
//! [`Pipeline::open`] reads a model folder in the diffusers layout (`model_index.json`,
//! `tokenizer/`, `text_encoder/`, `transformer/`, `vae/`, `scheduler/`), works out which
//! config the checkpoint has (from `transformer/config.json`), picks the generated module for
//! the requested resolution and that config (see [`VARIANTS`]), checks the folder's json
//! against that module ([`PIPELINE_CLASS`]; every field of the component configs the module
//! depends on; finite, in-range latent statistics and scheduler values; token ids within the
//! text encoder's embedding table), checks the weights of all three networks against what
//! that module expects (every problem of every component in one error), and loads the
//! transformer and the VAE decoder (the text encoder too when all three fit, see
//! [`encoder_fits`]). [`Pipeline::generate`] then runs the steps of spec §1 in diffusers'
//! order:
//!
//! 1. each prompt in the Qwen template ([`PROMPT_TEMPLATE`]), tokenized as one string and cut
//!    at `1024 + 34` tokens; the generated text encoder (the resident one, or loaded here and
//!    dropped before the loop); the first 34 rows dropped; the rest cut to
//!    `max_sequence_length` (512);
//! 2. initial latents: the given ones, or standard normal noise from an MLX key of the seed,
//!    drawn as `[1, 16, h, w]` and packed to `[1, L_img, 64]`;
//! 3. the flow-match schedule for `L_img`; per step one transformer evaluation of both CFG
//!    halves (one call where the module joins them, else two), true CFG with norm rescale,
//!    the Euler step, and one `eval` that also reduces the latents to one "all finite"
//!    flag (a NaN or an infinity stops the run, [`PipelineError::NonFinite`]);
//! 4. unpack to NHWC, de-normalise with `latents_mean` / `latents_std` of `vae/config.json`,
//!    the generated VAE decoder, clamp to [−1, 1], and 8-bit RGB as diffusers' postprocess.
//!
//! Seeded noise comes from MLX's generator, so it cannot equal torch's; pass the initial
//! latents ([`Request::latents`]) for bit-comparable runs.
//!
//! One file per concern under `pipeline/`: `error` (errors and warnings), `config`
//! (resolutions, configs, the folder's json), `checks` (the folder's json and token ids
//! against the generated module, before anything is loaded), `variant` (the face of a
//! generated module and the list of them; `variants` implements it), `open`, `prompt`
//! (template, tokenizer, text encoder), `latents` (packing and noise) and `generate`
//! (denoise, decode, metadata).

use std::fmt;
use std::path::PathBuf;

use qwen_runtime::__private::mlx_rs::Dtype;
use qwen_runtime::weights::Checkpoint;
use qwen_runtime::{SchedulerConfig, Tokenizer};

mod checks;
mod config;
mod error;
mod generate;
mod latents;
mod open;
mod prompt;
mod variant;
mod variants;

pub use checks::PIPELINE_CLASS;
pub use config::{detect_config, ModelConfig, Resolution};
use error::{mlx, Result};
pub use error::{PipelineError, Warning, SHOWN_PROBLEMS};
pub use generate::{Event, Generation, Request, Timings};
pub use latents::{pack, unpack_nhwc};
pub use open::{encoder_fits, Options};
pub use prompt::{
    format_prompt, Embeddings, MAX_SEQUENCE_LENGTH, PROMPT_TEMPLATE, TEMPLATE_DROP,
    TOKENIZER_MAX_LENGTH,
};
pub use variant::{
    find_variant, variant_by_name, Decoder, Denoiser, Step, TextEncoder, Variant, VARIANTS,
};

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

impl Pipeline {
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
}
