//! True classifier-free guidance with norm rescaling, on MLX arrays.
//!
//! Two model passes per step give a conditional velocity `cond` and an unconditional
//! (negative-prompt) one `uncond`, both `[B, L, C]`. They combine as
//!
//! ```text
//! comb = uncond + s · (cond − uncond)
//! out  = comb · ‖cond‖ / ‖comb‖        // L2 norms over the last (channel) axis, per token
//! ```
//!
//! so every token keeps the length of its conditional prediction and takes the direction of
//! the guided one. Everything is lazy. The arithmetic is f32 whatever the inputs' dtype (the
//! tensors are small, `[B, L, 64]`, and norms of bf16 values lose digits), and the result has
//! the inputs' dtype; for bf16 inputs this is slightly more accurate than diffusers, which
//! rounds every intermediate to bf16. A token whose combined prediction is exactly zero gives
//! NaN, as in the reference. Whether to run the unconditional
//! pass at all (scale ≤ 1, no negative prompt) is the pipeline's decision.

use mlx_rs::error::Exception;
use mlx_rs::Array;

/// `uncond + scale · (cond − uncond)`: plain classifier-free guidance (f32 arithmetic,
/// result in `cond`'s dtype).
pub fn cfg_combine(cond: &Array, uncond: &Array, scale: f32) -> Result<Array, Exception> {
    combine_f32(cond, uncond, scale)?.as_dtype(cond.dtype())
}

/// `comb · ‖reference‖ / ‖comb‖`, L2 norms over the last axis, kept for broadcasting
/// (f32 arithmetic, result in `comb`'s dtype).
pub fn norm_rescale(comb: &Array, reference: &Array) -> Result<Array, Exception> {
    let comb32 = comb.as_type::<f32>()?;
    rescale_f32(&comb32, &reference.as_type::<f32>()?)?.as_dtype(comb.dtype())
}

/// True CFG as the Qwen-Image pipelines run it: [`cfg_combine`], then [`norm_rescale`] to
/// the conditional prediction's per-token norm; f32 throughout, result in `cond`'s dtype.
pub fn true_cfg(cond: &Array, uncond: &Array, scale: f32) -> Result<Array, Exception> {
    let comb = combine_f32(cond, uncond, scale)?;
    rescale_f32(&comb, &cond.as_type::<f32>()?)?.as_dtype(cond.dtype())
}

fn combine_f32(cond: &Array, uncond: &Array, scale: f32) -> Result<Array, Exception> {
    let (cond, uncond) = (cond.as_type::<f32>()?, uncond.as_type::<f32>()?);
    uncond.add(cond.subtract(&uncond)?.multiply(Array::from_f32(scale))?)
}

fn rescale_f32(comb: &Array, reference: &Array) -> Result<Array, Exception> {
    comb.multiply(l2_norm_last(reference)?.divide(l2_norm_last(comb)?)?)
}

/// `sqrt(sum(x², axis −1))` with the axis kept.
fn l2_norm_last(x: &Array) -> Result<Array, Exception> {
    x.square()?.sum_axis(-1, true)?.sqrt()
}
