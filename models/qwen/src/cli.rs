//! Command-line choices shared by `qwen-run` and `qwen-bench` (clap value enums).

use qwen_runtime::__private::mlx_rs::Dtype;
use qwen_runtime::device::{self, Backend, ChosenDevice};
use qwen_runtime::DeviceError;

/// `--device`: where MLX runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The GPU when the loaded libmlx has one, else the CPU.
    Auto,
    Cpu,
    Gpu,
}

impl DeviceArg {
    /// The device (not yet made the default); `gpu` without one is an error.
    pub fn choose(self) -> Result<ChosenDevice, DeviceError> {
        match self {
            DeviceArg::Auto => Ok(device::choose()),
            DeviceArg::Cpu => Ok(device::cpu()),
            DeviceArg::Gpu => device::select(Backend::Gpu),
        }
    }
}

/// `--dtype`: the compute dtype (weights of any stored float dtype are converted at load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeArg {
    Bf16,
    F16,
    F32,
}

impl DtypeArg {
    /// The default for a device: bf16 on a GPU (the published model in f32 needs 82 GB for
    /// the transformer alone), f32 on the CPU (where bf16 is slow and the reference is f32).
    pub fn default_for(device: &ChosenDevice) -> Self {
        match device.backend {
            Backend::Gpu => DtypeArg::Bf16,
            Backend::Cpu => DtypeArg::F32,
        }
    }

    pub fn mlx(self) -> Dtype {
        match self {
            DtypeArg::Bf16 => Dtype::Bfloat16,
            DtypeArg::F16 => Dtype::Float16,
            DtypeArg::F32 => Dtype::Float32,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DtypeArg::Bf16 => "bf16",
            DtypeArg::F16 => "f16",
            DtypeArg::F32 => "f32",
        }
    }
}

/// `FILE` or `FILE:SCALE` (a finite scale after the last `:`; otherwise all of it is the
/// file name): `--lora`.
pub fn parse_lora(s: &str) -> Result<(std::path::PathBuf, f32), String> {
    if let Some(file) = s.strip_suffix(':') {
        return Err(format!(
            "`{s}`: no scale after `:` (give {file}:SCALE, or {file})"
        ));
    }
    if let Some((file, scale)) = s.rsplit_once(':') {
        if let Ok(v) = scale.parse::<f32>() {
            if !v.is_finite() {
                return Err(format!("scale {scale} is not a finite number"));
            }
            return Ok((std::path::PathBuf::from(file), v));
        }
    }
    Ok((std::path::PathBuf::from(s), 1.0))
}

/// `--vae-tiling`: when the VAE decodes in tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VaeTilingArg {
    /// When the untiled decode would not fit the memory budget.
    Auto,
    /// Always (where the image is larger than one tile: 256 px).
    On,
    /// Never.
    Off,
}

impl VaeTilingArg {
    pub fn mode(self) -> crate::pipeline::VaeTiling {
        use crate::pipeline::VaeTiling;
        match self {
            VaeTilingArg::Auto => VaeTiling::Auto,
            VaeTilingArg::On => VaeTiling::On,
            VaeTilingArg::Off => VaeTiling::Off,
        }
    }
}
