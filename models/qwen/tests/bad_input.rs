//! Issue 9's list of bad input, case by case, through the real `qwen-run` binary.
//!
//! Each row of the table below builds a copy of `tests/fixtures/tiny-qwen-image` (every file
//! a real copy, none a link) in a temp dir, damages it (or picks a bad `--output`), runs
//! `qwen-run --device cpu --model <copy> --prompt x --steps 2 --output <tmp>/out/out.png`
//! with a time limit (a run that blocks, e.g. on a FIFO, is killed and the case fails), and
//! asserts:
//! - exit status 1, and stderr holds exactly one line that is not a `warning:`, starting
//!   `error: ` and naming the problem (every needle of the row is in it);
//! - no `out.png` written;
//! - every file, folder, link and FIFO under the temp dir (the model copy, the output folder)
//!   exactly as it was before the run: nothing changed, removed, or left behind.
//!
//! Library-level checks of the same inputs live in `tests/loader.rs` and `bad_model.rs`;
//! this file is the user's view of them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

/// A run taking longer is killed and fails its case (a normal run of the tiny model takes
/// about 2 s; a refused one less).
const TIME_LIMIT: Duration = Duration::from_secs(20);

const TE_INDEX: &str = "text_encoder/model.safetensors.index.json";
const TE_SHARD_2: &str = "model-00002-of-00004.safetensors";
const DIT_SHARD_1: &str = "transformer/diffusion_pytorch_model-00001-of-00003.safetensors";
const DIT_SHARD_3: &str = "transformer/diffusion_pytorch_model-00003-of-00003.safetensors";
const DIT_INDEX: &str = "transformer/diffusion_pytorch_model.safetensors.index.json";
const VAE_WEIGHTS: &str = "vae/diffusion_pytorch_model.safetensors";

/// One `#[test]` per row, each running [`check`].
macro_rules! cases {
    ($($(#[$attr:meta])* $name:ident: $setup:expr => [$($needle:expr),* $(,)?];)*) => {$(
        #[test]
        $(#[$attr])*
        fn $name() {
            check($setup, &[$($needle),*]);
        }
    )*};
}

// ---------------------------------------------------------------------------------------
// The table: one test per bad input of issue 9 (signals aside).
//
//   name: setup => [substrings of the error line];
//
// `setup(model, out_dir)` damages the model copy and returns the `--output` to pass (`None`:
// `out_dir/out.png`). A row whose input is not handled yet carries `#[ignore = "why"]`.
// ---------------------------------------------------------------------------------------

cases! {
    // -- token ids outside the text encoder's embedding table (152064 rows) --
    vocab_json_id_one_past_the_table:
        |m, _| { vocab_entry(m, 152_064); None }
        => ["<|far|>", "has id 152064", "embedding table of 152064 rows"];
    vocab_json_id_u32_max:
        |m, _| { vocab_entry(m, u32::MAX); None }
        => ["<|far|>", "4294967295", "embedding table"];
    added_token_id_one_past_the_table:
        |m, _| { added_token(m, 152_064); None }
        => ["token `<|far|>`", "has id 152064", "embedding table of 152064 rows"];
    added_token_id_u32_max:
        |m, _| { added_token(m, u32::MAX); None }
        => ["`<|far|>` has id 4294967295", "past the largest token id"];

    // -- a FIFO in place of a config or weight file: refused, never blocks --
    fifo_as_model_index_json:
        |m, _| { fifo(m, "model_index.json"); None }
        => ["model_index.json", "not a regular file"];
    fifo_as_transformer_config:
        |m, _| { fifo(m, "transformer/config.json"); None }
        => ["transformer/config.json", "not a regular file"];
    fifo_as_text_encoder_config:
        |m, _| { fifo(m, "text_encoder/config.json"); None }
        => ["text_encoder/config.json", "not a regular file"];
    fifo_as_vae_config:
        |m, _| { fifo(m, "vae/config.json"); None }
        => ["vae/config.json", "not a regular file"];
    fifo_as_scheduler_config:
        |m, _| { fifo(m, "scheduler/scheduler_config.json"); None }
        => ["scheduler_config.json", "not a regular file"];
    fifo_as_vocab_json:
        |m, _| { fifo(m, "tokenizer/vocab.json"); None }
        => ["vocab.json", "not a regular file"];
    fifo_as_weight_index:
        |m, _| { fifo(m, DIT_INDEX); None }
        => ["diffusion_pytorch_model.safetensors.index.json", "not a regular file"];
    fifo_as_weight_shard:
        |m, _| { fifo(m, DIT_SHARD_3); None }
        => ["diffusion_pytorch_model-00003-of-00003.safetensors", "not a regular file"];
    fifo_as_single_weight_file:
        |m, _| { fifo(m, VAE_WEIGHTS); None }
        => ["vae/diffusion_pytorch_model.safetensors", "not a regular file"];

    // -- model_index.json empty, invalid, of another pipeline --
    model_index_empty:
        |m, _| { write(m, "model_index.json", ""); None }
        => ["model_index.json", "not valid JSON"];
    model_index_invalid:
        |m, _| { write(m, "model_index.json", "{\"_class_name\": "); None }
        => ["model_index.json", "not valid JSON"];
    model_index_of_another_pipeline:
        |m, _| { edit(m, "model_index.json", "QwenImagePipeline", "FluxPipeline"); None }
        => ["model_index.json", "\"FluxPipeline\"", "expected \"QwenImagePipeline\""];

    // -- configs that disagree with the generated module --
    text_encoder_num_hidden_layers_1e9:
        |m, _| { edit(m, "text_encoder/config.json", "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1e9"); None }
        => ["text_encoder/config.json: `num_hidden_layers` is 1000000000.0, expected 2"];
    transformer_in_channels_minus_7:
        |m, _| { edit(m, "transformer/config.json", "\"in_channels\": 64", "\"in_channels\": -7"); None }
        => ["transformer/config.json: `in_channels` is -7, expected 64"];
    vae_z_dim_0:
        |m, _| { edit(m, "vae/config.json", "\"z_dim\": 16", "\"z_dim\": 0"); None }
        => ["vae/config.json: `z_dim` is 0, expected 16"];

    // -- non-finite or absurd values --
    latents_mean_1e39:
        |m, _| { edit(m, "vae/config.json", "-0.7089", "1e39"); None }
        => ["vae/config.json", "`latents_mean[1]` is 1e+39, expected a finite number"];
    scheduler_shift_1e308:
        |m, _| { edit(m, "scheduler/scheduler_config.json", "\"shift\": 1.0", "\"shift\": 1e308"); None }
        => ["scheduler_config.json", "`shift` is 1e308"];
    nan_weights:
        |m, _| { nan_bias(m); None }
        => ["latents are not finite", "after denoising step 1 of 2"];
    latents_std_minus_1:
        |m, _| { edit(m, "vae/config.json", "1.4541", "-1"); None }
        => ["vae/config.json", "`latents_std[1]` is -1, expected a positive number"];
    num_train_timesteps_0:
        |m, _| { edit(m, "scheduler/scheduler_config.json", "\"num_train_timesteps\": 1000", "\"num_train_timesteps\": 0"); None }
        => ["scheduler_config.json", "`num_train_timesteps` is 0, expected at least 1"];
    empty_merges_txt:
        |m, _| { write(m, "tokenizer/merges.txt", ""); None }
        => ["merges.txt"];

    // -- --output at an input of the run or a non-regular file, or through a symlink --
    output_at_a_weight_file:
        |m, _| Some(m.join(DIT_SHARD_1))
        => ["diffusion_pytorch_model-00001-of-00003.safetensors", "an input of this run"];
    output_at_a_config:
        |m, _| Some(m.join("transformer/config.json"))
        => ["transformer/config.json", "an input of this run"];
    output_at_a_device_node:
        |_, _| Some(PathBuf::from("/dev/null"))
        => ["output /dev/null is a character device, not a regular file"];
    output_through_a_symlink:
        |_, out| {
            fs::write(out.join("target.png"), b"old").unwrap();
            std::os::unix::fs::symlink(out.join("target.png"), out.join("link.png")).unwrap();
            Some(out.join("link.png"))
        }
        => ["link.png is a symbolic link"];

    // -- an index naming a file outside its folder; a tensor in two shards --
    weight_map_absolute_path:
        |m, _| {
            let absolute = m.join("text_encoder").join(TE_SHARD_2);
            edit(m, TE_INDEX, &format!("\"{TE_SHARD_2}\""), &format!("{:?}", absolute.to_str().unwrap()));
            None
        }
        => ["model.safetensors.index.json", TE_SHARD_2, "not a plain file name in the index's folder"];
    weight_map_dot_dot_outside_the_folder:
        |m, _| {
            edit(m, TE_INDEX, &format!("\"{TE_SHARD_2}\""), &format!("\"../text_encoder/{TE_SHARD_2}\""));
            None
        }
        => ["model.safetensors.index.json", "`../text_encoder/", "not a plain file name in the index's folder"];
    tensor_in_two_shards:
        |m, _| { duplicate_tensor(m, "img_in.bias"); None }
        => ["tensor `img_in.bias` is stored in two shards", "00001-of-00003", "00003-of-00003"];
}

// ---------------------------------------------------------------------------------------
// The runner.
// ---------------------------------------------------------------------------------------

type Setup = fn(&Path, &Path) -> Option<PathBuf>;

/// Copies the fixture, applies `setup`, runs `qwen-run` and checks the failure (see the
/// module's doc).
fn check(setup: Setup, needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let out_dir = tmp.path().join("out");
    copy_dir(&fixture(), &model);
    fs::create_dir(&out_dir).unwrap();
    let png = out_dir.join("out.png");
    let output = setup(&model, &out_dir).unwrap_or_else(|| png.clone());
    let device = output.starts_with("/dev").then(|| kind(&output));

    let before = snapshot(tmp.path());
    let start = Instant::now();
    let (code, stderr) = run(&model, &output);
    let took = start.elapsed();
    println!("exit {code:?} after {took:.2?}; stderr:\n{stderr}");

    assert_eq!(code, Some(1), "exit status; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("warning:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` not in:\n{stderr}");
    }
    assert!(!png.exists(), "an image was written");
    let after = snapshot(tmp.path());
    assert_same(&before, &after);
    if let Some(device) = device {
        assert_eq!(kind(&output), device, "{} changed", output.display());
    }
}

/// `qwen-run` on the CPU: (exit status, stderr). Killed, failing the case, past
/// [`TIME_LIMIT`].
fn run(model: &Path, output: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args(["--device", "cpu", "--prompt", "x", "--steps", "2"])
        .arg("--model")
        .arg(model)
        .arg("--output")
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qwen-run starts");
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + TIME_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            let stderr = reader.join().unwrap();
            panic!(
                "qwen-run still running after {TIME_LIMIT:?} (blocked?), killed; stderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status.code(), reader.join().unwrap())
}

// ---------------------------------------------------------------------------------------
// Snapshots of a folder tree.
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    /// A FIFO, device or socket: never opened (a FIFO would block).
    Other(String),
}

/// Every entry under `root` by relative path (links not followed).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, map: &mut BTreeMap<PathBuf, Entry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let t = meta.file_type();
            let e = if t.is_dir() {
                walk(root, &path, map);
                Entry::Dir
            } else if t.is_file() {
                Entry::File(fs::read(&path).unwrap())
            } else if t.is_symlink() {
                Entry::Link(fs::read_link(&path).unwrap())
            } else {
                Entry::Other(kind(&path))
            };
            map.insert(rel, e);
        }
    }
    let mut map = BTreeMap::new();
    walk(root, root, &mut map);
    map
}

/// What `path` is (links not followed), in words.
fn kind(path: &Path) -> String {
    let t = fs::symlink_metadata(path).unwrap().file_type();
    let k = if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "folder"
    } else {
        "file"
    };
    k.to_string()
}

/// The two snapshots are equal; else names what was added, removed or changed.
fn assert_same(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) {
    let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "files left behind: {added:?}; lost: {removed:?}; changed: {changed:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Building the bad folders.
// ---------------------------------------------------------------------------------------

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen-image")
}

/// A real copy of `src` (files copied, not linked).
fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Replaces `model/rel` by `text`.
fn write(model: &Path, rel: &str, text: &str) {
    fs::write(model.join(rel), text).unwrap();
}

/// Replaces the first `from` (which must occur) in `model/rel` by `to`.
fn edit(model: &Path, rel: &str, from: &str, to: &str) {
    let path = model.join(rel);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "`{from}` not in {rel}");
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Replaces `model/rel` by a FIFO.
fn fifo(model: &Path, rel: &str) {
    let path = model.join(rel);
    fs::remove_file(&path).unwrap();
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// A token `<|far|>` of id `id` in the BPE vocabulary (`vocab.json`).
fn vocab_entry(model: &Path, id: u32) {
    edit(
        model,
        "tokenizer/vocab.json",
        "{",
        &format!("{{\"<|far|>\": {id}, "),
    );
}

/// An added token `<|far|>` of id `id` (`added_tokens.json`).
fn added_token(model: &Path, id: u32) {
    edit(
        model,
        "tokenizer/added_tokens.json",
        "{",
        &format!("{{\n  \"<|far|>\": {id},"),
    );
}

/// Rewrites the safetensors file `model/rel`: `edit` gets the tensors (name, dtype, shape,
/// bytes) and may change them or add some.
fn rewrite_safetensors(model: &Path, rel: &str, edit: impl FnOnce(&mut Vec<Tensor>)) {
    let path = model.join(rel);
    let bytes = fs::read(&path).unwrap();
    let mut tensors = tensors_of(&bytes);
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

type Tensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

fn tensors_of(bytes: &[u8]) -> Vec<Tensor> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect()
}

/// A NaN in the transformer's `proj_out.bias` (bf16): the latents are NaN after step 1.
fn nan_bias(model: &Path) {
    rewrite_safetensors(model, DIT_SHARD_3, |tensors| {
        let (_, dtype, _, data) = tensors.iter_mut().find(|t| t.0 == "proj_out.bias").unwrap();
        assert_eq!(*dtype, safetensors::Dtype::BF16);
        data[..2].copy_from_slice(&0x7fc0u16.to_le_bytes()); // bf16 NaN
    });
}

/// `name` (stored in the transformer's shard 1, where the index places it) also stored in
/// shard 3.
fn duplicate_tensor(model: &Path, name: &str) {
    let first = tensors_of(&fs::read(model.join(DIT_SHARD_1)).unwrap());
    let copy = first.into_iter().find(|t| t.0 == name).unwrap();
    rewrite_safetensors(model, DIT_SHARD_3, |tensors| tensors.push(copy));
}
