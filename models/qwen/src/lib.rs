//! qwen: Qwen-Image specializations and pipeline.
//!
//! [`specializations`] holds one `specialize!` line per resolution; each expands to a
//! module of shape-specialized mlx-rs code with the same item names (`transformer`,
//! `dual_stream_block`, `rope`, `vae_up1_resnet0`, their `*Weights` structs, and consts).

pub mod cli;
pub mod edit;
pub mod model_dir;
pub mod output;
pub mod pipeline;
pub mod quantize;
pub mod quantize_folder;
pub mod specializations;
pub mod vision;
