//! Safetensors checkpoints, memory-mapped: one file, a folder holding one file, or a
//! sharded checkpoint described by a `*.safetensors.index.json` (`weight_map`: tensor
//! name → shard file, as written by transformers and diffusers).
//!
//! Opening reads and validates every header (so a truncated or corrupt file fails at
//! once, naming the file); tensor bytes are touched only when [`Checkpoint::array`]
//! copies one into an MLX array. Only regular files are opened (a symlink to one is fine:
//! the Hugging Face cache is made of them), so a FIFO or a device node is refused instead
//! of blocking or feeding the loader. What an index may name is checked in `weights/index.rs`.

mod index;
mod stage;

pub use stage::{in_gpu_memory, Staging};

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, FileType};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::{Problem, WeightError};

/// Element type of a stored tensor (the safetensors types that MLX can hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F16,
    BF16,
    F32,
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// A floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }

    /// Whether a tensor stored as `self` can fill a place the model declares as `wanted`:
    /// the same type, or a stored f32, f16 or bf16 where any float is wanted (the generated
    /// loaders convert every tensor to the compute dtype with `as_dtype`).
    pub fn loads_as(self, wanted: Dtype) -> bool {
        self == wanted
            || (matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32) && wanted.is_float())
    }

    /// The MLX dtype holding the same bits.
    pub fn to_mlx(self) -> mlx_rs::Dtype {
        use mlx_rs::Dtype as M;
        match self {
            Dtype::Bool => M::Bool,
            Dtype::U8 => M::Uint8,
            Dtype::I8 => M::Int8,
            Dtype::I16 => M::Int16,
            Dtype::U16 => M::Uint16,
            Dtype::I32 => M::Int32,
            Dtype::U32 => M::Uint32,
            Dtype::I64 => M::Int64,
            Dtype::U64 => M::Uint64,
            Dtype::F16 => M::Float16,
            Dtype::BF16 => M::Bfloat16,
            Dtype::F32 => M::Float32,
            Dtype::F64 => M::Float64,
        }
    }

    fn from_safetensors(dtype: safetensors::Dtype) -> Option<Dtype> {
        use safetensors::Dtype as S;
        Some(match dtype {
            S::BOOL => Dtype::Bool,
            S::U8 => Dtype::U8,
            S::I8 => Dtype::I8,
            S::I16 => Dtype::I16,
            S::U16 => Dtype::U16,
            S::I32 => Dtype::I32,
            S::U32 => Dtype::U32,
            S::I64 => Dtype::I64,
            S::U64 => Dtype::U64,
            S::F16 => Dtype::F16,
            S::BF16 => Dtype::BF16,
            S::F32 => Dtype::F32,
            S::F64 => Dtype::F64,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    /// The safetensors spelling: `bf16`, `f32`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "u8",
            Dtype::I8 => "i8",
            Dtype::I16 => "i16",
            Dtype::U16 => "u16",
            Dtype::I32 => "i32",
            Dtype::U32 => "u32",
            Dtype::I64 => "i64",
            Dtype::U64 => "u64",
            Dtype::F16 => "f16",
            Dtype::BF16 => "bf16",
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        })
    }
}

/// A tensor as a model expects it, or as a checkpoint header declares it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: Dtype,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: impl Into<Vec<usize>>, dtype: Dtype) -> Self {
        TensorSpec {
            name: name.into(),
            shape: shape.into(),
            dtype,
        }
    }
}

/// What [`Checkpoint::check`] does with tensors the model does not ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    /// Ignore them (checkpoints often carry more than one component needs).
    Allow,
    /// Report each as a problem.
    Report,
}

/// Where one tensor lives.
#[derive(Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range in the shard file (absolute, header included).
    bytes: (usize, usize),
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// An opened checkpoint: every shard mapped, every header validated.
pub struct Checkpoint {
    /// What was opened: the file, or the index of a sharded checkpoint.
    path: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
    /// Arrays made by [`Checkpoint::array`] (what the staging tests observe).
    #[cfg(test)]
    made: std::sync::atomic::AtomicUsize,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `*.safetensors.index.json`, or a folder holding
    /// either one index or exactly one `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, WeightError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(WeightError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let file = if path.is_dir() {
            pick_in_dir(path)?
        } else {
            path.to_path_buf()
        };
        let is_index = file
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.ends_with(".safetensors.index.json"));
        if is_index {
            Self::open_sharded(&file)
        } else {
            Self::open_single(&file)
        }
    }

    fn open_single(file: &Path) -> Result<Checkpoint, WeightError> {
        let mut checkpoint = Checkpoint {
            path: file.to_path_buf(),
            shards: Vec::new(),
            tensors: BTreeMap::new(),
            #[cfg(test)]
            made: Default::default(),
        };
        let shard = Shard::open(file)?;
        for (name, entry) in shard.entries(0)? {
            checkpoint.tensors.insert(name, entry);
        }
        checkpoint.shards.push(shard);
        Ok(checkpoint)
    }

    /// What was opened: the `.safetensors` file or the index.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Shape and dtype of a tensor, from its header.
    pub fn spec(&self, name: &str) -> Option<TensorSpec> {
        self.tensors
            .get(name)
            .map(|entry| TensorSpec::new(name, entry.shape.clone(), entry.dtype))
    }

    /// The file holding a tensor.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|entry| self.shards[entry.shard].path.as_path())
    }

    /// Compares the checkpoint with what a model expects and reports every difference
    /// at once: missing tensors, wrong shapes, wrong dtypes, and (under
    /// [`Extra::Report`]) tensors the model does not know. A stored f32, f16 or bf16 fits
    /// any float the model declares (see [`Dtype::loads_as`]); other dtypes must match.
    pub fn check(&self, expected: &[TensorSpec], extra: Extra) -> Result<(), WeightError> {
        let mut problems = Vec::new();
        for spec in expected {
            match self.tensors.get(&spec.name) {
                None => problems.push(Problem::Missing(spec.clone())),
                Some(entry) => {
                    if entry.shape != spec.shape {
                        problems.push(Problem::Shape {
                            name: spec.name.clone(),
                            expected: spec.shape.clone(),
                            found: entry.shape.clone(),
                        });
                    }
                    if !entry.dtype.loads_as(spec.dtype) {
                        problems.push(Problem::Dtype {
                            name: spec.name.clone(),
                            expected: spec.dtype,
                            found: entry.dtype,
                        });
                    }
                }
            }
        }
        if extra == Extra::Report {
            let known: std::collections::HashSet<&str> =
                expected.iter().map(|spec| spec.name.as_str()).collect();
            for (name, entry) in &self.tensors {
                if !known.contains(name.as_str()) {
                    problems.push(Problem::Unexpected {
                        name: name.clone(),
                        file: self.shards[entry.shard].path.clone(),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WeightError::Mismatch {
                path: self.path.clone(),
                problems,
            })
        }
    }

    /// Brings every mapped page into memory with all cores at once (one read per page), so
    /// that the copies [`Checkpoint::array`] makes one tensor at a time run at memory speed
    /// instead of taking a page fault per 4 KiB.
    pub fn prefetch(&self) {
        const PAGE: usize = 4096;
        let threads = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .min(32);
        let total: usize = self.shards.iter().map(|s| s.map.len()).sum();
        let chunk = total.div_ceil(threads).max(PAGE);
        // ranges of about `chunk` bytes, one thread each
        let mut ranges: Vec<&[u8]> = vec![];
        for s in &self.shards {
            let mut at = 0;
            while at < s.map.len() {
                let end = (at + chunk).min(s.map.len());
                ranges.push(&s.map[at..end]);
                at = end;
            }
        }
        std::thread::scope(|scope| {
            for bytes in ranges {
                scope.spawn(move || {
                    let mut sum = 0u8;
                    for i in (0..bytes.len()).step_by(PAGE) {
                        // SAFETY: `i` is inside `bytes`; a volatile read so the loop stays.
                        sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(&bytes[i]) });
                    }
                    std::hint::black_box(sum);
                });
            }
        });
    }

    /// The tensor as an MLX array of the stored dtype and shape (a copy of its bytes).
    pub fn array(&self, name: &str) -> Result<mlx_rs::Array, WeightError> {
        #[cfg(test)]
        self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let entry = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightError::TensorNotFound {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let shard = &self.shards[entry.shard];
        let shape: Vec<i32> = entry
            .shape
            .iter()
            .map(|&d| i32::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| WeightError::TooLarge {
                path: shard.path.clone(),
                name: name.to_string(),
                shape: entry.shape.clone(),
            })?;
        let bytes = &shard.map[entry.bytes.0..entry.bytes.1];
        let size = entry.dtype.size();
        // MLX reads the buffer as elements of the dtype: give it an aligned copy when
        // the file's offsets leave the data unaligned.
        let aligned: Vec<u64>;
        let data = if (bytes.as_ptr() as usize) % size == 0 {
            bytes.as_ptr()
        } else {
            let mut buf = vec![0u64; bytes.len().div_ceil(8)];
            // SAFETY: `buf` holds at least `bytes.len()` bytes and does not overlap `bytes`.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    buf.as_mut_ptr() as *mut u8,
                    bytes.len(),
                )
            };
            aligned = buf;
            aligned.as_ptr() as *const u8
        };
        // SAFETY: `data` points at `bytes.len()` readable bytes, which the validated header
        // says equal the product of `shape` times the dtype size; MLX copies them.
        let array =
            unsafe { mlx_rs::Array::from_raw_data(data.cast(), &shape, entry.dtype.to_mlx()) };
        Ok(array)
    }
}

/// The checkpoint file inside a folder: its one index, else its one `.safetensors` file.
fn pick_in_dir(dir: &Path) -> Result<PathBuf, WeightError> {
    let io = |source| WeightError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut indexes = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".safetensors.index.json") {
            indexes.push(name.to_string());
        } else if name.ends_with(".safetensors") {
            files.push(name.to_string());
        }
    }
    indexes.sort();
    files.sort();
    match (indexes.len(), files.len()) {
        (1, _) => Ok(dir.join(&indexes[0])),
        (0, 1) => Ok(dir.join(&files[0])),
        (0, 0) => Err(WeightError::NoSafetensors {
            dir: dir.to_path_buf(),
        }),
        (0, _) => Err(WeightError::Ambiguous {
            dir: dir.to_path_buf(),
            files,
        }),
        _ => Err(WeightError::SeveralIndexes {
            dir: dir.to_path_buf(),
            indexes,
        }),
    }
}

/// Refuses anything but a regular file before it is opened: `metadata` follows symlinks,
/// so a link to a regular file passes, while a FIFO (whose `open` blocks until a writer
/// comes) or a device node is named and refused.
fn regular_file(path: &Path) -> Result<(), WeightError> {
    let meta = std::fs::metadata(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    is_regular(path, meta.file_type())
}

fn is_regular(path: &Path, file_type: FileType) -> Result<(), WeightError> {
    match crate::files::not_regular(file_type) {
        None => Ok(()),
        Some(kind) => Err(WeightError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        }),
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Shard, WeightError> {
        let io = |source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        };
        regular_file(path)?;
        let file = File::open(path).map_err(io)?;
        // Checked again on the open file, in case the path was replaced by a device in
        // between (a FIFO swapped in at that instant would still block `open`).
        is_regular(path, file.metadata().map_err(io)?.file_type())?;
        // SAFETY: the map is read-only and lives as long as the `Shard`. It is undefined
        // behaviour if another process truncates or rewrites the file while it is mapped;
        // checkpoints are treated as immutable inputs, as every mmap-based loader does.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
        })
    }

    /// Every tensor of the validated header.
    fn entries(&self, shard: usize) -> Result<Vec<(String, Entry)>, WeightError> {
        let corrupt = |reason: String| WeightError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        // the sizes the header gives, checked first with checked arithmetic: the safetensors
        // crate adds them unchecked (a header of huge tensors overflows it)
        let expected = header_data_end(&self.map);
        if expected.is_some_and(|end| end != self.map.len() as u64) {
            return Err(self.size_error(expected));
        }
        let (header_len, metadata) = match SafeTensors::read_metadata(&self.map) {
            Ok(parsed) => parsed,
            Err(safetensors::SafeTensorError::MetadataIncompleteBuffer) => {
                return Err(self.size_error(expected));
            }
            Err(e) => return Err(corrupt(describe_safetensors_error(&e))),
        };
        let data_start = 8 + header_len;
        let mut entries = Vec::new();
        for (name, info) in metadata.tensors() {
            let dtype = Dtype::from_safetensors(info.dtype).ok_or_else(|| {
                WeightError::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.clone(),
                    dtype: format!("{:?}", info.dtype),
                }
            })?;
            let (start, end) = info.data_offsets;
            entries.push((
                name,
                Entry {
                    shard,
                    dtype,
                    shape: info.shape.clone(),
                    bytes: (data_start + start, data_start + end),
                },
            ));
        }
        Ok(entries)
    }

    /// The header's data (`expected` bytes with it, [`header_data_end`]) does not cover the
    /// file exactly: say how many bytes it wanted.
    fn size_error(&self, expected: Option<u64>) -> WeightError {
        let actual = self.map.len() as u64;
        match expected {
            Some(expected) if expected > actual => WeightError::Truncated {
                path: self.path.clone(),
                expected,
                actual,
            },
            Some(expected) if expected < actual => WeightError::TooLong {
                path: self.path.clone(),
                expected,
                actual,
            },
            _ => WeightError::Corrupt {
                path: self.path.clone(),
                reason: "tensor data does not cover the file".to_string(),
            },
        }
    }
}

/// File size implied by a safetensors header: 8 + header length + the largest data end
/// (`u64::MAX` where that sum overflows); `None` where the header cannot be read.
fn header_data_end(bytes: &[u8]) -> Option<u64> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header = bytes.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let end = json
        .as_object()?
        .iter()
        .filter(|(key, _)| *key != "__metadata__")
        .filter_map(|(_, info)| info.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Some(8u64.saturating_add(len).saturating_add(end))
}

fn describe_safetensors_error(error: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match error {
        E::HeaderTooSmall => "shorter than the 8-byte header length".to_string(),
        E::InvalidHeaderLength => "the header length runs past the end of the file".to_string(),
        E::HeaderTooLarge => "the header length is implausibly large".to_string(),
        E::InvalidHeader(e) => format!("the header is not utf-8 ({e})"),
        E::InvalidHeaderDeserialization(e) => format!("the header is not valid json ({e})"),
        E::InvalidOffset(name) => format!("tensor `{name}` has invalid data offsets"),
        E::TensorInvalidInfo => "a tensor's shape and dtype disagree with its offsets".to_string(),
        other => format!("{other}").to_lowercase(),
    }
}
