//! The runtime of qwen-aot: what the generated model code needs around it.
//!
//! - [`device`]: pick the MLX device (GPU when the loaded libmlx has one, else CPU).
//! - [`weights`]: memory-map safetensors checkpoints (single file or sharded with a
//!   `*.safetensors.index.json`), check them against what a model expects, and hand out
//!   tensors as MLX arrays.
//! - [`tokenizer`]: byte-level BPE tokenizer from a published `tokenizer/` folder: vocab.json
//!   + merges.txt, or tokenizer.json alone (through the tokenizers crate).
//! - [`scheduler`]: flow-matching Euler sigma schedules (dynamic / static shift, terminal
//!   stretch) from `scheduler_config.json`, and the Euler step.
//! - [`guidance`]: true classifier-free guidance with per-token norm rescaling.
//! - [`kernels`]: custom CUDA kernels through MLX, where the loaded libmlx has CUDA.
//! - [`lora`]: LoRA adapters (diffusers/PEFT and kohya keys), fused into the weights at load.
//! - [`quant`]: affine quantization of linear layers' weights, and the linear that runs
//!   dense or quantized weights.
//! - [`image`]: decoded tensors to 8-bit RGB as diffusers does, PNG with text metadata,
//!   written atomically.
//! - [`files`]: only regular files are opened (a FIFO would block).
//! - [`error`]: the error types, which name the file and the tensor.
//!
//! This crate knows nothing about Qwen or the graph DSL; model knowledge lives in
//! `models/qwen`.

pub mod attention;
pub mod device;
pub mod distributed;
pub mod error;
pub mod files;
pub mod guidance;
pub mod image;
pub mod kernels;
pub mod lora;
pub mod quant;
pub mod resample;
pub mod rope;
pub mod scheduler;
pub mod tiles;
pub mod tokenizer;
pub mod weights;

pub use device::{Backend, ChosenDevice};
pub use error::{DeviceError, ImageError, SchedulerError, TokenizerError, WeightError};
pub use image::RgbImage;
pub use scheduler::{Schedule, SchedulerConfig};
pub use tokenizer::Tokenizer;
pub use weights::{Checkpoint, Dtype, Extra, Staging, TensorSpec};

/// Re-exports for generated code, which refers to `::qwen_runtime::__private::mlx_rs`
/// so that the crates it expands in need no direct mlx-rs dependency.
#[doc(hidden)]
pub mod __private {
    pub use mlx_rs;
}
