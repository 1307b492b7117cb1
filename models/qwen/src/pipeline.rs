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
//! VAE decoder, and the other networks too when everything fits the memory budget (which
//! networks stay loaded is one rule, in [`memory`]). [`Pipeline::generate`] then runs the
//! steps of spec §1 in diffusers' order, each stage loading its network if it is not loaded:
//!
//! 1. each prompt in the Qwen template ([`PROMPT_TEMPLATE`]), tokenized as one string and cut
//!    at `1024 + 34` tokens; the generated text encoder; the first 34 rows dropped; the rest
//!    cut to `max_sequence_length` (512);
//! 2. initial latents: the given ones, or standard normal noise from an MLX key of the seed,
//!    drawn as `[1, 16, h, w]` and packed to `[1, L_img, 64]`;
//! 3. the flow-match schedule for `L_img`; the generated timestep modulation of all its
//!    timesteps at once (kept for the next generation with the same schedule); per step one
//!    transformer evaluation of both CFG halves (one call where the module joins them, else
//!    two) with that step's modulation, true CFG with norm rescale, the Euler step, and one
//!    `eval` that also reduces the latents to one "all finite" flag (a NaN or an infinity
//!    stops the run, [`PipelineError::NonFinite`]);
//! 4. unpack to NHWC, de-normalise with `latents_mean` / `latents_std` of `vae/config.json`,
//!    the generated VAE decoder, clamp to [−1, 1], and 8-bit RGB as diffusers' postprocess.
//!
//! Seeded noise comes from MLX's generator, so it cannot equal torch's; pass the initial
//! latents ([`Request::latents`]) for bit-comparable runs.
//!
//! One file per concern under `pipeline/`: `error` (errors and warnings), `config`
//! (resolutions, configs, the folder's json), `checks` (the folder's json and token ids
//! against the generated module, before anything is loaded), `variant` (the face of a
//! generated module and the list of them; `variants` implements it), `open`, `memory`
//! (what stays loaded), `prompt`
//! (template, tokenizer, text encoder), `latents` (packing and noise) and `generate`
//! (denoise, decode, metadata).

use std::fmt;
use std::path::PathBuf;

use qwen_runtime::__private::mlx_rs::Dtype;
use qwen_runtime::weights::Checkpoint;
use qwen_runtime::{SchedulerConfig, Tokenizer};

mod checks;
mod config;
mod edit;
mod error;
mod generate;
mod latents;
pub mod memory;
mod open;
mod parallel;
mod prompt;
mod variant;
mod variants;

pub use checks::PIPELINE_CLASS;
pub use config::{detect_config, ModelConfig, Resolution};
pub use edit::{EditRequest, PromptPositions};
use error::{mlx, Result};
pub use error::{PipelineError, Warning, SHOWN_PROBLEMS};
pub use generate::{Event, Generation, Request, Timings};
pub use latents::{pack, unpack_nhwc};
pub use memory::Network;
pub use open::{OpenTimings, Options, VaeTiling};
pub use parallel::{plan_ranks, RankPlan};
pub use prompt::{
    edit_token_ids, format_edit_prompt, format_prompt, Embeddings, EDIT_PROMPT_TEMPLATE,
    EDIT_TEMPLATE_DROP, IMAGE_PAD, MAX_SEQUENCE_LENGTH, PROMPT_TEMPLATE, TEMPLATE_DROP,
    TOKENIZER_MAX_LENGTH,
};
pub use variant::{
    find_one_text_variant, find_sequence_variant, find_variant, sequence_modules, variant_by_name,
    Decoder, Denoiser, EditDenoiser, EditEncoder, EditModulation, EditText, ImageEncoder,
    ModulationTable, Modulator, Step, TextEncoder, Variant, VARIANTS,
};

/// An opened model: checked, the VAE loaded, the other networks loaded as [`memory`]'s rule
/// says (all of them at open when everything fits the budget).
pub struct Pipeline {
    dir: PathBuf,
    variant: &'static dyn Variant,
    dtype: Dtype,
    tokenizer: Tokenizer,
    scheduler: SchedulerConfig,
    latents_mean: Vec<f32>,
    latents_std: Vec<f32>,
    /// Where the networks that come and go are loaded from.
    checkpoints: Checkpoints,
    loaded: memory::LoadedCell,
    /// What the rule works with (an edit sets its step's estimates for its references).
    sizes: std::cell::Cell<memory::Sizes>,
    /// Bytes the networks and their work may take.
    budget: usize,
    /// Which linear layers are quantized at load.
    quantize: Option<crate::quantize::Quantization>,
    /// LoRA adapters fused into the transformer's weights at load.
    loras: qwen_runtime::lora::Loras,
    /// The Lightning schedule instead of the folder's.
    lightning: bool,
    /// When the VAE decodes in tiles.
    vae_tiling: VaeTiling,
    /// How a transformer folder `qwen-run quantize` wrote is quantized (its quantized
    /// layers are loaded as stored).
    stored_quantization: Option<crate::quantize_folder::StoredQuantization>,
    vae: Box<dyn Decoder>,
    /// Where the open's time went.
    open_timings: OpenTimings,
    /// The VAE encoder, loaded by the first [`Pipeline::encode_image`].
    image_encoder: std::cell::OnceCell<Box<dyn ImageEncoder>>,
    /// What the pipeline was opened for: which networks the text encoder's and the
    /// denoiser's places in [`memory`]'s rule hold.
    purpose: Purpose,
}

/// What a pipeline runs ([`Options::edit`]): generations, or edits (the text encoder's place
/// then holds the vision tower and the text encoder with images, the denoiser's the edit
/// transformer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Generate,
    /// Edit-2509, or Edit-2511 with `zero_cond_t` (from `transformer/config.json`).
    Edit {
        zero_cond: bool,
    },
}

/// The opened (memory-mapped, checked) checkpoints networks are loaded from.
struct Checkpoints {
    text_encoder: Checkpoint,
    transformer: Checkpoint,
    vae: Checkpoint,
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
    /// An error unless the pipeline was opened for generations.
    fn for_generations(&self) -> Result<()> {
        match self.purpose {
            Purpose::Generate => Ok(()),
            Purpose::Edit { .. } => Err(PipelineError::Request(
                "this pipeline was opened for edits (Options::edit): open it without to generate"
                    .into(),
            )),
        }
    }

    /// What the pipeline was opened for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The generated module in use.
    pub fn variant(&self) -> &'static dyn Variant {
        self.variant
    }

    pub fn resolution(&self) -> Resolution {
        self.variant.resolution()
    }
}
