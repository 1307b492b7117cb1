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
//! the guided one. Everything is lazy and stays in the inputs' dtype; a token whose combined
//! prediction is exactly zero gives NaN, as in the reference. Whether to run the unconditional
//! pass at all (scale ≤ 1, no negative prompt) is the pipeline's decision.

use mlx_rs::error::Exception;
use mlx_rs::Array;

/// `uncond + scale · (cond − uncond)`: plain classifier-free guidance.
pub fn cfg_combine(cond: &Array, uncond: &Array, scale: f32) -> Result<Array, Exception> {
    let scale = Array::from_f32(scale).as_dtype(cond.dtype())?;
    uncond.add(cond.subtract(uncond)?.multiply(scale)?)
}

/// `comb · ‖reference‖ / ‖comb‖`, L2 norms over the last axis, kept for broadcasting.
pub fn norm_rescale(comb: &Array, reference: &Array) -> Result<Array, Exception> {
    let reference_norm = l2_norm_last(reference)?;
    let comb_norm = l2_norm_last(comb)?;
    comb.multiply(reference_norm.divide(comb_norm)?)
}

/// True CFG as the Qwen-Image pipelines run it: [`cfg_combine`], then [`norm_rescale`] to
/// the conditional prediction's per-token norm.
pub fn true_cfg(cond: &Array, uncond: &Array, scale: f32) -> Result<Array, Exception> {
    norm_rescale(&cfg_combine(cond, uncond, scale)?, cond)
}

/// `sqrt(sum(x², axis −1))` with the axis kept.
fn l2_norm_last(x: &Array) -> Result<Array, Exception> {
    x.square()?.sum_axis(-1, true)?.sqrt()
}
