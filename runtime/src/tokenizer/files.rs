//! The vocab.json + merges.txt layout: a byte-level BPE assembled from the files a slow
//! tokenizer reads (see the parent module for the files and the pipeline built).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::{parse_json, read_text};
use crate::error::TokenizerError;

/// The tokenizer of `dir`'s vocab.json, merges.txt and added-token files, with the split
/// `pattern`.
pub(super) fn build(dir: &Path, pattern: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build = |message: String| TokenizerError::Build {
        dir: dir.to_path_buf(),
        message,
    };

    let vocab_path = dir.join("vocab.json");
    let mut vocab: HashMap<String, u32> = parse_json(&vocab_path)?;
    if vocab.is_empty() {
        return Err(TokenizerError::Empty {
            path: vocab_path,
            what: "tokens",
        });
    }
    let merges = read_merges(&dir.join("merges.txt"), &vocab)?;
    let added = read_added_tokens(dir)?;

    // Added tokens keep their ids: put them in the model's vocabulary, where the added
    // vocabulary looks them up, after checking that nothing else holds the id.
    let by_id: HashMap<u32, &str> = vocab.iter().map(|(t, &id)| (id, t.as_str())).collect();
    let mut conflicts = Vec::new();
    for (&id, token) in &added {
        match (vocab.get(&token.content), by_id.get(&id)) {
            (Some(&have), _) if have != id => conflicts.push(format!(
                "`{}` has id {id}, but vocab.json gives it {have}",
                token.content
            )),
            (None, Some(other)) => conflicts.push(format!(
                "`{}` has id {id}, which vocab.json gives to `{other}`",
                token.content
            )),
            _ => {}
        }
    }
    if !conflicts.is_empty() {
        return Err(TokenizerError::AddedToken {
            path: vocab_path,
            reason: conflicts.join("; "),
        });
    }
    for (&id, token) in &added {
        vocab.insert(token.content.clone(), id);
    }
    let vocab: Vocab = vocab.into_iter().collect();
    let model = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| build(e.to_string()))?;
    let split = Split::new(
        SplitPattern::Regex(pattern.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| build(format!("bad split pattern: {e}")))?;
    // add_prefix_space false; use_regex false (the split above already cut the text).
    let byte_level = ByteLevel::new(false, false, false);

    let mut inner = tokenizers::Tokenizer::new(model);
    inner
        .with_normalizer(Some(NFC))
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
        .with_decoder(Some(byte_level));
    let (special, plain): (Vec<AddedToken>, Vec<AddedToken>) =
        added.into_values().partition(|t| t.special);
    inner.add_special_tokens(&special);
    inner.add_tokens(&plain);
    Ok(inner)
}

/// `merges.txt`: an optional `#version` line, then "left right" per line; both halves and
/// their concatenation must be vocabulary tokens.
fn read_merges(
    path: &Path,
    vocab: &HashMap<String, u32>,
) -> Result<Vec<(String, String)>, TokenizerError> {
    let text = read_text(path)?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let bad = |reason: String| TokenizerError::Merges {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let parts: Vec<&str> = line.split(' ').collect();
        let [left, right] = parts[..] else {
            return Err(bad(format!(
                "expected two tokens separated by one space, found {line:?}"
            )));
        };
        for token in [left, right, &format!("{left}{right}")] {
            if !vocab.contains_key(token) {
                return Err(bad(format!("`{token}` is not in vocab.json")));
            }
        }
        merges.push((left.to_owned(), right.to_owned()));
    }
    // Without merges every byte is its own token: nothing the text encoder was trained on.
    if merges.is_empty() {
        return Err(TokenizerError::Empty {
            path: path.to_path_buf(),
            what: "merges",
        });
    }
    Ok(merges)
}

/// One entry of `added_tokens_decoder` in `tokenizer_config.json`.
#[derive(Deserialize)]
struct AddedTokenEntry {
    content: String,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    normalized: bool,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    added_tokens_decoder: BTreeMap<String, AddedTokenEntry>,
}

/// The largest token id a tokenizer may hold: ids reach MLX as `i32`, and the tokenizers
/// crate computes the next free id as the largest plus one.
const MAX_TOKEN_ID: u32 = i32::MAX as u32 - 1;

fn check_id(path: &Path, content: &str, id: u32) -> Result<(), TokenizerError> {
    if id > MAX_TOKEN_ID {
        return Err(TokenizerError::AddedToken {
            path: path.to_path_buf(),
            reason: format!("`{content}` has id {id}, past the largest token id ({MAX_TOKEN_ID})"),
        });
    }
    Ok(())
}

/// Added tokens by id, from `tokenizer_config.json` (with their flags) and
/// `added_tokens.json` (special when `special_tokens_map.json` names them). All optional.
pub(super) fn read_added_tokens(dir: &Path) -> Result<BTreeMap<u32, AddedToken>, TokenizerError> {
    let mut added = BTreeMap::new();

    let config_path = dir.join("tokenizer_config.json");
    if config_path.exists() {
        let config: TokenizerConfig = parse_json(&config_path)?;
        for (id, e) in config.added_tokens_decoder {
            let id = id.parse::<u32>().map_err(|_| TokenizerError::AddedToken {
                path: config_path.clone(),
                reason: format!("id {id:?} of `{}` is not a number", e.content),
            })?;
            check_id(&config_path, &e.content, id)?;
            let token = AddedToken::from(e.content, e.special)
                .lstrip(e.lstrip)
                .rstrip(e.rstrip)
                .single_word(e.single_word)
                .normalized(e.normalized);
            added.insert(id, token);
        }
    }

    let map_path = dir.join("added_tokens.json");
    if map_path.exists() {
        let special = special_token_names(&dir.join("special_tokens_map.json"))?;
        let map: BTreeMap<String, u32> = parse_json(&map_path)?;
        for (content, id) in map {
            check_id(&map_path, &content, id)?;
            match added.get(&id) {
                Some(known) if known.content != content => {
                    return Err(TokenizerError::AddedToken {
                        path: map_path,
                        reason: format!(
                            "id {id} is `{content}` here but `{}` in tokenizer_config.json",
                            known.content
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    let is_special = special.contains(&content);
                    let token = AddedToken::from(content, is_special).normalized(false);
                    added.insert(id, token);
                }
            }
        }
    }

    let mut seen = HashMap::new();
    for (&id, token) in &added {
        if let Some(other) = seen.insert(token.content.as_str(), id) {
            return Err(TokenizerError::AddedToken {
                path: dir.to_path_buf(),
                reason: format!("`{}` has two ids, {other} and {id}", token.content),
            });
        }
    }
    Ok(added)
}

/// Every token `special_tokens_map.json` names (strings, `{"content": ..}` objects, lists).
fn special_token_names(path: &Path) -> Result<Vec<String>, TokenizerError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            serde_json::Value::Object(map) => match map.get("content") {
                Some(serde_json::Value::String(s)) => out.push(s.clone()),
                _ => map.values().for_each(|v| collect(v, out)),
            },
            _ => {}
        }
    }
    let value: serde_json::Value = parse_json(path)?;
    let mut names = Vec::new();
    collect(&value, &mut names);
    Ok(names)
}
