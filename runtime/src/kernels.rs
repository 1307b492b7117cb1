//! Custom CUDA kernels through MLX (mlx-c's `mlx_fast_cuda_kernel_*`, the C face of
//! `mx.fast.cuda_kernel`), for code that fuses elementwise chains MLX would run as several
//! passes over memory.
//!
//! A [`CudaKernel`] is a `static` (name, argument names, source): MLX wraps the source in a
//! `__global__` function whose parameters are the inputs (`const T* name`, plus
//! `name_shape` when the source mentions it) and the outputs (`T* name`), and compiles it
//! with NVRTC on first use, once per process and template arguments. The grid counts
//! threads, not blocks.
//!
//! Kernels run only where they can: a libmlx with CUDA, the default device a GPU, and
//! `QWEN_FUSED_KERNELS` not set to `0`. Everywhere else ([`CudaKernel::ready`] is `None`)
//! the caller runs its plain MLX ops, which are also the reference the kernels are
//! checked against.

use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype, Stream};

/// A template argument of a kernel (`constexpr int` / `bool`, or `using` a dtype).
#[derive(Debug, Clone, Copy)]
pub enum TemplateArg {
    Dtype(&'static str, Dtype),
    Int(&'static str, i32),
    Bool(&'static str, bool),
}

/// How one call runs: outputs (shape, dtype), total threads per axis, threads per block.
#[derive(Debug, Clone)]
pub struct Launch {
    pub outputs: Vec<(Vec<i32>, Dtype)>,
    pub grid: [i32; 3],
    pub block: [i32; 3],
    pub template: Vec<TemplateArg>,
}

/// One kernel: its source is compiled by MLX on first use.
#[derive(Debug)]
pub struct CudaKernel {
    name: &'static str,
    inputs: &'static [&'static str],
    outputs: &'static [&'static str],
    source: &'static str,
    header: &'static str,
    raw: OnceLock<Result<Raw, String>>,
}

#[derive(Debug)]
struct Raw(mlx_sys::mlx_fast_cuda_kernel);

// SAFETY: the handle points at an immutable MLX `CustomKernelFunction`; MLX itself calls it
// from any thread.
unsafe impl Send for Raw {}
unsafe impl Sync for Raw {}

/// True when fused kernels can run now: CUDA in the loaded libmlx, the default device a GPU,
/// and not switched off by `QWEN_FUSED_KERNELS=0`.
pub fn enabled() -> bool {
    cuda_gpu() && switch(&FUSED, "QWEN_FUSED_KERNELS")
}

/// True when the loaded libmlx has CUDA and the default device is a GPU.
pub fn cuda_gpu() -> bool {
    static CUDA: OnceLock<bool> = OnceLock::new();
    let cuda = *CUDA.get_or_init(|| {
        let mut ok = false;
        // SAFETY: plain query into a bool.
        let status = unsafe { mlx_sys::mlx_cuda_is_available(&mut ok) };
        status == 0 && ok
    });
    cuda && default_device_is_gpu()
}

/// An on/off switch: 0 = from the environment variable (on unless `0`), 1 = on, 2 = off.
static FUSED: AtomicU8 = AtomicU8::new(0);
/// 0 = from `QWEN_COMPILE` or the default, 1 = on, 2 = off.
static COMPILE: AtomicU8 = AtomicU8::new(0);
static PIPELINE: AtomicU8 = AtomicU8::new(0);

fn switch(s: &AtomicU8, var: &str) -> bool {
    match s.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => !std::env::var(var).is_ok_and(|v| v == "0"),
    }
}

/// Turns fused kernels on or off for this process (overrides `QWEN_FUSED_KERNELS`); for
/// checking them against the plain ops in one run.
pub fn set_fused_kernels(on: bool) {
    FUSED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Turns compiled blocks on or off for this process (overrides `QWEN_COMPILE`).
pub fn set_compile_blocks(on: bool) {
    COMPILE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

fn default_device_is_gpu() -> bool {
    // SAFETY: the device handle is created, queried and freed here.
    unsafe {
        let mut dev = mlx_sys::mlx_device_new();
        let mut ty = mlx_sys::mlx_device_type__MLX_CPU;
        let ok = mlx_sys::mlx_get_default_device(&mut dev) == 0
            && mlx_sys::mlx_device_get_type(&mut ty, dev) == 0;
        mlx_sys::mlx_device_free(dev);
        ok && ty == mlx_sys::mlx_device_type__MLX_GPU
    }
}

fn strings(names: &[&str]) -> Result<mlx_sys::mlx_vector_string, String> {
    // SAFETY: the vector copies each string; the CStrings outlive the calls.
    unsafe {
        let v = mlx_sys::mlx_vector_string_new();
        for n in names {
            let c = CString::new(*n).map_err(|e| e.to_string())?;
            if mlx_sys::mlx_vector_string_append_value(v, c.as_ptr()) != 0 {
                mlx_sys::mlx_vector_string_free(v);
                return Err(format!("could not pass the name {n}"));
            }
        }
        Ok(v)
    }
}

impl CudaKernel {
    /// A kernel named `name` (unique per source) with these input and output names; `header`
    /// goes before MLX's namespace (helpers), `source` is the body.
    pub const fn new(
        name: &'static str,
        inputs: &'static [&'static str],
        outputs: &'static [&'static str],
        source: &'static str,
        header: &'static str,
    ) -> Self {
        Self {
            name,
            inputs,
            outputs,
            source,
            header,
            raw: OnceLock::new(),
        }
    }

    /// The kernel when fused kernels can run now ([`enabled`]), else `None`.
    pub fn ready(&self) -> Option<&Self> {
        enabled().then_some(self)
    }

    fn raw(&self) -> Result<&Raw, Exception> {
        let raw = self.raw.get_or_init(|| {
            let (ins, outs) = (strings(self.inputs)?, strings(self.outputs)?);
            let c = |s: &str| CString::new(s).map_err(|e| e.to_string());
            let (name, source, header) = (c(self.name)?, c(self.source)?, c(self.header)?);
            // SAFETY: every argument is valid for the call; mlx-c copies them.
            let k = unsafe {
                let k = mlx_sys::mlx_fast_cuda_kernel_new(
                    name.as_ptr(),
                    ins,
                    outs,
                    source.as_ptr(),
                    header.as_ptr(),
                    true,
                    0,
                );
                mlx_sys::mlx_vector_string_free(ins);
                mlx_sys::mlx_vector_string_free(outs);
                k
            };
            if k.ctx.is_null() {
                Err(format!(
                    "MLX could not create the CUDA kernel {}",
                    self.name
                ))
            } else {
                Ok(Raw(k))
            }
        });
        raw.as_ref().map_err(|e| Exception::custom(e.clone()))
    }

    /// Runs the kernel on `inputs` (in the order of the input names) on the default stream;
    /// returns the outputs in the order of the output names. Lazy, like every MLX op: a
    /// compile error of the source surfaces at evaluation.
    pub fn apply(&self, inputs: &[&Array], launch: &Launch) -> Result<Vec<Array>, Exception> {
        let fail = |what: &str| Exception::custom(format!("CUDA kernel {}: {what}", self.name));
        if inputs.len() != self.inputs.len() || launch.outputs.len() != self.outputs.len() {
            return Err(fail("wrong number of inputs or outputs"));
        }
        let raw = self.raw()?;
        let stream = Stream::new();
        // SAFETY: the config and vectors are created and freed here; the arrays handed in
        // stay alive for the call (mlx-c takes its own references); each output handle is
        // a fresh array owned by the returned `Array`.
        unsafe {
            let cfg = mlx_sys::mlx_fast_cuda_kernel_config_new();
            let mut ok = true;
            for (shape, dtype) in &launch.outputs {
                ok &= mlx_sys::mlx_fast_cuda_kernel_config_add_output_arg(
                    cfg,
                    shape.as_ptr(),
                    shape.len(),
                    *dtype as u32 as mlx_sys::mlx_dtype,
                ) == 0;
            }
            let [gx, gy, gz] = launch.grid;
            let [bx, by, bz] = launch.block;
            ok &= mlx_sys::mlx_fast_cuda_kernel_config_set_grid(cfg, gx, gy, gz) == 0;
            ok &= mlx_sys::mlx_fast_cuda_kernel_config_set_thread_group(cfg, bx, by, bz) == 0;
            for t in &launch.template {
                let (TemplateArg::Dtype(n, _) | TemplateArg::Int(n, _) | TemplateArg::Bool(n, _)) =
                    *t;
                let c = CString::new(n).map_err(|e| fail(&e.to_string()))?;
                let r = match *t {
                    TemplateArg::Dtype(_, d) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_dtype(
                            cfg,
                            c.as_ptr(),
                            d as u32 as mlx_sys::mlx_dtype,
                        )
                    }
                    TemplateArg::Int(_, v) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_int(
                            cfg,
                            c.as_ptr(),
                            v,
                        )
                    }
                    TemplateArg::Bool(_, v) => {
                        mlx_sys::mlx_fast_cuda_kernel_config_add_template_arg_bool(
                            cfg,
                            c.as_ptr(),
                            v,
                        )
                    }
                };
                ok &= r == 0;
            }
            let ins = mlx_sys::mlx_vector_array_new();
            for a in inputs {
                ok &= mlx_sys::mlx_vector_array_append_value(ins, a.as_ptr()) == 0;
            }
            let mut outs = mlx_sys::mlx_vector_array_new();
            if ok {
                ok = mlx_sys::mlx_fast_cuda_kernel_apply(
                    &mut outs,
                    raw.0,
                    ins,
                    cfg,
                    stream.as_ptr(),
                ) == 0;
            }
            mlx_sys::mlx_vector_array_free(ins);
            mlx_sys::mlx_fast_cuda_kernel_config_free(cfg);
            let mut result = Vec::new();
            if ok {
                for i in 0..mlx_sys::mlx_vector_array_size(outs) {
                    let mut a = mlx_sys::mlx_array_new();
                    if mlx_sys::mlx_vector_array_get(&mut a, outs, i) != 0 {
                        ok = false;
                        mlx_sys::mlx_array_free(a);
                        break;
                    }
                    result.push(Array::from_ptr(a));
                }
            }
            mlx_sys::mlx_vector_array_free(outs);
            if !ok || result.len() != self.outputs.len() {
                return Err(fail("MLX refused the launch"));
            }
            Ok(result)
        }
    }
}

/// Threads for `n` items rounded up to whole blocks of `block`.
pub fn round_up(n: usize, block: usize) -> i32 {
    n.div_ceil(block) as i32 * block as i32
}

/// True when generated code should run its repeated blocks through `transforms::compile`.
/// Never on the CPU (MLX would compile C++ at run time); on a GPU `QWEN_COMPILE=1`/`0` (or
/// [`set_compile_blocks`]) decides, by default only without fused kernels (Metal): MLX then
/// fuses the elementwise chains itself. With the fused kernels, compiled blocks were slower on
/// an H200 (341 against 273 ms per 1024² CFG step).
pub fn compile_blocks() -> bool {
    let explicit = match COMPILE.load(Ordering::Relaxed) {
        1 => Some(true),
        2 => Some(false),
        _ => match std::env::var("QWEN_COMPILE").as_deref() {
            Ok("1") => Some(true),
            Ok("0") => Some(false),
            _ => None,
        },
    };
    default_device_is_gpu() && explicit.unwrap_or_else(|| !enabled())
}

/// How generated code evaluates its repeated blocks (the transformer's 60, the text
/// encoder's 28): what [`block_eval`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockEval {
    /// One graph for all blocks, evaluated by the caller (the CPU, where MLX runs ops as they
    /// are evaluated anyway; or `QWEN_PIPELINE_BLOCKS=0`).
    Lazy,
    /// `async_eval` of each block as soon as its graph is built, then a wait for the block
    /// before it: the GPU runs block `i` while the CPU builds block `i + 1`, and the CPU
    /// never gets more than one block ahead (MLX keeps the buffers of everything queued until
    /// it has run, so an unbounded lead raised the 1024² step's peak by 7 GB on an H200).
    /// Measured there: 261.7 → 252.0 ms per CFG step against one unbounded graph; a lead of
    /// two blocks (a diagnostic, not kept) made no difference (2026-11-30: 247.6 against
    /// 246.8 ms, and per rank with `--gpus 2` 125.6-125.9 against 125.4-126.2 ms).
    Pipelined,
    /// `eval` of each block before the next is built: one block's buffers in flight instead
    /// of two (1024² CFG step on an H200: ~1.3 GB less), the GPU idle while the CPU builds
    /// the next block. What a memory budget too small for [`BlockEval::Pipelined`] gets.
    OneAtATime,
}

thread_local! {
    /// The mode [`BlockEval::scoped`] set on this thread, if any.
    static BLOCK_EVAL: std::cell::Cell<Option<BlockEval>> = const { std::cell::Cell::new(None) };
}

/// How generated code on this thread evaluates its repeated blocks: the mode a live
/// [`BlockEvalScope`] set, else [`BlockEval::Pipelined`] on a GPU unless
/// `QWEN_PIPELINE_BLOCKS=0` (or [`set_pipeline_blocks`]) says otherwise, else
/// [`BlockEval::Lazy`].
pub fn block_eval() -> BlockEval {
    if let Some(mode) = BLOCK_EVAL.with(|m| m.get()) {
        return mode;
    }
    if switch(&PIPELINE, "QWEN_PIPELINE_BLOCKS") && default_device_is_gpu() {
        BlockEval::Pipelined
    } else {
        BlockEval::Lazy
    }
}

/// Sets [`block_eval`]'s answer on this thread until it is dropped (then the mode before it
/// is back).
#[must_use = "the mode holds only while the scope lives"]
pub struct BlockEvalScope {
    before: Option<BlockEval>,
    /// Not `Send`: dropped on the thread whose mode it set.
    _thread: std::marker::PhantomData<*const ()>,
}

impl BlockEval {
    /// What generated code does after building a repeated block's graph (its carried values
    /// `state`; `running`: the previous block's, kept across calls): start it and wait for
    /// the block before ([`BlockEval::Pipelined`]), run it ([`BlockEval::OneAtATime`]), or
    /// nothing ([`BlockEval::Lazy`]).
    pub fn after_block(self, running: &mut Vec<Array>, state: &[&Array]) -> Result<(), Exception> {
        match self {
            BlockEval::Pipelined => {
                mlx_rs::transforms::async_eval(state.iter().copied())?;
                mlx_rs::transforms::eval(running.iter())?;
                *running = state.iter().map(|a| (*a).clone()).collect();
                Ok(())
            }
            BlockEval::OneAtATime => mlx_rs::transforms::eval(state.iter().copied()),
            BlockEval::Lazy => Ok(()),
        }
    }

    /// This mode on this thread while the returned scope lives.
    pub fn scoped(self) -> BlockEvalScope {
        BlockEvalScope {
            before: BLOCK_EVAL.with(|m| m.replace(Some(self))),
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for BlockEvalScope {
    fn drop(&mut self) {
        BLOCK_EVAL.with(|m| m.set(self.before));
    }
}

/// Turns per-block `async_eval` on or off for this process (overrides
/// `QWEN_PIPELINE_BLOCKS`; a [`BlockEvalScope`] overrides both).
pub fn set_pipeline_blocks(on: bool) {
    PIPELINE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// True when `Pipeline::open` should compile the fused kernels (`warm_up_kernels`) on a
/// thread of its own from the moment the module is known, beside the checks and the load,
/// rather than before the load: MLX 0.32 gives each thread its own default stream, and
/// compiles custom kernels with NVRTC in every process (it keeps no disk cache of them),
/// 6-12 s on an H200. Measured there (2026-11-30, 1024², bf16, 50 steps): a cold `qwen-run`
/// 24.85 s with it (load 9.95 s), 29.6 s before (load 15.1 s). The loading thread's own
/// MLX work (copies, casts, elementwise products, matmuls, quantizing) runs kernels MLX
/// ships compiled, so only this thread uses MLX's run-time kernel cache, which has no lock;
/// the compile is joined before `open` returns, before any step. On unless
/// `QWEN_WARM_UP_BESIDE_LOAD=0`.
pub fn warm_up_beside_load() -> bool {
    !std::env::var("QWEN_WARM_UP_BESIDE_LOAD").is_ok_and(|v| v == "0")
}

/// True when `Pipeline::open`, loading every network while the fused kernels compile beside
/// the load ([`warm_up_beside_load`]), should run the text encoder and the decoder once
/// before it loads the transformer, so that MLX's first uses (cuBLAS's and cuDNN's set-up,
/// their plans, its own kernels) are paid in the load and not in the first image. On unless
/// `QWEN_WARM_UP_FIRST_USES=0`.
pub fn warm_up_first_uses() -> bool {
    !std::env::var("QWEN_WARM_UP_FIRST_USES").is_ok_and(|v| v == "0")
}
