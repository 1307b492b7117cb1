//! Output sizes ([`Resolution`]), the network sizes a generated module was made for
//! ([`ModelConfig`]), and what the pipeline reads from the model folder's json files.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::latents::LATENT_CHANNELS;
use super::{PipelineError, Result};

/// An output size, width × height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resolution {
    pub width: usize,
    pub height: usize,
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Resolution {
    type Err = String;

    /// `1024` (square) or `WxH`, e.g. `96x64` (width first).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("bad resolution `{s}`: expected a size such as 1024 or WxH (e.g. 96x64)");
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let (width, height) = match s.split_once(['x', 'X', '×']) {
            Some((w, h)) => (num(w)?, num(h)?),
            None => {
                let n = num(s)?;
                (n, n)
            }
        };
        if width == 0 || height == 0 {
            return Err(bad());
        }
        Ok(Self { width, height })
    }
}

/// The network sizes a generated module was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelConfig {
    /// The published Qwen-Image (60 blocks, width 3072, Qwen2.5-VL-7B text encoder).
    Real,
    /// The tiny test config of `tests/fixtures/tiny_config.json`.
    Tiny,
}

impl ModelConfig {
    /// `(num_layers, num_attention_heads, attention_head_dim, joint_attention_dim)` of
    /// `transformer/config.json`.
    fn transformer_shape(self) -> (u64, u64, u64, u64) {
        match self {
            ModelConfig::Real => (60, 24, 128, 3584),
            ModelConfig::Tiny => (2, 2, 32, 32),
        }
    }

    /// The resolution used when none is asked for.
    pub fn default_resolution(self) -> Resolution {
        match self {
            ModelConfig::Real => Resolution {
                width: 1024,
                height: 1024,
            },
            ModelConfig::Tiny => Resolution {
                width: 96,
                height: 64,
            },
        }
    }

    fn describe(self) -> String {
        let (l, h, d, j) = self.transformer_shape();
        format!("{self}: num_layers {l}, num_attention_heads {h}, attention_head_dim {d}, joint_attention_dim {j}")
    }
}

impl fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelConfig::Real => "real",
            ModelConfig::Tiny => "tiny",
        })
    }
}

/// A json file of the model folder.
pub(super) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The checkpoint's config, from `transformer/config.json`.
pub fn detect_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("transformer/config.json");
    let json = read_json(&path)?;
    let field = |k: &str| json.get(k).and_then(serde_json::Value::as_u64);
    let found = (
        field("num_layers"),
        field("num_attention_heads"),
        field("attention_head_dim"),
        field("joint_attention_dim"),
    );
    let all = [ModelConfig::Real, ModelConfig::Tiny];
    all.into_iter()
        .find(|c| {
            let (l, h, d, j) = c.transformer_shape();
            found == (Some(l), Some(h), Some(d), Some(j))
        })
        .ok_or_else(|| {
            let show = |v: Option<u64>| v.map_or_else(|| "missing".to_owned(), |n| n.to_string());
            PipelineError::UnknownConfig {
                path: dir.to_path_buf(),
                found: format!(
                    "num_layers {}, num_attention_heads {}, attention_head_dim {}, joint_attention_dim {}",
                    show(found.0),
                    show(found.1),
                    show(found.2),
                    show(found.3)
                ),
                available: all.iter().map(|c| c.describe()).collect(),
            }
        })
}

/// The `LATENT_CHANNELS` numbers under `key` (the VAE's `latents_mean` / `latents_std`).
pub(super) fn float_list(json: &serde_json::Value, key: &str, path: &Path) -> Result<Vec<f32>> {
    let bad = |reason: String| PipelineError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let list = json
        .get(key)
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad(format!("no `{key}` list")))?;
    let values: Option<Vec<f32>> = list.iter().map(|v| v.as_f64().map(|x| x as f32)).collect();
    let values = values.ok_or_else(|| bad(format!("`{key}` holds a non-number")))?;
    if values.len() != LATENT_CHANNELS {
        return Err(bad(format!(
            "`{key}` has {} values, expected {LATENT_CHANNELS}",
            values.len()
        )));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse() {
        let r = |s: &str| s.parse::<Resolution>();
        assert_eq!(
            r("1024"),
            Ok(Resolution {
                width: 1024,
                height: 1024
            })
        );
        assert_eq!(
            r("96x64"),
            Ok(Resolution {
                width: 96,
                height: 64
            })
        );
        assert_eq!(r("1664X928").map(|r| r.to_string()), Ok("1664x928".into()));
        for bad in ["", "x", "0", "96x", "12y", "-5", "96x64x2"] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }
}
