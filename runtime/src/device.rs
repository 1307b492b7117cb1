//! Which MLX device to run on.
//!
//! mlx-rs 0.33 cannot ask whether a GPU exists, and `Device::gpu()` on a CPU-only libmlx
//! panics at first use. This module asks mlx-c (`mlx_device_count`,
//! `mlx_device_is_available`) and falls back to the CPU, so one binary runs against
//! the CPU wheel and, with the CUDA libmlx on the library path, on the GPU.

use std::ffi::{CStr, CString};
use std::fmt;

use mlx_rs::{Device, DeviceType};

use crate::error::DeviceError;

/// The kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Cpu,
    Gpu,
}

impl Backend {
    fn raw(self) -> mlx_sys::mlx_device_type {
        match self {
            Backend::Cpu => mlx_sys::mlx_device_type__MLX_CPU,
            Backend::Gpu => mlx_sys::mlx_device_type__MLX_GPU,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
        })
    }
}

/// A device that exists in the loaded libmlx.
pub struct ChosenDevice {
    pub device: Device,
    pub backend: Backend,
    /// What MLX calls it, e.g. `gpu:0 (NVIDIA H100 80GB HBM3)` or `cpu:0`.
    pub name: String,
}

impl ChosenDevice {
    /// Makes this the device MLX uses when an operation names none.
    pub fn set_default(&self) {
        Device::set_default(&self.device);
    }
}

impl fmt::Debug for ChosenDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChosenDevice")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .finish()
    }
}

/// How many devices of this kind the loaded libmlx offers (0 when it cannot say).
pub fn count(backend: Backend) -> usize {
    init_error_handler();
    let mut n: std::os::raw::c_int = 0;
    // SAFETY: `n` is a valid out-pointer; mlx-c reports failure through the status.
    let status = unsafe { mlx_sys::mlx_device_count(&mut n, backend.raw()) };
    if status == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// GPU 0 when the loaded libmlx has a usable one, else the CPU. Never panics.
pub fn choose() -> ChosenDevice {
    match select(Backend::Gpu) {
        Ok(gpu) => gpu,
        Err(_) => cpu(),
    }
}

/// The CPU device.
pub fn cpu() -> ChosenDevice {
    let device = Device::new(DeviceType::Cpu, 0);
    let name = describe(Backend::Cpu, 0);
    ChosenDevice {
        device,
        backend: Backend::Cpu,
        name,
    }
}

/// Device 0 of the given kind, or an error if the loaded libmlx has none.
pub fn select(backend: Backend) -> Result<ChosenDevice, DeviceError> {
    if backend == Backend::Cpu {
        return Ok(cpu());
    }
    if count(Backend::Gpu) == 0 {
        return Err(DeviceError::NoGpu);
    }
    init_error_handler();
    let mut available = false;
    let raw = RawDevice::new(Backend::Gpu, 0);
    // SAFETY: `available` is a valid out-pointer and `raw` a live device handle.
    let status = unsafe { mlx_sys::mlx_device_is_available(&mut available, raw.0) };
    if status != 0 {
        return Err(DeviceError::Mlx {
            what: "tell whether gpu 0 is available",
            message: format!("status {status}"),
        });
    }
    if !available {
        return Err(DeviceError::NoGpu);
    }
    let device = Device::new(DeviceType::Gpu, 0);
    let name = describe(Backend::Gpu, 0);
    Ok(ChosenDevice {
        device,
        backend: Backend::Gpu,
        name,
    })
}

/// `gpu:0` plus, where MLX knows it, the product name: `gpu:0 (NVIDIA H100 80GB HBM3)`.
fn describe(backend: Backend, index: i32) -> String {
    let base = format!("{backend}:{index}");
    match info_string(&RawDevice::new(backend, index), "device_name") {
        Some(product) if !product.is_empty() => format!("{base} ({product})"),
        _ => base,
    }
}

/// A string entry of MLX's device info, if the device has it.
fn info_string(device: &RawDevice, key: &str) -> Option<String> {
    init_error_handler();
    let key = CString::new(key).ok()?;
    // SAFETY: every out-pointer is valid, `info` is freed on every path after creation,
    // and the returned C string is copied before `info` is freed.
    unsafe {
        let mut info = mlx_sys::mlx_device_info_new();
        let mut value: Option<String> = None;
        if mlx_sys::mlx_device_info_get(&mut info, device.0) == 0 {
            let mut exists = false;
            let mut is_string = false;
            if mlx_sys::mlx_device_info_has_key(&mut exists, info, key.as_ptr()) == 0
                && exists
                && mlx_sys::mlx_device_info_is_string(&mut is_string, info, key.as_ptr()) == 0
                && is_string
            {
                let mut ptr: *const std::os::raw::c_char = std::ptr::null();
                if mlx_sys::mlx_device_info_get_string(&mut ptr, info, key.as_ptr()) == 0
                    && !ptr.is_null()
                {
                    value = Some(CStr::from_ptr(ptr).to_string_lossy().into_owned());
                }
            }
        }
        mlx_sys::mlx_device_info_free(info);
        value
    }
}

/// An mlx-c device handle of our own, freed on drop (mlx-rs keeps its handle private).
struct RawDevice(mlx_sys::mlx_device);

impl RawDevice {
    fn new(backend: Backend, index: i32) -> RawDevice {
        // SAFETY: creating a device handle has no preconditions; it is freed in drop.
        RawDevice(unsafe { mlx_sys::mlx_device_new_type(backend.raw(), index) })
    }
}

impl Drop for RawDevice {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is freed once.
        unsafe { mlx_sys::mlx_device_free(self.0) };
    }
}

/// mlx-c's default error handler exits the process. mlx-rs installs its own (errors
/// become status codes) at its first fallible call; make that happen before any raw
/// mlx-c call here.
fn init_error_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = Device::try_default();
    });
}
