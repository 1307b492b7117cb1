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

/// `x @ wᵀ (+ bias)` for a dense or a quantized weight.
pub fn linear(
    x: &Array,
    w: &Array,
    q: Option<&Quantized>,
    bias: Option<&Array>,
) -> Result<Array, Exception> {
    match (q, bias) {
        (None, Some(b)) => ops::addmm(b, x, w.t(), None, None),
        (None, None) => ops::matmul(x, w.t()),
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
