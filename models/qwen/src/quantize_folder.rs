//! Pre-quantized model folders: `qwen-run quantize --model DIR --bits 8 --output DIR2` writes
//! DIR2 in the diffusers layout with the transformer's linear weights quantized as
//! `--quantize` would do at load, so that a small card never holds the bf16 transformer.
//!
//! The transformer folder keeps its checkpoint keys: a quantized weight `name.weight`
//! `[out, in]` is stored as its packed values (`u32` `[out, in · bits / 32]`) under the same
//! key, with `name.scales` and `name.biases` `[out, in / group]` beside it (MLX's affine
//! layout); every other tensor as it was. `transformer/quantization.json` says so
//! (`{"format": "mlx-affine", "group_size": 64, "layers": "attn=8,…"}`); its presence is how
//! [`crate::pipeline::Pipeline::open`] knows to load those weights as stored. The other
//! components are hard links to the source files (copies across file systems).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use qwen_runtime::__private::mlx_rs::Array;
use qwen_runtime::quant::{quantize, stem, Plan, QuantSpec};
use qwen_runtime::weights::Checkpoint;

use crate::pipeline::PipelineError;
use crate::quantize::{LayerKind, Quantization};

/// The file that marks a transformer folder as written by `qwen-run quantize`.
pub const QUANTIZATION_FILE: &str = "quantization.json";

/// Shards of at most this many bytes (diffusers writes 5 GB ones, hence ≤ 10 GB here too).
const SHARD_BYTES: usize = 5_000_000_000;

/// How a folder `qwen-run quantize` wrote is quantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredQuantization {
    pub group_size: i32,
    /// `attn=8,…` as written.
    pub layers: String,
}

/// How a transformer folder is stored quantized, `None` for a plain one.
pub fn stored(transformer: &Path) -> Result<Option<StoredQuantization>, PipelineError> {
    let path = transformer.join(QUANTIZATION_FILE);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let invalid = |reason: String| PipelineError::Invalid {
        path: path.clone(),
        reason,
    };
    let text = qwen_runtime::files::read_regular(&path).map_err(|e| invalid(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if v["format"] != "mlx-affine" {
        return Err(invalid(format!(
            "format {} (only \"mlx-affine\" is known)",
            v["format"]
        )));
    }
    let group_size = match v["group_size"].as_i64() {
        Some(g @ (32 | 64 | 128)) => g as i32,
        _ => {
            return Err(invalid(format!(
                "group_size {} (32, 64 or 128)",
                v["group_size"]
            )))
        }
    };
    let layers = v["layers"].as_str().unwrap_or("").to_owned();
    Ok(Some(StoredQuantization { group_size, layers }))
}

/// What [`write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub quantized: usize,
    pub kept: usize,
    /// Bytes of the transformer's shards.
    pub bytes: usize,
    pub shards: usize,
}

fn io(path: &Path, what: &str) -> impl Fn(std::io::Error) -> PipelineError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |e| PipelineError::Write {
        path: path.clone(),
        reason: format!("{what}: {e}"),
    }
}

/// Hard-links (else copies) the file `from` to `to`; a symbolic link (a Hugging Face cache
/// snapshot links its files into `blobs/`) is resolved first, so the new folder holds the
/// file itself.
fn link_file(from: &Path, to: &Path) -> Result<(), PipelineError> {
    let real = fs::canonicalize(from).map_err(io(from, "resolving"))?;
    if fs::hard_link(&real, to).is_err() {
        fs::copy(&real, to).map_err(io(&real, "copying"))?;
    }
    Ok(())
}

/// [`link_file`] for every regular file under `src`, at the same place under `dst`.
fn link_tree(src: &Path, dst: &Path) -> Result<(), PipelineError> {
    fs::create_dir_all(dst).map_err(io(dst, "creating the folder"))?;
    for entry in fs::read_dir(src).map_err(io(src, "reading the folder"))? {
        let entry = entry.map_err(io(src, "reading the folder"))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = fs::metadata(&from).map_err(io(&from, "reading"))?;
        if meta.is_dir() {
            link_tree(&from, &to)?;
        } else if meta.is_file() {
            link_file(&from, &to)?;
        }
    }
    Ok(())
}

/// Writes the quantized copy of the model folder `src` to `dst` (which must not exist): the
/// transformer's linear weights quantized as `q`'s transformer plan says, one tensor at a
/// time (at most one shard, 5 GB, is held). Written under `dst`'s name + `.partial` and
/// renamed at the end, so a failed run leaves no half folder under `dst`; a `.partial` folder a
/// killed run left (it carries this function's mark) is replaced, any other is refused.
pub fn write(src: &Path, dst: &Path, q: &Quantization) -> Result<Written, PipelineError> {
    if fs::symlink_metadata(dst).is_ok() {
        return Err(PipelineError::Request(format!(
            "{} exists; give a new folder for the quantized model",
            dst.display()
        )));
    }
    if stored(&src.join("transformer"))?.is_some() {
        return Err(PipelineError::Request(format!(
            "{} is already quantized",
            src.display()
        )));
    }
    let ck = Checkpoint::open(src.join("transformer")).map_err(|error| PipelineError::Weights {
        component: "transformer",
        error,
    })?;
    if q.bits(LayerKind::TextEncoder).is_some() {
        return Err(PipelineError::Request(
            "a quantized folder keeps the text encoder as it is; quantize it at load \
             (--quantize-layers text_encoder=BITS)"
                .into(),
        ));
    }
    // `DIR.partial` beside `DIR` (also for `DIR/`), renamed to `DIR` when complete
    let name = match (dst.file_name(), dst.components().next_back()) {
        (Some(n), Some(std::path::Component::Normal(_))) => n.to_owned(),
        _ => {
            return Err(PipelineError::Request(format!(
                "{}: give the quantized model a folder name",
                dst.display()
            )))
        }
    };
    let parent = dst.parent().filter(|p| !p.as_os_str().is_empty());
    let mut partial = name;
    partial.push(".partial");
    let tmp = parent.unwrap_or(Path::new(".")).join(partial);
    if tmp.exists() {
        // left by a run that failed or was killed, which marked it; anything else is the user's
        if !tmp.join(PARTIAL_MARK).is_file() {
            return Err(PipelineError::Request(format!(
                "{} exists and was not left by a quantize run: move it away first",
                tmp.display()
            )));
        }
        fs::remove_dir_all(&tmp).map_err(io(&tmp, "removing a folder a failed run left"))?;
    }
    let result = (|| {
        fs::create_dir_all(&tmp).map_err(io(&tmp, "creating the folder"))?;
        let mark = tmp.join(PARTIAL_MARK);
        fs::write(&mark, b"").map_err(io(&mark, "writing"))?;
        for entry in fs::read_dir(src).map_err(io(src, "reading the folder"))? {
            let entry = entry.map_err(io(src, "reading the folder"))?;
            let name = entry.file_name();
            if name == "transformer" {
                continue;
            }
            let from = entry.path();
            if fs::metadata(&from).map_err(io(&from, "reading"))?.is_dir() {
                link_tree(&from, &tmp.join(&name))?;
            } else {
                link_file(&from, &tmp.join(&name))?;
            }
        }
        let written =
            write_transformer(&ck, &src.join("transformer"), &tmp.join("transformer"), q)?;
        fs::remove_file(&mark).map_err(io(&mark, "removing"))?;
        fs::rename(&tmp, dst).map_err(io(dst, "renaming the finished folder"))?;
        Ok(written)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// The file that marks a `DIR.partial` folder as this function's own (removed before the
/// folder is renamed to `DIR`).
const PARTIAL_MARK: &str = ".qwen-quantize-partial";

fn mlx(
    what: &'static str,
) -> impl Fn(qwen_runtime::__private::mlx_rs::error::Exception) -> PipelineError {
    move |source| PipelineError::Mlx { what, source }
}

fn write_transformer(
    ck: &Checkpoint,
    src: &Path,
    dst: &Path,
    q: &Quantization,
) -> Result<Written, PipelineError> {
    fs::create_dir_all(dst).map_err(io(dst, "creating the folder"))?;
    fs::copy(src.join("config.json"), dst.join("config.json"))
        .map_err(io(&src.join("config.json"), "copying"))?;
    let plan = q.transformer();
    let weights = |error| PipelineError::Weights {
        component: "transformer",
        error,
    };
    let names: Vec<String> = ck.names().into_iter().map(str::to_owned).collect();
    // the shard being filled, and the tensor names of every shard (the last one included)
    let mut shard: Vec<(String, Array)> = vec![];
    let mut shard_names: Vec<Vec<String>> = vec![vec![]];
    let mut shard_bytes = 0usize;
    let mut written = Written {
        quantized: 0,
        kept: 0,
        bytes: 0,
        shards: 0,
    };
    let flush = |shard: Vec<(String, Array)>, index: usize| -> Result<(), PipelineError> {
        let path = dst.join(format!("part-{index:05}.safetensors"));
        Array::save_safetensors(shard.iter().map(|(k, v)| (k.as_str(), v)), None, &path).map_err(
            |e| PipelineError::Write {
                path: path.clone(),
                reason: format!("writing a shard: {e}"),
            },
        )
    };
    for name in &names {
        let spec = ck.spec(name).expect("a listed tensor");
        let a = ck.array(name).map_err(weights)?;
        // (`quantize` keeps a weight dense when it is no matrix of whole groups)
        let quantizable = spec.dtype.is_float() && name.ends_with(".weight");
        let (w, qz) =
            quantize(a, plan.spec(name).filter(|_| quantizable)).map_err(mlx("quantizing"))?;
        let mut tensors = vec![(name.clone(), w)];
        match qz {
            Some(qz) => {
                written.quantized += 1;
                let dtype = spec.dtype.to_mlx();
                let scales = qz.scales.as_dtype(dtype).map_err(mlx("casting"))?;
                let biases = qz.biases.as_dtype(dtype).map_err(mlx("casting"))?;
                tensors.push((format!("{}.scales", stem(name)), scales));
                tensors.push((format!("{}.biases", stem(name)), biases));
            }
            None => written.kept += 1,
        }
        for (k, t) in tensors {
            let n = t.nbytes();
            if shard_bytes + n > SHARD_BYTES && !shard.is_empty() {
                flush(std::mem::take(&mut shard), shard_names.len())?;
                shard_names.push(vec![]);
                shard_bytes = 0;
            }
            shard_bytes += n;
            written.bytes += n;
            shard_names.last_mut().expect("one shard").push(k.clone());
            shard.push((k, t));
        }
    }
    flush(shard, shard_names.len())?;
    written.shards = shard_names.len();
    // the published names: diffusion_pytorch_model-0000i-of-0000n.safetensors + index
    let n = shard_names.len();
    let mut weight_map = BTreeMap::new();
    for (i, names) in (1..=n).zip(shard_names) {
        let from = dst.join(format!("part-{i:05}.safetensors"));
        let file = format!("diffusion_pytorch_model-{i:05}-of-{n:05}.safetensors");
        fs::rename(&from, dst.join(&file)).map_err(io(&from, "renaming"))?;
        weight_map.extend(names.into_iter().map(|k| (k, file.clone())));
    }
    let index = serde_json::json!({
        "metadata": {"total_size": written.bytes},
        "weight_map": weight_map,
    });
    let index_path = dst.join("diffusion_pytorch_model.safetensors.index.json");
    fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("json"),
    )
    .map_err(io(&index_path, "writing"))?;
    let info = serde_json::json!({
        "format": "mlx-affine",
        "group_size": QuantSpec::bits(8).group_size,
        "layers": q.describe(),
        "written_by": format!("qwen-run quantize {}", env!("CARGO_PKG_VERSION")),
    });
    let info_path = dst.join(QUANTIZATION_FILE);
    fs::write(&info_path, serde_json::to_vec_pretty(&info).expect("json"))
        .map_err(io(&info_path, "writing"))?;
    Ok(written)
}
