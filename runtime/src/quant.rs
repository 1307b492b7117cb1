//! Weight quantization for linear layers: MLX's affine quantization (`mlx_quantize`: per
//! row, groups of `group_size` input values share a scale and a bias; `bits` per value,
//! packed in `u32`), and the linear that runs either form.
//!
//! Generated weights structs carry, beside each linear layer's weight, an
//! `Option<Quantized>`: `None` is the dense weight (`x @ wᵀ + b` through `addmm`); `Some` says
//! the weight field holds the packed values and gives their scales and biases. A [`Plan`]
//! decides per layer, from the layer's checkpoint key, at load time.

use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// Bits per weight and values per scale/bias group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    pub bits: i32,
    pub group_size: i32,
}

impl QuantSpec {
    /// `bits` (4 or 8) with MLX's default group of 64.
    pub fn bits(bits: i32) -> Self {
        Self {
            bits,
            group_size: 64,
        }
    }
}

/// A quantized weight's scales and biases `[out, in / group_size]` and its spec; the
/// packed values `[out, in · bits / 32]` (`u32`) stay in the weight field.
#[derive(Debug, Clone)]
pub struct Quantized {
    pub scales: Array,
    pub biases: Array,
    pub spec: QuantSpec,
}

impl Quantized {
    /// The dense weight `[out, in]` (in the scales' dtype) of the packed values `w`.
    pub fn dequantize(&self, w: &Array) -> Result<Array, Exception> {
        ops::dequantize(
            w,
            &self.scales,
            &self.biases,
            self.spec.group_size,
            self.spec.bits,
        )
    }
}

/// Decides, per linear layer (its weight's full checkpoint key, e.g.
/// `transformer_blocks.3.attn.to_qkv.weight`), whether and how it is quantized.
pub trait Plan {
    fn spec(&self, key: &str) -> Option<QuantSpec>;
}

/// Quantizes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dense;

impl Plan for Dense {
    fn spec(&self, _key: &str) -> Option<QuantSpec> {
        None
    }
}

/// `w` `[out, in]` as given (`spec` `None`), or quantized: the packed values, and the scales
/// and biases, evaluated (so the dense weight can be freed at once).
pub fn quantize(
    w: Array,
    spec: Option<QuantSpec>,
) -> Result<(Array, Option<Quantized>), Exception> {
    let Some(spec) = spec else {
        return Ok((w, None));
    };
    let (packed, scales, biases) = ops::quantize(&w, spec.group_size, spec.bits)?;
    mlx_rs::transforms::eval([&packed, &scales, &biases])?;
    Ok((
        packed,
        Some(Quantized {
            scales,
            biases,
            spec,
        }),
    ))
}

/// From this many rows of `x`, a quantized weight is dequantized to the compute dtype and
/// multiplied densely: MLX's quantized matmul reads the packed weight once, which wins for
/// a few rows (the modulation of a schedule, text rows), but with CUDA it ran the 8 200 rows
/// of a 1024² step 3× slower than the dense matmul (768 against 250 ms per step, H200),
/// while dequantizing a layer costs one pass over its weights.
pub const DEQUANTIZE_ROWS: usize = 256;

/// `x @ wᵀ (+ bias)` for a dense or a quantized weight.
pub fn linear(
    x: &Array,
    w: &Array,
    q: Option<&Quantized>,
    bias: Option<&Array>,
) -> Result<Array, Exception> {
    let rows = x.size() / x.shape().last().map_or(1, |&d| d.max(1) as usize);
    match (q, bias) {
        (None, Some(b)) => ops::addmm(b, x, w.t(), None, None),
        (None, None) => ops::matmul(x, w.t()),
        (Some(q), bias) if rows >= DEQUANTIZE_ROWS => {
            let dense = q.dequantize(w)?;
            linear(x, &dense, None, bias)
        }
        (Some(q), bias) => {
            let y = ops::quantized_matmul(
                x,
                w,
                &q.scales,
                &q.biases,
                true,
                q.spec.group_size,
                q.spec.bits,
            )?;
            match bias {
                Some(b) => ops::add(&y, b),
                None => Ok(y),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    fn rel(a: &Array, b: &Array) -> f32 {
        let d = ops::subtract(a, b).unwrap();
        let n = |v: &Array| ops::sqrt(&ops::sum(&ops::square(v).unwrap(), None).unwrap()).unwrap();
        ops::divide(&n(&d), &n(b)).unwrap().item::<f32>()
    }

    /// Both ways of running a quantized layer give the dequantized weight's product, and it
    /// is near the dense one (8 bits closer than 4).
    #[test]
    fn quantized_linear_both_ways() {
        let key = random::key(7).unwrap();
        let w = random::normal::<f32>(&[96, 128], None, None, &key).unwrap();
        let b = random::normal::<f32>(&[96], None, None, &key).unwrap();
        let mut errs = vec![];
        for bits in [8, 4] {
            let (packed, q) = quantize(w.clone(), Some(QuantSpec::bits(bits))).unwrap();
            let q = q.unwrap();
            assert_eq!(packed.shape(), &[96, 128 * bits / 32]);
            let dense = q.dequantize(&packed).unwrap();
            for rows in [3, DEQUANTIZE_ROWS as i32 + 1] {
                let x = random::normal::<f32>(&[1, rows, 128], None, None, &key).unwrap();
                let y = linear(&x, &packed, Some(&q), Some(&b)).unwrap();
                let exact = linear(&x, &dense, None, Some(&b)).unwrap();
                assert!(rel(&y, &exact) < 1e-5, "{bits} bits, {rows} rows");
                let full = linear(&x, &w, None, Some(&b)).unwrap();
                errs.push(rel(&y, &full));
            }
        }
        assert!(errs[0] < 1e-2 && errs[1] < 1e-2, "{errs:?}");
        assert!(errs[2] > 4.0 * errs[0], "{errs:?}");
    }
}
