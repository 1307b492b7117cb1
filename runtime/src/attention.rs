//! Attention that MLX's fused kernels do not cover.
//!
//! Where `fast::scaled_dot_product_attention` has no fused kernel for the head size (the
//! VAE's single head of 384 channels), MLX makes the whole `[B, H, Lq, Lk]` score matrix:
//! 16384² scores for the VAE's mid-block at 1024², 65536² (over 2³¹, more than MLX's 32-bit
//! indexing reaches: the process died of SIGFPE on an H200, 2026-11-30) at 2048².
//! [`sdpa_in_query_chunks`] runs such attention a block of query rows at a time: each row's
//! softmax is over all keys either way, so the result is the same.

use mlx_rs::error::Exception;
use mlx_rs::{fast, ops, Array};

/// The most scores one attention call of [`sdpa_in_query_chunks`] makes by default: 2²⁸
/// (1 GiB in f32), so the VAE's mid-block attention runs whole up to 1024² and in chunks above.
pub const MAX_SCORES: usize = 1 << 28;

/// Unmasked attention of `q` `[B, H, Lq, D]` against `k`, `v` `[B, H, Lk, D]`, with the
/// queries split into row blocks so that no call makes more than `max_scores` scores (one
/// call where they fit).
pub fn sdpa_in_query_chunks(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    max_scores: usize,
) -> Result<Array, Exception> {
    let (qs, ks) = (q.shape(), k.shape());
    if qs.len() != 4 || ks.len() != 4 {
        return Err(Exception::custom(format!(
            "attention in query chunks wants [B, H, L, D] operands, got {qs:?} and {ks:?}"
        )));
    }
    let per_row = [qs[0], qs[1], ks[2]]
        .iter()
        .map(|d| (*d).max(1) as usize)
        .product::<usize>();
    let rows = (max_scores / per_row).max(1);
    let lq = qs[2].max(0) as usize;
    let attend = |q: &Array| {
        fast::scaled_dot_product_attention(
            q,
            k,
            v,
            scale,
            None::<fast::ScaledDotProductAttentionMask>,
            None,
        )
    };
    if lq <= rows {
        return attend(q);
    }
    let cuts: Vec<i32> = (rows..lq).step_by(rows).map(|r| r as i32).collect();
    let parts = ops::split_at_indices(q, &cuts, 2)?
        .iter()
        .map(attend)
        .collect::<Result<Vec<_>, _>>()?;
    ops::concatenate(&parts, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    /// Chunks of 3 and of 1 query row give what one call gives.
    #[test]
    fn chunked_attention_is_whole_attention() -> Result<(), Exception> {
        let normal = |seed: u64, shape: &[i32]| -> Result<Array, Exception> {
            random::normal::<f32>(shape, None, None, &random::key(seed)?)
        };
        let q = normal(1, &[2, 1, 10, 8])?;
        let k = normal(2, &[2, 1, 7, 8])?;
        let v = normal(3, &[2, 1, 7, 8])?;
        let whole = sdpa_in_query_chunks(&q, &k, &v, 0.35, usize::MAX)?;
        for max_scores in [2 * 7 * 3, 1] {
            let chunked = sdpa_in_query_chunks(&q, &k, &v, 0.35, max_scores)?;
            assert_eq!(chunked.shape(), whole.shape());
            let diff = ops::abs(&ops::subtract(&chunked, &whole)?)?.max(None)?;
            assert!(
                diff.item_exact::<f32>() < 1e-6,
                "{max_scores}: {}",
                diff.item_exact::<f32>()
            );
        }
        Ok(())
    }
}
