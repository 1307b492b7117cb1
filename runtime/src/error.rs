//! Errors of the runtime. Messages are lowercase and say where: file and tensor.

use std::fmt;
use std::path::PathBuf;

use crate::weights::{Dtype, TensorSpec};

/// Opening a checkpoint, checking it, or reading a tensor from it.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    // === Files ===
    #[error("checkpoint not found: {}", path.display())]
    NotFound { path: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is {kind}, not a regular file", path.display())]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error("no .safetensors file in {}", dir.display())]
    NoSafetensors { dir: PathBuf },

    #[error(
        "{} holds {} .safetensors files and no *.safetensors.index.json to say how they fit: {}",
        dir.display(), files.len(), files.join(", ")
    )]
    Ambiguous { dir: PathBuf, files: Vec<String> },

    #[error(
        "{} holds {} *.safetensors.index.json files, where one says how the shards fit: {}",
        dir.display(), indexes.len(), indexes.join(", ")
    )]
    SeveralIndexes { dir: PathBuf, indexes: Vec<String> },

    // === Sharded checkpoints ===
    #[error("malformed index {}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },

    #[error("missing shard {}, named by the index {}", shard.display(), index.display())]
    MissingShard { index: PathBuf, shard: PathBuf },

    #[error(
        "index {} places tensor `{name}` in {}, which does not hold it",
        index.display(), shard.display()
    )]
    NotInShard {
        index: PathBuf,
        shard: PathBuf,
        name: String,
    },

    #[error(
        "index {} places tensor `{name}` in `{shard}`, which is not a plain file name in the index's folder",
        index.display()
    )]
    ShardOutsideFolder {
        index: PathBuf,
        name: String,
        shard: String,
    },

    #[error(
        "tensor `{name}` is stored in two shards: {} and {}",
        first.display(), second.display()
    )]
    DuplicateTensor {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },

    // === safetensors content ===
    #[error("corrupt safetensors file {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error(
        "truncated safetensors file {}: its header describes {expected} bytes, the file has {actual}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error(
        "safetensors file {} is longer than its header describes: {expected} bytes, the file has {actual}",
        path.display()
    )]
    TooLong {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error("tensor `{name}` in {} has dtype {dtype}, which the runtime does not load", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    // === Tensors ===
    #[error("tensor `{name}` not found in {}", path.display())]
    TensorNotFound { path: PathBuf, name: String },

    #[error("checkpoint {} does not match the model ({} problems):\n{}", path.display(), problems.len(), Problems(problems))]
    Mismatch {
        path: PathBuf,
        problems: Vec<Problem>,
    },

    #[error("tensor `{name}` in {} has a dimension too large for MLX: {shape:?}", path.display())]
    TooLarge {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
}

/// One difference between a checkpoint and what a model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The model needs this tensor; the checkpoint lacks it.
    Missing(TensorSpec),
    /// Present with another shape.
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// Present with a dtype that cannot stand for the expected one (see
    /// [`Dtype::loads_as`]).
    Dtype {
        name: String,
        expected: Dtype,
        found: Dtype,
    },
    /// In the checkpoint, unknown to the model (reported under [`crate::Extra::Report`]).
    Unexpected { name: String, file: PathBuf },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing(spec) => write!(
                f,
                "missing tensor `{}` ({} {:?})",
                spec.name, spec.dtype, spec.shape
            ),
            Problem::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, expected {expected:?}"
            ),
            Problem::Dtype {
                name,
                expected,
                found,
            } if expected.is_float() => write!(
                f,
                "tensor `{name}` has dtype {found}, expected a float (f32, f16 or bf16)"
            ),
            Problem::Dtype {
                name,
                expected,
                found,
            } => write!(f, "tensor `{name}` has dtype {found}, expected {expected}"),
            Problem::Unexpected { name, file } => {
                write!(f, "unexpected tensor `{name}` in {}", file.display())
            }
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// Choosing or querying an MLX device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no gpu in the loaded libmlx (a cpu-only build); use the cpu or put the cuda libmlx on LD_LIBRARY_PATH")]
    NoGpu,

    #[error("mlx could not {what}: {message}")]
    Mlx { what: &'static str, message: String },
}

/// Loading a tokenizer folder, or encoding / decoding with it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    // === Files ===
    #[error("no tokenizer in {}: expected tokenizer.json, or vocab.json and merges.txt", dir.display())]
    NoTokenizer { dir: PathBuf },

    #[error("tokenizer file not found: {}", path.display())]
    NotFound { path: PathBuf },

    #[error("{} is not a regular file (a tokenizer file must be one, or a link to one)", path.display())]
    NotRegularFile { path: PathBuf },

    #[error("tokenizer file {} is empty: no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("malformed {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("malformed merges file {}, line {line}: {reason}", path.display())]
    Merges {
        path: PathBuf,
        line: usize,
        reason: String,
    },

    #[error("bad added token in {}: {reason}", path.display())]
    AddedToken { path: PathBuf, reason: String },

    // === The tokenizers crate ===
    #[error("cannot build the tokenizer of {}: {message}", dir.display())]
    Build { dir: PathBuf, message: String },

    #[error("tokenizer of {} cannot encode the text: {message}", dir.display())]
    Encode { dir: PathBuf, message: String },

    #[error("tokenizer of {} has no token with id {id}", dir.display())]
    UnknownId { dir: PathBuf, id: u32 },

    #[error("tokenizer of {} cannot decode: {message}", dir.display())]
    Decode { dir: PathBuf, message: String },
}

/// Reading a scheduler config or building a sigma schedule.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    // === Config file ===
    #[error("scheduler config not found: {}", path.display())]
    NotFound { path: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("malformed scheduler config {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("scheduler config {} asks for {option}, which the runtime does not implement", path.display())]
    Unsupported { path: PathBuf, option: String },

    // === Schedules ===
    #[error("a schedule needs at least one step")]
    ZeroSteps,

    #[error("bad scheduler setting: {reason}")]
    Invalid { reason: String },
}

/// Turning a decoded tensor into pixels, or writing a PNG.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("expected a decoded image of shape {expected}, got {got:?}")]
    Shape { expected: String, got: Vec<i64> },

    #[error("mlx could not {what}: {message}")]
    Mlx { what: &'static str, message: String },

    #[error("cannot put metadata `{key}` into {}: {reason}", path.display())]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },

    #[error("cannot encode {} as png: {message}", path.display())]
    Png { path: PathBuf, message: String },

    #[error("cannot read {} as an image: {message}", path.display())]
    Read { path: PathBuf, message: String },

    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The first `shown` of a list of names or problems joined by `sep`, then `and N more`: how
/// error messages list what went wrong without running on for a page.
pub struct Listed<'a> {
    pub items: &'a [String],
    pub shown: usize,
    pub sep: &'static str,
}

impl std::fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, item) in self.items.iter().take(self.shown).enumerate() {
            if i > 0 {
                f.write_str(self.sep)?;
            }
            f.write_str(item)?;
        }
        if self.items.len() > self.shown {
            write!(f, "{}and {} more", self.sep, self.items.len() - self.shown)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod listed_tests {
    use super::Listed;

    #[test]
    fn the_first_items_then_how_many_more() {
        let items: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let l = |shown, sep| {
            Listed {
                items: &items,
                shown,
                sep,
            }
            .to_string()
        };
        assert_eq!(l(2, "; "), "a; b; and 1 more");
        assert_eq!(l(3, ", "), "a, b, c");
        assert_eq!(l(9, ", "), "a, b, c");
    }
}
