//! The runtime's weight loader on real safetensors files written in a temporary folder,
//! and the device choice against the libmlx the tests are linked with.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use half::{bf16, f16};
use qwen_runtime::device::{self, Backend};
use qwen_runtime::{Checkpoint, Dtype, Extra, TensorSpec, WeightError};
use safetensors::tensor::TensorView;

/// One tensor to write: name, dtype, shape, raw little-endian bytes.
struct T {
    name: &'static str,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32s(name: &'static str, shape: &[usize], values: &[f32]) -> T {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    T {
        name,
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn bf16s(name: &'static str, shape: &[usize], values: &[f32]) -> T {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    T {
        name,
        dtype: safetensors::Dtype::BF16,
        shape: shape.to_vec(),
        bytes: values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

fn f16s(name: &'static str, shape: &[usize], values: &[f32]) -> T {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    T {
        name,
        dtype: safetensors::Dtype::F16,
        shape: shape.to_vec(),
        bytes: values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

fn ints(name: &'static str, dtype: safetensors::Dtype, shape: &[usize]) -> T {
    let size = match dtype {
        safetensors::Dtype::I32 => 4,
        _ => 1,
    };
    T {
        name,
        dtype,
        shape: shape.to_vec(),
        bytes: vec![0; size * shape.iter().product::<usize>()],
    }
}

fn zeros(name: &'static str, shape: &[usize]) -> T {
    f32s(name, shape, &vec![0.0; shape.iter().product()])
}

fn write(path: &Path, tensors: &[T]) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name,
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A two-shard checkpoint in diffusers/transformers layout; returns the folder.
fn sharded(dir: &Path) -> PathBuf {
    let a = "diffusion_pytorch_model-00001-of-00002.safetensors";
    let b = "diffusion_pytorch_model-00002-of-00002.safetensors";
    write(
        &dir.join(a),
        &[
            f32s("blocks.0.w", &[2, 3], &[1., 2., 3., 4., 5., 6.]),
            zeros("blocks.0.b", &[3]),
        ],
    );
    write(
        &dir.join(b),
        &[bf16s(
            "blocks.1.w",
            &[3, 2],
            &[0.5, -1.0, 2.0, 0.25, 8.0, -3.0],
        )],
    );
    let map: BTreeMap<&str, &str> = [("blocks.0.w", a), ("blocks.0.b", a), ("blocks.1.w", b)]
        .into_iter()
        .collect();
    let index = format!(
        "{{\"metadata\": {{\"total_size\": 48}}, \"weight_map\": {}}}",
        serde_json_map(&map)
    );
    fs::write(
        dir.join("diffusion_pytorch_model.safetensors.index.json"),
        index,
    )
    .unwrap();
    dir.to_path_buf()
}

fn serde_json_map(map: &BTreeMap<&str, &str>) -> String {
    let body: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("\"{k}\": \"{v}\""))
        .collect();
    format!("{{{}}}", body.join(", "))
}

fn expected() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("blocks.0.w", [2, 3], Dtype::F32),
        TensorSpec::new("blocks.0.b", [3], Dtype::F32),
        TensorSpec::new("blocks.1.w", [3, 2], Dtype::BF16),
    ]
}

fn message(result: Result<impl std::fmt::Debug, WeightError>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn sharded_index_routes_every_tensor_to_its_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(sharded(tmp.path())).unwrap();
    assert_eq!(ckpt.names(), ["blocks.0.b", "blocks.0.w", "blocks.1.w"]);
    assert_eq!(
        ckpt.spec("blocks.1.w"),
        Some(TensorSpec::new("blocks.1.w", [3, 2], Dtype::BF16))
    );
    assert!(ckpt
        .file_of("blocks.1.w")
        .unwrap()
        .ends_with("diffusion_pytorch_model-00002-of-00002.safetensors"));
    ckpt.check(&expected(), Extra::Report).unwrap();
    assert!(ckpt.spec("nope").is_none());
}

#[test]
fn index_file_can_be_opened_directly() {
    let tmp = tempfile::tempdir().unwrap();
    sharded(tmp.path());
    let ckpt = Checkpoint::open(
        tmp.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
    )
    .unwrap();
    assert_eq!(ckpt.names().len(), 3);
}

#[test]
fn missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sharded(tmp.path());
    fs::remove_file(dir.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    let msg = message(Checkpoint::open(&dir));
    assert!(
        msg.starts_with("missing shard ")
            && msg.contains(
                "diffusion_pytorch_model-00002-of-00002.safetensors, named by the index "
            )
            && msg.ends_with("diffusion_pytorch_model.safetensors.index.json"),
        "{msg}"
    );
}

#[test]
fn index_pointing_at_the_wrong_shard_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sharded(tmp.path());
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    let text = fs::read_to_string(&index).unwrap().replace(
        "\"blocks.1.w\": \"diffusion_pytorch_model-00002",
        "\"blocks.1.w\": \"diffusion_pytorch_model-00001",
    );
    fs::write(&index, text).unwrap();
    let msg = message(Checkpoint::open(&dir));
    assert!(
        msg.contains("places tensor `blocks.1.w` in ")
            && msg.ends_with("00001-of-00002.safetensors, which does not hold it"),
        "{msg}"
    );
}

#[test]
fn malformed_index_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("model.safetensors.index.json");
    fs::write(&index, "{\"weight_map\": [1, 2]}").unwrap();
    let msg = message(Checkpoint::open(&index));
    assert!(msg.starts_with("malformed index "), "{msg}");
    assert!(msg.ends_with(": no `weight_map` object"), "{msg}");

    fs::write(&index, "{not json").unwrap();
    let msg = message(Checkpoint::open(&index));
    assert!(
        msg.starts_with("malformed index ") && msg.contains("key must be a string"),
        "{msg}"
    );
}

#[test]
fn truncated_file_says_how_many_bytes_are_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write(&path, &[zeros("w", &[4, 4]), zeros("b", &[4])]);
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..full.len() - 10]).unwrap();
    let msg = message(Checkpoint::open(&path));
    let expected = format!(
        "truncated safetensors file {}: its header describes {} bytes, the file has {}",
        path.display(),
        full.len(),
        full.len() - 10
    );
    assert_eq!(msg, expected);
}

#[test]
fn file_longer_than_its_header_or_of_impossible_sizes_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write(&path, &[zeros("w", &[4, 4])]);
    let mut full = fs::read(&path).unwrap();
    let n = full.len();
    full.extend([0u8; 7]);
    fs::write(&path, &full).unwrap();
    assert_eq!(
        message(Checkpoint::open(&path)),
        format!(
            "safetensors file {} is longer than its header describes: {n} bytes, the file has {}",
            path.display(),
            n + 7
        )
    );
    // eight tensors of 2^61 - 1 bytes each: their sizes overflow 64 bits (an error, no panic)
    let big = (1u64 << 61) - 1;
    let entries: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                "\"t{i}\":{{\"dtype\":\"U8\",\"shape\":[{big}],\"data_offsets\":[{},{}]}}",
                i * big,
                (i + 1) * big
            )
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    fs::write(&path, &bytes).unwrap();
    let msg = message(Checkpoint::open(&path));
    assert!(msg.starts_with("truncated safetensors file"), "{msg}");
}

#[test]
fn file_cut_inside_its_header_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write(&path, &[zeros("w", &[4, 4])]);
    let full = fs::read(&path).unwrap();
    fs::write(&path, &full[..20]).unwrap();
    let msg = message(Checkpoint::open(&path));
    assert_eq!(
        msg,
        format!(
            "corrupt safetensors file {}: the header length runs past the end of the file",
            path.display()
        )
    );
    fs::write(&path, b"abc").unwrap();
    let msg = message(Checkpoint::open(&path));
    assert!(
        msg.ends_with("shorter than the 8-byte header length"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_and_wrong_dtype_are_all_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(sharded(tmp.path())).unwrap();
    let want = vec![
        TensorSpec::new("blocks.0.w", [3, 2], Dtype::F32), // wrong shape
        TensorSpec::new("blocks.0.b", [3], Dtype::I32),    // wrong dtype
        TensorSpec::new("blocks.1.w", [3, 2], Dtype::BF16), // fine
        TensorSpec::new("blocks.2.w", [4], Dtype::F32),    // missing
    ];
    let msg = message(ckpt.check(&want, Extra::Allow));
    let index = tmp
        .path()
        .join("diffusion_pytorch_model.safetensors.index.json");
    assert_eq!(
        msg,
        format!(
            "checkpoint {} does not match the model (3 problems):\n  \
             tensor `blocks.0.w` has shape [2, 3], expected [3, 2]\n  \
             tensor `blocks.0.b` has dtype f32, expected i32\n  \
             missing tensor `blocks.2.w` (f32 [4])",
            index.display()
        )
    );
}

#[test]
fn unknown_extra_tensors_allowed_or_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write(
        &path,
        &[
            zeros("w", &[2]),
            zeros("extra.a", &[1]),
            zeros("extra.b", &[1]),
        ],
    );
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    let want = [TensorSpec::new("w", [2], Dtype::F32)];
    ckpt.check(&want, Extra::Allow).unwrap();
    let msg = message(ckpt.check(&want, Extra::Report));
    assert_eq!(
        msg,
        format!(
            "checkpoint {p} does not match the model (2 problems):\n  \
             unexpected tensor `extra.a` in {p}\n  \
             unexpected tensor `extra.b` in {p}",
            p = path.display()
        )
    );
}

#[test]
fn missing_file_tensor_and_folder_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere.safetensors");
    assert_eq!(
        message(Checkpoint::open(&nowhere)),
        format!("checkpoint not found: {}", nowhere.display())
    );
    assert_eq!(
        message(Checkpoint::open(tmp.path())),
        format!("no .safetensors file in {}", tmp.path().display())
    );

    write(&tmp.path().join("a.safetensors"), &[zeros("w", &[1])]);
    let ckpt = Checkpoint::open(tmp.path()).unwrap();
    assert_eq!(
        message(ckpt.array("v")),
        format!(
            "tensor `v` not found in {}",
            tmp.path().join("a.safetensors").display()
        )
    );

    write(&tmp.path().join("b.safetensors"), &[zeros("w", &[1])]);
    let msg = message(Checkpoint::open(tmp.path()));
    assert!(
        msg.ends_with(
            "holds 2 .safetensors files and no *.safetensors.index.json to say how they fit: \
             a.safetensors, b.safetensors"
        ),
        "{msg}"
    );
    for i in ["a", "b"] {
        fs::write(tmp.path().join(format!("{i}.safetensors.index.json")), "{}").unwrap();
    }
    let msg = message(Checkpoint::open(tmp.path()));
    assert!(
        msg.ends_with(
            "holds 2 *.safetensors.index.json files, where one says how the shards fit: \
             a.safetensors.index.json, b.safetensors.index.json"
        ),
        "{msg}"
    );
}

#[test]
fn arrays_round_trip_in_their_stored_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(sharded(tmp.path())).unwrap();

    let w = ckpt.array("blocks.0.w").unwrap();
    assert_eq!(w.shape(), [2, 3]);
    assert_eq!(w.dtype(), mlx_dtype(Dtype::F32));
    assert_eq!(w.as_slice::<f32>(), [1., 2., 3., 4., 5., 6.]);

    let v = ckpt.array("blocks.1.w").unwrap();
    assert_eq!(v.shape(), [3, 2]);
    assert_eq!(v.dtype(), mlx_dtype(Dtype::BF16));
    let values: Vec<f32> = v.as_slice::<bf16>().iter().map(|x| x.to_f32()).collect();
    assert_eq!(values, [0.5, -1.0, 2.0, 0.25, 8.0, -3.0]);

    // MLX computes with the loaded arrays: [2,3] x [3,2] in f32.
    let product = w
        .matmul(v.as_dtype(mlx_dtype(Dtype::F32)).unwrap())
        .unwrap();
    assert_eq!(product.as_slice::<f32>(), [28.5, -9.5, 60.0, -20.75]);
}

// === Only regular files are opened ===

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Opens `path` on another thread and fails the test if that takes more than 20 s (opening
/// a FIFO for reading blocks until a writer comes).
fn open_within_20s(path: &Path) -> Result<usize, WeightError> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Checkpoint::open(&path).map(|ckpt| ckpt.names().len()));
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the loader blocked on a FIFO")
}

#[cfg(unix)]
#[test]
fn fifos_and_devices_are_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo_said = |path: &Path| {
        format!(
            "{} is a named pipe (fifo), not a regular file",
            path.display()
        )
    };

    // a single .safetensors file, opened by name or found in its folder
    let single = tmp.path().join("single");
    fs::create_dir(&single).unwrap();
    let file = single.join("model.safetensors");
    mkfifo(&file);
    assert_eq!(message(open_within_20s(&file)), fifo_said(&file));
    assert_eq!(message(open_within_20s(&single)), fifo_said(&file));

    // an index
    let indexed = tmp.path().join("index");
    fs::create_dir(&indexed).unwrap();
    let index = indexed.join("model.safetensors.index.json");
    mkfifo(&index);
    assert_eq!(message(open_within_20s(&indexed)), fifo_said(&index));

    // a shard named by the index
    let dir = sharded(&mkdir(tmp.path().join("sharded")));
    let shard = dir.join("diffusion_pytorch_model-00002-of-00002.safetensors");
    fs::remove_file(&shard).unwrap();
    mkfifo(&shard);
    assert_eq!(message(open_within_20s(&dir)), fifo_said(&shard));

    // device nodes, directly or through a symlink in place of a shard
    assert_eq!(
        message(open_within_20s(Path::new("/dev/null"))),
        "/dev/null is a character device, not a regular file"
    );
    fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &shard).unwrap();
    assert_eq!(
        message(open_within_20s(&dir)),
        format!(
            "{} is a character device, not a regular file",
            shard.display()
        )
    );

    // a folder named like a checkpoint file
    let holder = tmp.path().join("holder");
    let folder = holder.join("model.safetensors");
    fs::create_dir_all(&folder).unwrap();
    assert_eq!(
        message(open_within_20s(&holder)),
        format!("{} is a folder, not a regular file", folder.display())
    );
}

fn mkdir(path: PathBuf) -> PathBuf {
    fs::create_dir_all(&path).unwrap();
    path
}

/// The Hugging Face cache layout: `snapshots/<rev>/` holds symlinks into `blobs/`.
#[cfg(unix)]
#[test]
fn symlinked_shards_and_index_load() {
    let tmp = tempfile::tempdir().unwrap();
    let real = sharded(&mkdir(tmp.path().join("real")));
    let blobs = mkdir(tmp.path().join("blobs"));
    let snapshot = mkdir(tmp.path().join("snapshots/0123abcd"));
    let mut files: Vec<PathBuf> = fs::read_dir(&real)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for (i, file) in files.iter().enumerate() {
        fs::rename(file, blobs.join(format!("blob{i}"))).unwrap();
        let link = snapshot.join(file.file_name().unwrap());
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), link).unwrap();
    }
    let ckpt = Checkpoint::open(&snapshot).unwrap();
    ckpt.check(&expected(), Extra::Report).unwrap();
    assert!(ckpt.file_of("blocks.0.w").unwrap().starts_with(&snapshot));
    assert_eq!(
        ckpt.array("blocks.0.w").unwrap().as_slice::<f32>(),
        [1., 2., 3., 4., 5., 6.]
    );
}

// === The index's weight_map ===

/// Points `blocks.1.w` of the `sharded` checkpoint at `shard`; returns the index.
fn place_blocks_1_w(dir: &Path, shard: &str) -> PathBuf {
    let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
    let a = "diffusion_pytorch_model-00001-of-00002.safetensors";
    let json = serde_json::json!({
        "weight_map": {"blocks.0.w": a, "blocks.0.b": a, "blocks.1.w": shard}
    });
    fs::write(&index, json.to_string()).unwrap();
    index
}

#[cfg(unix)]
#[test]
fn weight_map_entries_must_be_plain_file_names_in_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sharded(&mkdir(tmp.path().join("ckpt")));
    let b = "diffusion_pytorch_model-00002-of-00002.safetensors";
    // Real copies of the shard where each bad entry points, so that only the rule refuses it.
    let outside = tmp.path().join("outside.safetensors");
    fs::copy(dir.join(b), &outside).unwrap();
    fs::create_dir(dir.join("sub")).unwrap();
    fs::copy(dir.join(b), dir.join("sub").join(b)).unwrap();
    fs::copy(dir.join(b), dir.join("sub\\x.safetensors")).unwrap();

    let absolute = outside.to_str().unwrap().to_string();
    let nested = format!("sub/{b}");
    let dotted = format!("./{b}");
    for bad in [
        absolute.as_str(),
        "../outside.safetensors",
        nested.as_str(),
        dotted.as_str(),
        "sub\\x.safetensors",
        "..",
        ".",
        "",
    ] {
        let index = place_blocks_1_w(&dir, bad);
        assert_eq!(
            message(Checkpoint::open(&dir)),
            format!(
                "index {} places tensor `blocks.1.w` in `{bad}`, \
                 which is not a plain file name in the index's folder",
                index.display()
            )
        );
    }
    // the plain name still loads
    place_blocks_1_w(&dir, b);
    Checkpoint::open(&dir).unwrap();
}

#[test]
fn a_tensor_stored_in_two_shards_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = sharded(tmp.path());
    let a = dir.join("diffusion_pytorch_model-00001-of-00002.safetensors");
    let b = dir.join("diffusion_pytorch_model-00002-of-00002.safetensors");
    let second = |extra: T| write(&b, &[bf16s("blocks.1.w", &[3, 2], &[0.0; 6]), extra]);

    // the index places `blocks.0.w` in the first shard; the second holds it too
    second(zeros("blocks.0.w", &[2, 3]));
    assert_eq!(
        message(Checkpoint::open(&dir)),
        format!(
            "tensor `blocks.0.w` is stored in two shards: {} and {}",
            a.display(),
            b.display()
        )
    );

    // a tensor the index does not list, in both shards
    write(
        &a,
        &[
            f32s("blocks.0.w", &[2, 3], &[0.0; 6]),
            zeros("blocks.0.b", &[3]),
            zeros("stray", &[1]),
        ],
    );
    second(zeros("stray", &[1]));
    assert_eq!(
        message(Checkpoint::open(&dir)),
        format!(
            "tensor `stray` is stored in two shards: {} and {}",
            a.display(),
            b.display()
        )
    );
}

// === Stored float dtypes ===

/// Specs as a bf16 model declares them.
fn bf16_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("w", [2, 3], Dtype::BF16),
        TensorSpec::new("b", [3], Dtype::BF16),
    ]
}

#[test]
fn f32_and_f16_checkpoints_fit_bf16_specs_and_load_in_their_stored_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let values = [0.5, -1.0, 2.0, 0.25, 8.0, -3.0];
    let path = tmp.path().join("model.safetensors");
    for (stored, tensors) in [
        (
            Dtype::F32,
            [f32s("w", &[2, 3], &values), f32s("b", &[3], &values[..3])],
        ),
        (
            Dtype::F16,
            [f16s("w", &[2, 3], &values), f16s("b", &[3], &values[..3])],
        ),
        (
            Dtype::BF16,
            [bf16s("w", &[2, 3], &values), bf16s("b", &[3], &values[..3])],
        ),
    ] {
        write(&path, &tensors);
        let ckpt = Checkpoint::open(&path).unwrap();
        ckpt.check(&bf16_specs(), Extra::Report)
            .unwrap_or_else(|e| panic!("{stored}: {e}"));
        let w = ckpt.array("w").unwrap();
        assert_eq!(w.dtype(), mlx_dtype(stored));
        // converted once to the compute dtype, as the generated loaders do
        let w = w.as_dtype(mlx_dtype(Dtype::BF16)).unwrap();
        let got: Vec<f32> = w.as_slice::<bf16>().iter().map(|x| x.to_f32()).collect();
        assert_eq!(got, values, "{stored}");
    }
}

#[test]
fn non_float_dtypes_and_wrong_shapes_are_still_refused_where_a_float_is_expected() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    write(
        &path,
        &[
            f16s("w", &[3, 2], &[0.0; 6]),
            ints("b", safetensors::Dtype::I32, &[3]),
            ints("m", safetensors::Dtype::U8, &[3]),
            ints("k", safetensors::Dtype::BOOL, &[3]),
        ],
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let mut want = bf16_specs();
    want.push(TensorSpec::new("m", [3], Dtype::F32));
    want.push(TensorSpec::new("k", [3], Dtype::F16));
    assert_eq!(
        message(ckpt.check(&want, Extra::Allow)),
        format!(
            "checkpoint {} does not match the model (4 problems):\n  \
             tensor `w` has shape [3, 2], expected [2, 3]\n  \
             tensor `b` has dtype i32, expected a float (f32, f16 or bf16)\n  \
             tensor `m` has dtype u8, expected a float (f32, f16 or bf16)\n  \
             tensor `k` has dtype bool, expected a float (f32, f16 or bf16)",
            path.display()
        )
    );
    // a non-float place takes only its own dtype
    ckpt.check(&[TensorSpec::new("b", [3], Dtype::I32)], Extra::Allow)
        .unwrap();
}

fn mlx_dtype(dtype: Dtype) -> qwen_runtime::__private::mlx_rs::Dtype {
    dtype.to_mlx()
}

#[test]
fn device_choice_never_panics_on_a_cpu_only_libmlx() {
    let chosen = device::choose();
    if device::count(Backend::Gpu) == 0 {
        // The CPU wheel the tests link against: no GPU, CPU chosen, GPU refused cleanly.
        assert_eq!(chosen.backend, Backend::Cpu);
        assert!(chosen.name.starts_with("cpu:0"), "{}", chosen.name);
        let err = device::select(Backend::Gpu).unwrap_err();
        assert!(
            err.to_string().starts_with("no gpu in the loaded libmlx"),
            "{err}"
        );
    } else {
        assert_eq!(chosen.backend, Backend::Gpu);
        assert!(chosen.name.starts_with("gpu:0"), "{}", chosen.name);
    }
    assert!(device::count(Backend::Cpu) >= 1);
}
