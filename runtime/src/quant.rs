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

use crate::weights::{Checkpoint, Dtype, TensorSpec};
use crate::WeightError;

/// Bits per weight and values per scale/bias group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    pub bits: i32,
    pub group_size: i32,
}

impl QuantSpec {
    /// Whether a weight of `shape` quantizes under this spec: a matrix whose rows split into
    /// whole groups (others stay dense).
    pub fn fits(&self, shape: &[i32]) -> bool {
        shape.len() == 2 && shape[1] % self.group_size == 0
    }

    /// `bits` (4 or 8) with MLX's default group of 64.
    pub fn bits(bits: i32) -> Self {
        Self {
            bits,
            group_size: 64,
        }
    }
}

/// A quantized weight's scales and biases `[out, in / group_size]` and its spec; the
/// packed values `[out, in · bits / 32]` (`u32`) stay in the weight field. `low_rank`: LoRA
/// pairs kept beside the quantized weight instead of fused into it (see
/// [`crate::lora::OnQuantized`]).
#[derive(Debug, Clone)]
pub struct Quantized {
    pub scales: Array,
    pub biases: Array,
    pub spec: QuantSpec,
    pub low_rank: Vec<LowRank>,
}

/// `scale · up @ down` beside a weight: `down` `[r, in]`, `up` `[out, r]`.
#[derive(Debug, Clone)]
pub struct LowRank {
    pub down: Array,
    pub up: Array,
    pub scale: f32,
}

impl Quantized {
    /// `y + Σ scale · (x @ downᵀ) @ upᵀ` over the kept low-rank pairs.
    fn add_low_rank(&self, x: &Array, mut y: Array) -> Result<Array, Exception> {
        for lr in &self.low_rank {
            let h = ops::matmul(x, lr.down.as_dtype(x.dtype())?.t())?;
            let d = ops::matmul(&h, lr.up.as_dtype(x.dtype())?.t())?;
            y = ops::add(
                &y,
                &ops::multiply(&d, Array::from_f32(lr.scale).as_dtype(x.dtype())?)?,
            )?;
        }
        Ok(y)
    }

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
    /// How to quantize the layer at load (`None`: keep it dense).
    fn spec(&self, key: &str) -> Option<QuantSpec>;

    /// The layer as the checkpoint stores it quantized (packed values `key`, `{stem}.scales`,
    /// `{stem}.biases`), or `None` when it is stored dense. Stored quantization wins over
    /// [`Plan::spec`].
    fn stored(&self, _key: &str) -> Result<Option<(Array, Quantized)>, WeightError> {
        Ok(None)
    }

    /// Low-rank pairs to keep beside the quantized weight of the stored tensor `key`
    /// (empty: none, or fused into the weight before quantizing).
    fn low_rank(&self, _key: &str) -> Vec<LowRank> {
        vec![]
    }
}

/// `q` with the [`Plan::low_rank`] pairs of the weight's stored parts `keys` (joined along
/// the output axis, `outs` rows each: each part's `up` is padded with zero rows to the
/// joined width).
pub fn with_low_rank(
    q: Option<Quantized>,
    plan: &dyn Plan,
    keys: &[String],
    outs: &[i32],
) -> Result<Option<Quantized>, Exception> {
    let Some(mut q) = q else {
        // a layer whose adapters were kept out of its weight must be quantized
        if let Some(k) = keys.iter().find(|k| !plan.low_rank(k).is_empty()) {
            return Err(Exception::custom(format!(
                "{k}: LoRA kept beside a weight that was not quantized"
            )));
        }
        return Ok(None);
    };
    let dtype = q.scales.dtype();
    let total: i32 = outs.iter().sum();
    let mut offset = 0;
    for (k, &rows) in keys.iter().zip(outs) {
        for lr in plan.low_rank(k) {
            let r = lr.up.shape()[1];
            let mut parts = vec![];
            if offset > 0 {
                parts.push(ops::zeros_dtype(&[offset, r], lr.up.dtype())?);
            }
            parts.push(lr.up.clone());
            if offset + rows < total {
                parts.push(ops::zeros_dtype(
                    &[total - offset - rows, r],
                    lr.up.dtype(),
                )?);
            }
            let up = if parts.len() == 1 {
                lr.up
            } else {
                ops::concatenate(&parts, 0)?
            };
            // in the compute dtype once (the scales')
            let (up, down) = (up.as_dtype(dtype)?, lr.down.as_dtype(dtype)?);
            mlx_rs::transforms::eval([&up, &down])?;
            q.low_rank.push(LowRank {
                up,
                down,
                scale: lr.scale,
            });
        }
        offset += rows;
    }
    Ok(Some(q))
}

/// `name.weight` → `name` (the stem the scales and biases are stored under).
pub fn stem(key: &str) -> &str {
    key.strip_suffix(".weight").unwrap_or(key)
}

/// A checkpoint written by `qwen-run quantize` (some linear weights stored quantized), with
/// `fallback` for the layers stored dense.
pub struct Stored<'a> {
    pub checkpoint: &'a Checkpoint,
    pub group_size: i32,
    pub fallback: Box<dyn Plan + 'a>,
}

impl Stored<'_> {
    /// The stored spec of a quantized layer: bits from the packed width and the scales'.
    fn stored_spec(&self, key: &str) -> Option<QuantSpec> {
        let packed = self.checkpoint.spec(key)?;
        let scales = self.checkpoint.spec(&format!("{}.scales", stem(key)))?;
        let (cols, groups) = (*packed.shape.get(1)?, *scales.shape.get(1)?);
        let inputs = groups * self.group_size as usize;
        (inputs > 0 && (cols * 32) % inputs == 0).then(|| QuantSpec {
            bits: (cols * 32 / inputs) as i32,
            group_size: self.group_size,
        })
    }

    /// The specs a model expects, as this checkpoint stores them: each quantized weight
    /// `[out, in]` as packed `u32` `[out, in · bits / 32]` plus its scales and biases
    /// `[out, in / group]` (of the weight's dtype).
    pub fn stored_specs(&self, expected: &[TensorSpec]) -> Vec<TensorSpec> {
        let mut v = Vec::with_capacity(expected.len());
        for s in expected {
            match (self.stored_spec(&s.name), s.shape.as_slice()) {
                (Some(q), &[out, inputs]) => {
                    let packed = inputs * q.bits as usize / 32;
                    v.push(TensorSpec::new(&s.name, vec![out, packed], Dtype::U32));
                    let groups = inputs / q.group_size as usize;
                    for part in ["scales", "biases"] {
                        let name = format!("{}.{part}", stem(&s.name));
                        v.push(TensorSpec::new(name, vec![out, groups], s.dtype));
                    }
                }
                _ => v.push(s.clone()),
            }
        }
        v
    }
}

impl Plan for Stored<'_> {
    fn spec(&self, key: &str) -> Option<QuantSpec> {
        self.stored_spec(key).or_else(|| self.fallback.spec(key))
    }

    fn stored(&self, key: &str) -> Result<Option<(Array, Quantized)>, WeightError> {
        let Some(spec) = self.stored_spec(key) else {
            return Ok(None);
        };
        let s = stem(key);
        let ck = self.checkpoint;
        let q = Quantized {
            scales: ck.array(&format!("{s}.scales"))?,
            biases: ck.array(&format!("{s}.biases"))?,
            spec,
            low_rank: vec![],
        };
        Ok(Some((ck.array(key)?, q)))
    }
}

/// A linear weight stored as the parts `keys` (joined along the output axis): the stored
/// quantized parts joined (the quantization of the joined weight: groups run along the
/// input axis), cast like `dtype`; `None` when the parts are stored dense.
pub fn stored(
    plan: &dyn Plan,
    keys: &[String],
    dtype: mlx_rs::Dtype,
) -> Result<Option<(Array, Option<Quantized>)>, Exception> {
    let mut parts = vec![];
    for k in keys {
        match plan.stored(k) {
            Ok(p) => parts.push(p),
            Err(e) => return Err(Exception::custom(e.to_string())),
        }
    }
    if parts.iter().all(Option::is_none) {
        return Ok(None);
    }
    let parts: Vec<(Array, Quantized)> = parts
        .into_iter()
        .zip(keys)
        .map(|(p, k)| {
            p.ok_or_else(|| {
                Exception::custom(format!("{k} is stored dense, its siblings quantized"))
            })
        })
        .collect::<Result<_, _>>()?;
    let spec = parts[0].1.spec;
    if parts.iter().any(|p| p.1.spec != spec) {
        return Err(Exception::custom(format!(
            "the parts {keys:?} are quantized differently"
        )));
    }
    let join = |f: &dyn Fn(&(Array, Quantized)) -> Array| -> Result<Array, Exception> {
        let xs: Vec<Array> = parts.iter().map(f).collect();
        if xs.len() == 1 {
            Ok(xs[0].clone())
        } else {
            ops::concatenate(&xs, 0)
        }
    };
    // made by the GPU (in its memory by the time the layer is loaded, as the dense weights)
    let gpu = crate::weights::in_gpu_memory;
    let packed = gpu(join(&|p| p.0.clone())?)?;
    let scales = gpu(join(&|p| p.1.scales.clone())?.as_dtype(dtype)?)?;
    let biases = gpu(join(&|p| p.1.biases.clone())?.as_dtype(dtype)?)?;
    // now, so the parts are freed at load and no step pays for the join
    evaluated(packed, scales, biases, spec).map(Some)
}

/// A quantized weight, evaluated now (so that what it was made from is freed at load).
fn evaluated(
    packed: Array,
    scales: Array,
    biases: Array,
    spec: QuantSpec,
) -> Result<(Array, Option<Quantized>), Exception> {
    mlx_rs::transforms::eval([&packed, &scales, &biases])?;
    let q = Quantized {
        scales,
        biases,
        spec,
        low_rank: vec![],
    };
    Ok((packed, Some(q)))
}

/// Quantizes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dense;

impl Plan for Dense {
    fn spec(&self, _key: &str) -> Option<QuantSpec> {
        None
    }
}

/// `w` `[out, in]` as given (`spec` `None`, or `in` not a multiple of the group size), or
/// quantized: the packed values, and the scales and biases, evaluated (so the dense weight
/// can be freed at once).
pub fn quantize(
    w: Array,
    spec: Option<QuantSpec>,
) -> Result<(Array, Option<Quantized>), Exception> {
    let Some(spec) = spec else {
        return Ok((w, None));
    };
    if !spec.fits(w.shape()) {
        return Ok((w, None));
    }
    let (packed, scales, biases) = ops::quantize(&w, spec.group_size, spec.bits)?;
    evaluated(packed, scales, biases, spec)
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
            let y = linear(x, &dense, None, bias)?;
            q.add_low_rank(x, y)
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
            let y = match bias {
                Some(b) => ops::add(&y, b)?,
                None => y,
            };
            q.add_low_rank(x, y)
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
        ops::divide(&n(&d), &n(b)).unwrap().item_cast::<f32>()
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
