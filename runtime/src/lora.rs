//! LoRA adapters, fused into the weights at load: `W + Σ scale·(α/r)·B·A` for each adapter
//! file's low-rank pair of a linear layer.
//!
//! Formats (keys of a safetensors file):
//!
//! Prefixes: `transformer.`, `diffusion_model.`, `lora_unet_`, `lora_transformer_`.
//!
//! - diffusers / PEFT: `<module>.lora_A.weight` `[r, in]` and `<module>.lora_B.weight`
//!   `[out, r]` (also `.lora_A.default.weight`), α = r unless `<module>.alpha` is given;
//! - kohya / ComfyUI: `<module>.lora_down.weight`, `<module>.lora_up.weight`,
//!   `<module>.alpha`, where `<module>` may be flattened with `_` for `.`
//!   (`lora_unet_transformer_blocks_0_attn_to_q`): it is matched against the model's own
//!   module names, so no list of names is kept here.
//!
//! A key that matches no weight of the model, a pair with half missing, and shapes for
//! another model are errors that list every such key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlx_rs::error::Exception;
use mlx_rs::{ops, Array, Dtype as MlxDtype};

use crate::error::Listed;
use crate::quant::{LowRank, Plan, QuantSpec, Quantized};
use crate::weights::{Checkpoint, TensorSpec};
use crate::WeightError;

/// Why a LoRA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// (the error names the file)
    #[error("LoRA: {source}")]
    Open { path: PathBuf, source: WeightError },
    #[error("LoRA {}: {} key(s) match no weight of this model: {}", path.display(), keys.len(), Listed { items: keys, shown: 20, sep: ", " })]
    Unmatched { path: PathBuf, keys: Vec<String> },
    #[error("LoRA {}: {}", path.display(), problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// One low-rank pair of one layer: `scale · up @ down`.
#[derive(Debug, Clone)]
struct Pair {
    down: Array,
    up: Array,
    scale: f32,
}

/// What adapters do on a layer that is quantized at load. The default, `Separate`, kept
/// the result closer to the f32 reference on the tiny fixture (q8: 2.6e-3 against 3.9e-3
/// fused; q4: 4.5e-2 against 6.9e-2; `models/qwen/tests/lora.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnQuantized {
    /// Fused into the weight, then the sum quantized (one matmul per layer).
    Fuse,
    /// Kept beside the quantized weight in the compute dtype (`x @ Wqᵀ + s·(x @ Aᵀ) @ Bᵀ`).
    #[default]
    Separate,
}

/// The adapters to fuse, by the model's weight key (`transformer_blocks.0.attn.to_q.weight`).
#[derive(Debug, Clone, Default)]
pub struct Loras {
    on_quantized: OnQuantized,
    pairs: BTreeMap<String, Vec<Pair>>,
    /// The files and scales, in order.
    sources: Vec<(PathBuf, f32)>,
}

/// The parts of a LoRA key: (module, which tensor).
fn split_key(key: &str) -> Option<(&str, &'static str)> {
    const SUFFIXES: [(&str, &str); 7] = [
        (".lora_A.default.weight", "down"),
        (".lora_B.default.weight", "up"),
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".alpha", "alpha"),
    ];
    SUFFIXES
        .iter()
        .find_map(|(s, what)| key.strip_suffix(s).map(|m| (m, *what)))
}

fn strip_prefix(module: &str) -> &str {
    [
        "transformer.",
        "diffusion_model.",
        "lora_unet_",
        "lora_transformer_",
    ]
    .iter()
    .find_map(|p| module.strip_prefix(p))
    .unwrap_or(module)
}

impl Loras {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Reads `files` (each with its user scale) against the model's weights `specs` (as
    /// stored: `[out, in]` for a linear layer).
    pub fn open(files: &[(PathBuf, f32)], specs: &[TensorSpec]) -> Result<Self, LoraError> {
        // module name (dotted, and flattened with `_`) -> (weight key, [out, in])
        let mut modules: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
        for s in specs.iter().filter(|s| s.shape.len() == 2) {
            if let Some(m) = s.name.strip_suffix(".weight") {
                let v = (s.name.clone(), s.shape.clone());
                modules.insert(m.replace('.', "_"), v.clone());
                modules.insert(m.to_owned(), v);
            }
        }
        let mut out = Loras::default();
        for (path, user_scale) in files {
            out.add(path, *user_scale, &modules)?;
        }
        out.sources = files.to_vec();
        Ok(out)
    }

    fn add(
        &mut self,
        path: &Path,
        user_scale: f32,
        modules: &BTreeMap<String, (String, Vec<usize>)>,
    ) -> Result<(), LoraError> {
        let ck = Checkpoint::open(path).map_err(|source| LoraError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let array = |k: &str| {
            ck.array(k).map_err(|source| LoraError::Open {
                path: path.to_path_buf(),
                source,
            })
        };
        // weight key -> (down, up, alpha)
        type Parts = (Option<Array>, Option<Array>, Option<f32>);
        let mut found: BTreeMap<String, (Vec<usize>, Parts)> = BTreeMap::new();
        let (mut unmatched, mut problems) = (vec![], vec![]);
        for key in ck.names() {
            let Some((module, what)) = split_key(key) else {
                unmatched.push(key.to_owned());
                continue;
            };
            let Some((weight, shape)) = modules.get(strip_prefix(module)) else {
                unmatched.push(key.to_owned());
                continue;
            };
            let entry = found
                .entry(weight.clone())
                .or_insert_with(|| (shape.clone(), (None, None, None)));
            let a = array(key)?;
            let slot = match what {
                "down" => &mut entry.1 .0,
                "up" => &mut entry.1 .1,
                _ => {
                    // one finite number
                    let v = (a.size() == 1)
                        .then(|| {
                            a.as_dtype(MlxDtype::Float32)
                                .ok()?
                                .try_item_cast::<f32>()
                                .ok()
                        })
                        .flatten()
                        .filter(|v| v.is_finite());
                    match (v, entry.1 .2) {
                        (None, _) => problems.push(format!("{key}: not one finite number")),
                        (Some(_), Some(_)) => problems.push(format!("{weight}: two alphas")),
                        (Some(v), None) => entry.1 .2 = Some(v),
                    }
                    continue;
                }
            };
            if slot.is_some() {
                problems.push(format!("{weight}: two {what} matrices ({key} and another)"));
            }
            *slot = Some(a);
        }
        if found.is_empty() && unmatched.is_empty() {
            return Err(LoraError::Invalid {
                path: path.to_path_buf(),
                problems: vec!["no LoRA tensors".into()],
            });
        }
        if !unmatched.is_empty() {
            return Err(LoraError::Unmatched {
                path: path.to_path_buf(),
                keys: unmatched,
            });
        }
        for (weight, (shape, (down, up, alpha))) in found {
            let (Some(down), Some(up)) = (down, up) else {
                problems.push(format!("{weight}: only half of a low-rank pair"));
                continue;
            };
            let (d, u) = (down.shape(), up.shape());
            let rank = d.first().copied().unwrap_or(0);
            let fits = d.len() == 2
                && u.len() == 2
                && rank > 0
                && u[1] == rank
                && u[0] as usize == shape[0]
                && d[1] as usize == shape[1];
            if !fits {
                problems.push(format!(
                    "{weight}: down {d:?} and up {u:?} do not fit the weight {shape:?}"
                ));
                continue;
            }
            let alpha = alpha.unwrap_or(rank as f32);
            self.pairs.entry(weight).or_default().push(Pair {
                down,
                up,
                scale: user_scale * alpha / rank as f32,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LoraError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// The weight `key` with every adapter's product added (computed in f32, returned in
    /// f32 where an adapter touched it, else `w` unchanged).
    pub fn apply(&self, key: &str, w: Array) -> Result<Array, Exception> {
        let Some(pairs) = self.pairs.get(key) else {
            return Ok(w);
        };
        let mut w = w.as_dtype(MlxDtype::Float32)?;
        for p in pairs {
            let up = p.up.as_dtype(MlxDtype::Float32)?;
            let down = p.down.as_dtype(MlxDtype::Float32)?;
            let delta = ops::matmul(&up, &down)?;
            w = ops::add(&w, &ops::multiply(&delta, Array::from_f32(p.scale))?)?;
        }
        Ok(w)
    }

    /// `file:scale, …` (for an image's metadata).
    pub fn describe(&self) -> String {
        self.sources
            .iter()
            .map(|(p, s)| format!("{}:{s}", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What the adapters do on layers quantized at load.
    pub fn on_quantized(mut self, how: OnQuantized) -> Self {
        self.on_quantized = how;
        self
    }

    /// Whether `key`'s adapters stay beside its quantized weight: kept separate, and `plan`
    /// quantizes the weight `w` (whole groups).
    fn kept_separate(&self, key: &str, w: &Array, plan: &dyn Plan) -> bool {
        self.on_quantized == OnQuantized::Separate
            && self.pairs.contains_key(key)
            && plan.spec(key).is_some_and(|s| s.fits(w.shape()))
    }

    /// The stored weight `w` of `key` as the loader should see it: with the adapters fused,
    /// unless they are kept beside the quantized weight ([`Loras::plan`] hands them over).
    pub fn load(&self, key: &str, w: Array, plan: &dyn Plan) -> Result<Array, Exception> {
        if self.kept_separate(key, &w, plan) {
            Ok(w)
        } else {
            self.apply(key, w)
        }
    }

    /// `inner` with the adapters kept separate as its [`Plan::low_rank`].
    pub fn plan<'a>(&'a self, inner: &'a dyn Plan) -> LoraPlan<'a> {
        LoraPlan { inner, loras: self }
    }

    /// Bytes the pairs hold.
    pub fn bytes(&self) -> usize {
        self.pairs
            .values()
            .flatten()
            .map(|p| p.down.nbytes() + p.up.nbytes())
            .sum()
    }
}

/// A quantization plan that also hands over the adapters kept beside quantized weights.
pub struct LoraPlan<'a> {
    inner: &'a dyn Plan,
    loras: &'a Loras,
}

impl Plan for LoraPlan<'_> {
    fn spec(&self, key: &str) -> Option<QuantSpec> {
        self.inner.spec(key)
    }

    fn stored(&self, key: &str) -> Result<Option<(Array, Quantized)>, WeightError> {
        self.inner.stored(key)
    }

    fn low_rank(&self, key: &str) -> Vec<LowRank> {
        let Some(spec) = self.inner.spec(key) else {
            return vec![];
        };
        if self.loras.on_quantized != OnQuantized::Separate {
            return vec![];
        }
        // as `Loras::kept_separate` decides: only where the weight `[out, in]` (up's rows,
        // down's columns) is quantized, in whole groups; elsewhere `load` fused them
        let quantized = |p: &Pair| spec.fits(&[p.up.shape()[0], p.down.shape()[1]]);
        self.loras
            .pairs
            .get(key)
            .filter(|ps| ps.first().is_some_and(quantized))
            .map(|ps| {
                ps.iter()
                    .map(|p| LowRank {
                        down: p.down.clone(),
                        up: p.up.clone(),
                        scale: p.scale,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
