//! The tokenizer.json layout: a serialized `tokenizers` tokenizer, used as it is (see the
//! parent module for what is overridden and what is checked).

use std::path::Path;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::files::read_added_tokens;
use super::read_text;
use crate::error::TokenizerError;

/// The parts of a tokenizer.json looked at before the whole is deserialized.
#[derive(Deserialize)]
struct Shape {
    model: Option<ModelShape>,
}

#[derive(Deserialize)]
struct ModelShape {
    /// Only a BPE model has merges.
    merges: Option<Vec<IgnoredAny>>,
    /// Word-piece style affixes: byte-level BPE has none (the tokenizers crate slices merges
    /// by their length and panics when one is longer than a merge's half).
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
}

/// `path` (`dir`'s tokenizer.json) as `tokenizers::Tokenizer::from_file` reads it: the file's
/// text through serde_json (read here so that only a regular file is opened and every error
/// names the file), with truncation and padding off, checked against the added tokens of
/// `dir`'s tokenizer_config.json / added_tokens.json where present.
pub(super) fn load(dir: &Path, path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let json = |source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    };
    let text = read_text(path)?;
    // Valid JSON first: the tokenizers crate panics on some syntax errors inside nested
    // objects (its decoder helper `expect`s) instead of returning them.
    serde_json::from_str::<IgnoredAny>(&text).map_err(json)?;
    // A BPE without merges encodes every byte as its own token: a meaningless prompt. (A
    // file this look cannot read is left to the full parse below, whose error says more.)
    let model = serde_json::from_str::<Shape>(&text)
        .ok()
        .and_then(|s| s.model);
    if let Some(model) = &model {
        if model.merges.as_ref().is_some_and(|m| m.is_empty()) {
            return Err(TokenizerError::Empty {
                path: path.to_path_buf(),
                what: "merges",
            });
        }
        let affixes = [
            (
                "continuing_subword_prefix",
                &model.continuing_subword_prefix,
            ),
            ("end_of_word_suffix", &model.end_of_word_suffix),
        ];
        for (field, value) in affixes {
            if value.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(TokenizerError::Build {
                    dir: dir.to_path_buf(),
                    message: format!(
                        "{}: `model.{field}` is set; a byte-level BPE has none",
                        path.display()
                    ),
                });
            }
        }
    }
    // The crate still panics on some structures it does not expect: an error, not a crash.
    let parsed = std::panic::catch_unwind(|| serde_json::from_str::<tokenizers::Tokenizer>(&text));
    let mut inner = match parsed {
        Ok(result) => result.map_err(json)?,
        Err(_) => {
            return Err(TokenizerError::Build {
                dir: dir.to_path_buf(),
                message: format!("the tokenizers crate failed on {}", path.display()),
            })
        }
    };
    inner
        .with_truncation(None)
        .map_err(|e| TokenizerError::Build {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        })?
        .with_padding(None);

    let mut conflicts = Vec::new();
    for (id, token) in read_added_tokens(dir)? {
        match inner.token_to_id(&token.content) {
            Some(have) if have == id => {}
            Some(have) => conflicts.push(format!(
                "`{}` has id {id} in tokenizer_config.json / added_tokens.json, but {have} here",
                token.content
            )),
            None => conflicts.push(format!(
                "`{}` (id {id} in tokenizer_config.json / added_tokens.json) is missing here",
                token.content
            )),
        }
    }
    if !conflicts.is_empty() {
        return Err(TokenizerError::AddedToken {
            path: path.to_path_buf(),
            reason: conflicts.join("; "),
        });
    }
    Ok(inner)
}
