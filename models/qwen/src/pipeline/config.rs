//! Output sizes ([`Resolution`]), the network sizes a generated module was made for
//! ([`ModelConfig`]), and what the pipeline reads from the model folder's json files.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use qwen_graph::ConfigName;

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

/// The aspect ratios Qwen-Image was trained for and their sizes, W × H (its model card);
/// `--res 16:9` names one. Sizes that are not multiples of 16 are rounded as diffusers
/// rounds them ([`Resolution::rounded`]: 1140 → 1136).
pub const RATIOS: [(&str, Resolution); 7] = [
    ("1:1", Resolution::new(1328, 1328)),
    ("16:9", Resolution::new(1664, 928)),
    ("9:16", Resolution::new(928, 1664)),
    ("4:3", Resolution::new(1472, 1140)),
    ("3:4", Resolution::new(1140, 1472)),
    ("3:2", Resolution::new(1584, 1056)),
    ("2:3", Resolution::new(1056, 1584)),
];

/// What the VAE (×8) and the 2×2 patches need of a size.
pub const SIZE_MULTIPLE: usize = 16;

impl Resolution {
    pub const fn new(width: usize, height: usize) -> Self {
        Self { width, height }
    }

    /// Rounded down to multiples of 16 each, as diffusers' pipeline does (with a warning)
    /// before it makes the latents; a side below 16 becomes 16.
    pub fn rounded(self) -> Self {
        let r = |v: usize| (v / SIZE_MULTIPLE * SIZE_MULTIPLE).max(SIZE_MULTIPLE);
        Self::new(r(self.width), r(self.height))
    }
}

impl FromStr for Resolution {
    type Err = String;

    /// `1024` (square), `WxH` (e.g. `96x64`, width first) or a trained aspect ratio
    /// ([`RATIOS`], e.g. `16:9`).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((_, r)) = RATIOS.iter().find(|(name, _)| *name == s.trim()) {
            return Ok(*r);
        }
        let bad = || {
            let names: Vec<&str> = RATIOS.iter().map(|(n, _)| *n).collect();
            format!(
                "bad resolution `{s}`: expected a size such as 1024 or WxH (e.g. 96x64), or a ratio ({})",
                names.join(", ")
            )
        };
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

/// The transformer fields that tell the configs apart ([`detect_config`]).
const DETECT: [&str; 4] = [
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "joint_attention_dim",
];

impl ModelConfig {
    /// Every config, in the order they are tried.
    pub const ALL: [ModelConfig; 2] = [ModelConfig::Real, ModelConfig::Tiny];

    /// What this config's generated modules were built for: `{"transformer": {..},
    /// "text_encoder": {..}, "vae": {..}}` in the keys of the component `config.json` files.
    /// The values are `qwen_graph::config`'s, the one place the `specialize!` macro builds
    /// the modules from (the tiny ones from `tests/fixtures/tiny_config.json`).
    pub fn built_for(self) -> &'static serde_json::Value {
        static REAL: OnceLock<serde_json::Value> = OnceLock::new();
        static TINY: OnceLock<serde_json::Value> = OnceLock::new();
        let cell = match self {
            ModelConfig::Real => &REAL,
            ModelConfig::Tiny => &TINY,
        };
        cell.get_or_init(|| {
            serde_json::to_value(self.graph_config()).expect("a config is plain data")
        })
    }

    /// The configuration the modules were built from (`qwen_graph::config`).
    pub fn graph_config(self) -> qwen_graph::config::Config {
        let name = match self {
            ModelConfig::Real => ConfigName::Real,
            ModelConfig::Tiny => ConfigName::Tiny,
        };
        name.config()
            .expect("the tiny config file parsed when the modules were built")
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
        let t = &self.built_for()["transformer"];
        let fields: Vec<String> = DETECT.iter().map(|f| format!("{f} {}", t[f])).collect();
        format!("{self}: {}", fields.join(", "))
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
    let text = qwen_runtime::files::read_regular(path).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Invalid {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// The checkpoint's config, from `num_layers`, `num_attention_heads`, `attention_head_dim`
/// and `joint_attention_dim` of `transformer/config.json` (an absent field takes diffusers'
/// default, the real model's value).
pub fn detect_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join("transformer/config.json");
    let json = read_json(&path)?;
    let real = &ModelConfig::Real.built_for()["transformer"];
    let found: Vec<&serde_json::Value> = DETECT
        .iter()
        .map(|f| json.get(f).unwrap_or(&real[f]))
        .collect();
    ModelConfig::ALL
        .into_iter()
        .find(|c| {
            let want = &c.built_for()["transformer"];
            DETECT.iter().zip(&found).all(|(f, v)| want[f] == **v)
        })
        .ok_or_else(|| {
            let show = |(f, v): (&&str, &&serde_json::Value)| match json.get(f) {
                Some(_) => format!("{f} {v}"),
                None => format!("{f} missing (default {v})"),
            };
            PipelineError::UnknownConfig {
                path,
                found: DETECT
                    .iter()
                    .zip(&found)
                    .map(show)
                    .collect::<Vec<_>>()
                    .join(", "),
                available: ModelConfig::ALL.iter().map(|c| c.describe()).collect(),
            }
        })
}

/// The `LATENT_CHANNELS` numbers under `key` (the VAE's `latents_mean` / `latents_std`).
pub(super) fn float_list(json: &serde_json::Value, key: &str, path: &Path) -> Result<Vec<f32>> {
    let bad = |reason: String| PipelineError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let list = json
        .get(key)
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| bad(format!("no `{key}` list")))?;
    let mut values = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        match v.as_f64().map(|x| x as f32) {
            Some(x) if x.is_finite() => values.push(x),
            _ => {
                return Err(bad(format!(
                    "`{key}[{i}]` is {v}, expected a finite number (in f32)"
                )))
            }
        }
    }
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
        for bad in ["", "x", "0", "96x", "12y", "-5", "96x64x2", "16:10"] {
            assert!(r(bad).is_err(), "{bad}");
        }
        assert_eq!(r("16:9"), Ok(Resolution::new(1664, 928)));
        assert!(r("5:4").unwrap_err().contains("16:9"));
    }

    /// diffusers rounds down to multiples of 16; the seven trained sizes, so rounded, are
    /// each a generated module.
    #[test]
    fn trained_sizes_round_as_diffusers_and_are_generated() {
        assert_eq!(
            Resolution::new(1472, 1140).rounded(),
            Resolution::new(1472, 1136)
        );
        assert_eq!(
            Resolution::new(1024, 1024).rounded(),
            Resolution::new(1024, 1024)
        );
        assert_eq!(Resolution::new(100, 8).rounded(), Resolution::new(96, 16));
        for (name, r) in RATIOS {
            let v = super::super::find_variant(r.rounded(), ModelConfig::Real);
            assert!(v.is_ok(), "{name} ({}) has no module", r.rounded());
        }
        for side in [512, 1024, 2048] {
            assert!(
                super::super::find_variant(Resolution::new(side, side), ModelConfig::Real).is_ok()
            );
        }
    }
}
