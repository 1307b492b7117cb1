//! A byte-level BPE tokenizer assembled from the published `tokenizer/` folder.
//!
//! Published checkpoints of the Qwen2 family ship no `tokenizer.json`, only the pieces a
//! slow tokenizer reads:
//!
//! ```text
//! vocab.json               token -> id (tokens in the GPT-2 byte -> unicode alphabet)
//! merges.txt               one merge "a b" per line, in rank order, after a "#version" line
//! tokenizer_config.json    optional; `added_tokens_decoder`: id -> added token and its flags
//! added_tokens.json        optional; added token -> id
//! special_tokens_map.json  optional; which added tokens are special
//! ```
//!
//! [`Tokenizer::from_dir`] builds the same pipeline the fast tokenizer of that family runs:
//! NFC normalisation, a regex split ([`SPLIT_PATTERN`], each match its own piece), byte-level
//! mapping without a prefix space, BPE with no unknown token, and a byte-level decoder.
//! Added tokens are matched in the raw text before all of that and keep the ids the folder
//! gives them. Prompt templates belong to the model crate, not here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::TokenizerError;

/// The pre-tokenizer split pattern of the Qwen2 / Qwen2.5 tokenizers (transformers'
/// `Qwen2Tokenizer`, dashscope's `qwen.tiktoken` pattern): contractions, letter runs with at
/// most one leading non-letter, single digits, punctuation runs with trailing newlines, and
/// whitespace runs that leave their last space to the next word.
pub const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE tokenizer loaded from a published `tokenizer/` folder.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    dir: PathBuf,
    /// The token with the largest id (vocabulary and added tokens), and that id.
    max: Option<(String, u32)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `dir` (see the module docs for the files) with the Qwen2 split pattern.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        Self::from_dir_with_pattern(dir, SPLIT_PATTERN)
    }

    /// Loads `dir` with another pre-tokenizer split `pattern` (Oniguruma syntax), for
    /// byte-level BPE tokenizers of other families.
    pub fn from_dir_with_pattern(
        dir: impl AsRef<Path>,
        pattern: &str,
    ) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref().to_path_buf();
        let build = |message: String| TokenizerError::Build {
            dir: dir.clone(),
            message,
        };

        let vocab_path = dir.join("vocab.json");
        let mut vocab: HashMap<String, u32> = parse_json(&vocab_path)?;
        let merges = read_merges(&dir.join("merges.txt"), &vocab)?;
        let added = read_added_tokens(&dir)?;

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
        let max = vocab
            .iter()
            .max_by_key(|&(token, &id)| (id, std::cmp::Reverse(token)))
            .map(|(token, &id)| (token.clone(), id));

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
        Ok(Self { inner, dir, max })
    }

    /// Token ids of `text`. Added and special tokens written in the text (`<|im_start|>`)
    /// become their ids; nothing is prepended or appended, and nothing is truncated.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Encode {
                dir: self.dir.clone(),
                message: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::UnknownId {
                dir: self.dir.clone(),
                id,
            });
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode {
                dir: self.dir.clone(),
                message: e.to_string(),
            })
    }

    /// The id of one token (a vocabulary entry or an added token), if it exists.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token with the largest id, vocabulary and added tokens together, and that id
    /// (`None` for an empty vocabulary). Every id [`Tokenizer::encode`] gives is at most this;
    /// a model checks it against its embedding table before running any.
    pub fn max_id(&self) -> Option<(&str, u32)> {
        self.max.as_ref().map(|(token, id)| (token.as_str(), *id))
    }

    /// Number of distinct tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The folder this tokenizer was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TokenizerError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            TokenizerError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TokenizerError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
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

/// Added tokens by id, from `tokenizer_config.json` (with their flags) and
/// `added_tokens.json` (special when `special_tokens_map.json` names them). All optional.
fn read_added_tokens(dir: &Path) -> Result<BTreeMap<u32, AddedToken>, TokenizerError> {
    let mut added = BTreeMap::new();

    let config_path = dir.join("tokenizer_config.json");
    if config_path.exists() {
        let config: TokenizerConfig = parse_json(&config_path)?;
        for (id, e) in config.added_tokens_decoder {
            let id = id.parse::<u32>().map_err(|_| TokenizerError::AddedToken {
                path: config_path.clone(),
                reason: format!("id {id:?} of `{}` is not a number", e.content),
            })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-qwen-image/tokenizer")
    }

    /// The largest id is an added token's; one added past it becomes the new maximum.
    #[test]
    fn max_id_covers_added_tokens() {
        let tok = Tokenizer::from_dir(fixture_dir()).unwrap();
        assert_eq!(tok.max_id(), Some(("<|file_sep|>", 151_664)));

        let tmp = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(fixture_dir()).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
        }
        let added = tmp.path().join("added_tokens.json");
        let text = std::fs::read_to_string(&added).unwrap();
        let text = text.replacen('{', "{\n  \"<|far|>\": 4294967295,", 1);
        std::fs::write(&added, text).unwrap();
        let tok = Tokenizer::from_dir(tmp.path()).unwrap();
        assert_eq!(tok.max_id(), Some(("<|far|>", u32::MAX)));
    }
}
