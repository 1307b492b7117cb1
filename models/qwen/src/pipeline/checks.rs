//! What the model folder must say before anything is loaded: `model_index.json` names the
//! pipeline, the component configs describe the networks the generated module was built for
//! ([`ModelConfig::built_for`]), the VAE's latent statistics are usable numbers, and every
//! token id fits the text encoder's embedding table.

use std::path::Path;

use qwen_runtime::weights::TensorSpec;
use qwen_runtime::Tokenizer;
use serde_json::Value;

use super::config::{float_list, read_json};
use super::{ModelConfig, PipelineError, Result};

/// The `_class_name` of `model_index.json` this crate runs.
pub const PIPELINE_CLASS: &str = "QwenImagePipeline";

/// The `_class_name` of a Qwen-Image-Edit-2509/2511 folder (the same components, and
/// `processor/`).
pub const EDIT_PIPELINE_CLASS: &str = "QwenImageEditPlusPipeline";

/// The text encoder's embedding table in its checkpoint.
const EMBED_TOKENS: &str = "model.embed_tokens.weight";

/// `model_index.json` is a json object whose `_class_name` is [`PIPELINE_CLASS`], or
/// [`EDIT_PIPELINE_CLASS`] for a pipeline opened for edits: a text-to-image folder's weights also
/// pass an edit's checks (its text encoder holds the vision tower) and the other way round, so
/// only the class tells which model a folder holds.
pub(super) fn check_model_index(dir: &Path, edit: bool) -> Result<()> {
    let path = dir.join("model_index.json");
    let json = read_json(&path)?;
    let (want, other, hint) = if edit {
        (
            EDIT_PIPELINE_CLASS,
            PIPELINE_CLASS,
            "a text-to-image folder: `qwen-run` without `edit` runs it",
        )
    } else {
        (
            PIPELINE_CLASS,
            EDIT_PIPELINE_CLASS,
            "an Edit folder: `qwen-run edit` runs it",
        )
    };
    let reason = match json.as_object().map(|o| o.get("_class_name")) {
        None => format!("not a JSON object, expected one with `_class_name` \"{want}\""),
        Some(None) => format!("no `_class_name`, expected \"{want}\""),
        Some(Some(Value::String(s))) if s == want => return Ok(()),
        Some(Some(Value::String(s))) if s == other => {
            format!("`_class_name` is \"{s}\", expected \"{want}\" ({hint})")
        }
        Some(Some(v)) => format!("`_class_name` is {v}, expected \"{want}\""),
    };
    Err(PipelineError::Invalid { path, reason })
}

/// How a field's value is compared with the expected one.
#[derive(Clone, Copy)]
enum Kind {
    /// The same json value: counts must be integers (`2.0` and `"2"` are not `2`), lists
    /// of them equal, flags the same bool.
    Exact,
    /// Any json number of the same value (`1e-06`, `1000000` for `1000000.0`).
    Number,
}

/// One component config and the fields the generated module depends on.
struct Component {
    /// Key in [`ModelConfig::built_for`].
    key: &'static str,
    /// Path in the model folder.
    file: &'static str,
    /// An absent field takes the diffusers class default, the real model's value (the
    /// transformer and the VAE). The text encoder's class defaults describe another model,
    /// so there every field is required.
    defaults: bool,
    fields: &'static [(&'static str, Kind)],
}

const COMPONENTS: [Component; 3] = [
    Component {
        key: "transformer",
        file: "transformer/config.json",
        defaults: true,
        fields: &[
            ("patch_size", Kind::Exact),
            ("in_channels", Kind::Exact),
            ("out_channels", Kind::Exact),
            ("num_layers", Kind::Exact),
            ("attention_head_dim", Kind::Exact),
            ("num_attention_heads", Kind::Exact),
            ("joint_attention_dim", Kind::Exact),
            ("axes_dims_rope", Kind::Exact),
            ("guidance_embeds", Kind::Exact),
        ],
    },
    Component {
        key: "text_encoder",
        file: "text_encoder/config.json",
        defaults: false,
        fields: &[
            ("vocab_size", Kind::Exact),
            ("hidden_size", Kind::Exact),
            ("intermediate_size", Kind::Exact),
            ("num_hidden_layers", Kind::Exact),
            ("num_attention_heads", Kind::Exact),
            ("num_key_value_heads", Kind::Exact),
            ("rms_norm_eps", Kind::Number),
            ("rope_theta", Kind::Number),
        ],
    },
    Component {
        key: "vae",
        file: "vae/config.json",
        defaults: true,
        fields: &[
            ("base_dim", Kind::Exact),
            ("z_dim", Kind::Exact),
            ("dim_mult", Kind::Exact),
            ("num_res_blocks", Kind::Exact),
        ],
    },
];

/// Reads the three component configs and compares every field of [`COMPONENTS`] with what
/// `config`'s modules were built for; all differences of all files in one
/// [`PipelineError::ConfigMismatch`]. A text encoder config of transformers 5 may keep the
/// language model's fields under `text_config`; they are looked up there too.
pub(super) fn check_configs(dir: &Path, config: ModelConfig, module: &'static str) -> Result<()> {
    let mut problems = Vec::new();
    for c in &COMPONENTS {
        let path = dir.join(c.file);
        let json = read_json(&path)?;
        if !json.is_object() {
            return Err(PipelineError::Invalid {
                path,
                reason: "not a JSON object".into(),
            });
        }
        let want = &config.built_for()[c.key];
        let default = &ModelConfig::Real.built_for()[c.key];
        for &(field, kind) in c.fields {
            let expected = &want[field];
            let found = json
                .get(field)
                .or_else(|| json.get("text_config").and_then(|t| t.get(field)));
            let problem = match found {
                None if c.defaults && default[field] == *expected => None,
                None if c.defaults => Some(format!(
                    "`{field}` is missing (diffusers' default {}), expected {expected}",
                    default[field]
                )),
                None => Some(format!("`{field}` is missing, expected {expected}")),
                Some(v) if same(kind, v, expected) => None,
                Some(v) => Some(format!("`{field}` is {v}, expected {expected}")),
            };
            problems.extend(problem.map(|p| format!("{}: {p}", c.file)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::ConfigMismatch {
            path: dir.to_path_buf(),
            module,
            problems,
        })
    }
}

fn same(kind: Kind, found: &Value, expected: &Value) -> bool {
    match kind {
        Kind::Exact => found == expected,
        Kind::Number => found.is_number() && found.as_f64() == expected.as_f64(),
    }
}

/// `latents_mean` and `latents_std` of `vae/config.json`: finite f32 numbers (see
/// [`float_list`]), each std positive with a finite reciprocal (the decode divides by it).
pub(super) fn latents_stats(dir: &Path) -> Result<(Vec<f32>, Vec<f32>)> {
    let path = dir.join("vae/config.json");
    let json = read_json(&path)?;
    let mean = float_list(&json, "latents_mean", &path)?;
    let std = float_list(&json, "latents_std", &path)?;
    if let Some((i, s)) = std
        .iter()
        .enumerate()
        .find(|&(_, &s)| !(s > 0.0 && (1.0 / s).is_finite()))
    {
        return Err(PipelineError::Invalid {
            path,
            reason: format!("`latents_std[{i}]` is {s}, expected a positive number"),
        });
    }
    Ok((mean, std))
}

/// Every id the tokenizer can give is a row of the text encoder's embedding table: its rows
/// in the generated module's specs (else `vocab_size` of the config it was built for).
/// Without this an id past the table reads out of bounds in MLX's gather.
pub(super) fn check_token_ids(
    tokenizer: &Tokenizer,
    text_encoder_specs: &[TensorSpec],
    config: ModelConfig,
) -> Result<()> {
    let rows = text_encoder_specs
        .iter()
        .find(|s| s.name == EMBED_TOKENS)
        .and_then(|s| s.shape.first().copied())
        .or_else(|| {
            let v = config.built_for()["text_encoder"]["vocab_size"].as_u64();
            v.and_then(|v| usize::try_from(v).ok())
        })
        .unwrap_or(0);
    match tokenizer.max_id() {
        Some((token, id)) if usize::try_from(id).map_or(true, |id| id >= rows) => {
            Err(PipelineError::TokenId {
                dir: tokenizer.dir().to_path_buf(),
                token: token.to_owned(),
                id,
                rows,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::VARIANTS;
    use super::*;

    /// The built-for table agrees with the weight shapes of every generated module of its
    /// config (the fields the shapes show).
    #[test]
    fn built_for_matches_the_generated_modules() {
        for v in VARIANTS {
            let b = v.config().built_for();
            let n = |k: &str, f: &str| b[k][f].as_u64().unwrap() as usize;
            let te = v.text_encoder_specs();
            let tr = v.transformer_specs();
            let vae = v.vae_specs();
            let shape = |specs: &[TensorSpec], name: &str| {
                let s = specs.iter().find(|s| s.name == name);
                s.unwrap_or_else(|| panic!("{name}")).shape.clone()
            };
            let layers = |specs: &[TensorSpec], prefix: &str| {
                let mut ids: Vec<&str> = specs
                    .iter()
                    .filter_map(|s| s.name.strip_prefix(prefix)?.split('.').next())
                    .collect();
                ids.dedup();
                ids.len()
            };
            let hidden = n("text_encoder", "hidden_size");
            let vocab = n("text_encoder", "vocab_size");
            assert_eq!(shape(&te, EMBED_TOKENS), [vocab, hidden], "{}", v.name());
            assert_eq!(
                layers(&te, "model.layers."),
                n("text_encoder", "num_hidden_layers")
            );
            let inner =
                n("transformer", "num_attention_heads") * n("transformer", "attention_head_dim");
            let patch = n("transformer", "patch_size");
            let out = n("transformer", "out_channels");
            assert_eq!(
                shape(&tr, "img_in.weight"),
                [inner, n("transformer", "in_channels")]
            );
            assert_eq!(
                shape(&tr, "txt_in.weight"),
                [inner, n("transformer", "joint_attention_dim")]
            );
            assert_eq!(shape(&tr, "proj_out.weight"), [patch * patch * out, inner]);
            assert_eq!(
                layers(&tr, "transformer_blocks."),
                n("transformer", "num_layers")
            );
            let z = n("vae", "z_dim");
            assert_eq!(shape(&vae, "post_quant_conv.weight")[..2], [z, z]);
        }
    }
}
