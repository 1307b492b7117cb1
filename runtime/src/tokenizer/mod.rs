//! The text tokenizer of a model folder's `tokenizer/`, in either layout a checkpoint ships.
//!
//! **vocab.json + merges.txt** (what published Qwen2-family checkpoints hold; see
//! `files.rs`):
//!
//! ```text
//! vocab.json               token -> id (tokens in the GPT-2 byte -> unicode alphabet)
//! merges.txt               one merge "a b" per line, in rank order, after a "#version" line
//! tokenizer_config.json    optional; `added_tokens_decoder`: id -> added token and its flags
//! added_tokens.json        optional; added token -> id
//! special_tokens_map.json  optional; which added tokens are special
//! ```
//!
//! From these [`Tokenizer::from_dir`] builds the pipeline the fast tokenizer of that family
//! runs: NFC normalisation, a regex split ([`SPLIT_PATTERN`], each match its own piece),
//! byte-level mapping without a prefix space, BPE with no unknown token, and a byte-level
//! decoder. Added tokens are matched in the raw text before all of that and keep the ids the
//! folder gives them.
//!
//! **tokenizer.json** (a serialized `tokenizers` tokenizer: what transformers 5 and the
//! fast tokenizers write; see `json.rs`): read as `tokenizers::Tokenizer::from_file` reads
//! it, and used as it is: its own normalizer, pre-tokenizer, model, added tokens and
//! decoder. Two things are overridden: truncation and padding are switched off (the
//! pipeline truncates itself), and no special tokens are added around the text (the prompt
//! template writes them; `<|im_start|>` in the text becomes its id). `added_tokens_decoder`
//! of a `tokenizer_config.json` beside it must agree with it.
//!
//! **Both present**: `tokenizer.json` wins, as it does in transformers (5, and the fast
//! tokenizers of 4), the reference this runtime is compared against: it is the complete
//! description of the tokenizer, while the vocab.json + merges.txt layout leaves the
//! normalizer and split pattern to be assumed by the loader. A `tokenizer.json` that does
//! not load is an error, never a silent fall back to the other layout.
//!
//! Every file must be a regular file (a FIFO or device is refused, not opened), non-empty
//! and well formed; the error names the file. Prompt templates belong to the model crate.

mod files;
mod json;

use std::path::{Path, PathBuf};

use crate::error::TokenizerError;

/// The pre-tokenizer split pattern of the Qwen2 / Qwen2.5 tokenizers (transformers'
/// `Qwen2Tokenizer`, dashscope's `qwen.tiktoken` pattern): contractions, letter runs with at
/// most one leading non-letter, single digits, punctuation runs with trailing newlines, and
/// whitespace runs that leave their last space to the next word.
pub const SPLIT_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The file of the serialized-tokenizer layout.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// Which files of a `tokenizer/` folder a [`Tokenizer`] was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `vocab.json` + `merges.txt` (+ the added-token files).
    VocabMerges,
    /// `tokenizer.json` (+ `tokenizer_config.json`, checked against it).
    TokenizerJson,
}

/// A byte-level BPE tokenizer loaded from a `tokenizer/` folder.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    dir: PathBuf,
    layout: Layout,
    /// The token with the largest id (vocabulary and added tokens), and that id.
    max: Option<(String, u32)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("layout", &self.layout)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `dir` in either layout (see the module docs; `tokenizer.json` wins), building
    /// the vocab.json + merges.txt layout with the Qwen2 split pattern.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        Self::from_dir_with_pattern(dir, SPLIT_PATTERN)
    }

    /// Loads `dir`, building the vocab.json + merges.txt layout with another pre-tokenizer
    /// split `pattern` (Oniguruma syntax), for byte-level BPE tokenizers of other families.
    /// A `tokenizer.json` carries its own pre-tokenizer; `pattern` is not used for it.
    pub fn from_dir_with_pattern(
        dir: impl AsRef<Path>,
        pattern: &str,
    ) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref().to_path_buf();
        let json_path = dir.join(TOKENIZER_JSON);
        // A dangling link counts as present: its error, not a quiet switch of layout.
        let (inner, layout) = if std::fs::symlink_metadata(&json_path).is_ok() {
            (json::load(&dir, &json_path)?, Layout::TokenizerJson)
        } else if dir.join("vocab.json").exists() || dir.join("merges.txt").exists() {
            (files::build(&dir, pattern)?, Layout::VocabMerges)
        } else {
            return Err(TokenizerError::NoTokenizer { dir });
        };
        let vocab = inner.get_vocab(true);
        let Some(max) = vocab
            .iter()
            .max_by_key(|&(token, &id)| (id, std::cmp::Reverse(token)))
            .map(|(token, &id)| (token.clone(), id))
        else {
            let file = match layout {
                Layout::TokenizerJson => json_path,
                Layout::VocabMerges => dir.join("vocab.json"),
            };
            return Err(TokenizerError::Empty {
                path: file,
                what: "tokens",
            });
        };
        Ok(Self {
            inner,
            dir,
            layout,
            max: Some(max),
        })
    }

    /// Which layout of the folder was read.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The tokenizer as a `tokenizer.json` (the serialized `tokenizers` tokenizer), e.g. to
    /// turn a vocab.json + merges.txt folder into the other layout.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(true)
            .map_err(|e| TokenizerError::Build {
                dir: self.dir.clone(),
                message: format!("cannot serialize: {e}"),
            })
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
    /// (always `Some`: an empty vocabulary is refused at load). Every id [`Tokenizer::encode`] gives is at most this;
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

/// The text of a tokenizer file; only a regular file (or a link to one) is opened.
fn read_text(path: &Path) -> Result<String, TokenizerError> {
    let io = |source: std::io::Error| {
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
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(TokenizerError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    if text.trim().is_empty() {
        return Err(TokenizerError::Empty {
            path: path.to_path_buf(),
            what: "text at all",
        });
    }
    Ok(text)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TokenizerError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
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
        let text = text.replacen('{', "{\n  \"<|far|>\": 2147483646,", 1);
        std::fs::write(&added, text).unwrap();
        let tok = Tokenizer::from_dir(tmp.path()).unwrap();
        assert_eq!(tok.max_id(), Some(("<|far|>", 2_147_483_646)));
    }
}
