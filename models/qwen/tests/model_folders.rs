//! `qwen-run --model` on the folders users have (issue 9): weights stored in f32 or f16 (the
//! fixture's are bf16), a Hugging Face cache snapshot (files are symlinks into `blobs/`),
//! given by its path or by repo id, and a repo id that is not in the cache.
//!
//! Every run is the real binary on the CPU with the same prompt, seed, steps and `--dtype f32`,
//! compared with the run on the fixture itself.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

const REV: &str = "5f0b1c2d3e4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen-image")
}

/// `qwen-run` on the CPU with `args`; `env` set on the child only (`None`: removed).
fn qwen_run(args: &[&str], env: &[(&str, Option<&Path>)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qwen-run"));
    cmd.args(["--device", "cpu"]).args(args);
    for (key, value) in env {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd.output().expect("qwen-run starts")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The fixed run with `--model MODEL`, into `out`; its stdout and the PNG's size and pixels.
fn generate(model: &str, out: &Path, env: &[(&str, Option<&Path>)]) -> (String, Image) {
    let run = qwen_run(
        &[
            "--prompt",
            "a red fox in the snow, watercolor",
            "--steps",
            "2",
            "--seed",
            "5",
            "--dtype",
            "f32",
            "--model",
            model,
            "-o",
            out.to_str().unwrap(),
        ],
        env,
    );
    assert!(run.status.success(), "--model {model}: {}", stderr(&run));
    (String::from_utf8_lossy(&run.stdout).into_owned(), png(out))
}

type Image = common::Png;

/// The PNG's size and pixels (its text chunks name the model path, which differs).
fn png(path: &Path) -> Image {
    Image {
        text: vec![],
        ..common::read_png(path)
    }
}

/// The run on the fixture itself (once per test binary).
fn original() -> &'static Image {
    static ORIGINAL: OnceLock<Image> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let (_, image) = generate(fixture().to_str().unwrap(), &tmp.path().join("o.png"), &[]);
        assert_eq!((image.width, image.height), (96, 64));
        image
    })
}

/// Largest difference of one byte between `image` and the original's.
fn max_diff(image: &Image) -> u8 {
    let original = original();
    assert_eq!(
        (image.width, image.height),
        (original.width, original.height)
    );
    image
        .pixels
        .iter()
        .zip(&original.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap()
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for entry in fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// A float tensor's bytes converted to `to` (F32 or F16); other dtypes unchanged.
fn convert(from: Dtype, data: &[u8], to: Dtype) -> (Dtype, Vec<u8>) {
    let values: Vec<f32> = match from {
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => return (from, data.to_vec()),
    };
    let bytes = match to {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => unreachable!("converts to f32 or f16"),
    };
    (to, bytes)
}

/// Rewrites one safetensors file with its float tensors in `to`; returns its data bytes.
fn rewrite(path: &Path, to: Dtype) -> usize {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let (dtype, data) = convert(view.dtype(), view.data(), to);
        tensors.push((name, dtype, view.shape().to_vec(), data));
    }
    let total = tensors.iter().map(|t| t.3.len()).sum();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
    fs::write(path, out).unwrap();
    total
}

/// A copy of the fixture with every weight file of the three networks stored in `to`, the
/// index files' `total_size` updated (their `weight_map` names the same files).
fn converted_copy(root: &Path, to: Dtype) -> PathBuf {
    let dst = root.join(format!("tiny-{to:?}"));
    copy_tree(&fixture(), &dst);
    let mut rewritten = 0;
    for component in ["text_encoder", "transformer", "vae"] {
        let dir = dst.join(component);
        let mut total = 0;
        let mut index = None;
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.ends_with(".safetensors.index.json") {
                index = Some(path);
            } else if name.ends_with(".safetensors") {
                total += rewrite(&path, to);
                rewritten += 1;
            }
        }
        if let Some(index) = index {
            let mut json: serde_json::Value =
                serde_json::from_slice(&fs::read(&index).unwrap()).unwrap();
            json["metadata"]["total_size"] = total.into();
            fs::write(&index, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        }
    }
    assert_eq!(rewritten, 8, "the fixture's weight files");
    dst
}

#[test]
fn weights_stored_in_f32_or_f16_give_the_same_png() {
    let tmp = tempfile::tempdir().unwrap();
    for to in [Dtype::F32, Dtype::F16] {
        let model = converted_copy(tmp.path(), to);
        // the copy really holds `to`
        let st = fs::read(model.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&st).unwrap();
        assert!(st.tensors().iter().all(|(_, v)| v.dtype() == to));

        let out = tmp.path().join(format!("{to:?}.png"));
        let (_, image) = generate(model.to_str().unwrap(), &out, &[]);
        let max = max_diff(&image);
        println!("weights in {to:?}: max |diff| from the bf16 original {max}");
        assert!(max <= 1, "{to:?}: max diff {max}");
    }
}

/// `hub/models--Qwen--Qwen-Image` as `huggingface_hub` lays it out: the files once each in
/// `blobs/` (named by a hash of their content), `snapshots/<REV>/…` relative symlinks into
/// `blobs/`, `refs/main` holding `REV`. Returns the snapshot folder.
fn hf_cache(hf_home: &Path) -> PathBuf {
    let repo = hf_home.join("hub/models--Qwen--Qwen-Image");
    let snapshot = repo.join("snapshots").join(REV);
    fs::create_dir_all(repo.join("blobs")).unwrap();
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), REV).unwrap();
    fn link_all(src: &Path, rel: &Path, repo: &Path, snapshot: &Path) {
        for entry in fs::read_dir(src.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                fs::create_dir_all(snapshot.join(&rel)).unwrap();
                link_all(src, &rel, repo, snapshot);
                continue;
            }
            let bytes = fs::read(entry.path()).unwrap();
            let mut name = String::new();
            for seed in 0..4u8 {
                let mut h = DefaultHasher::new();
                (seed, &bytes).hash(&mut h);
                name.push_str(&format!("{:016x}", h.finish()));
            }
            let blob = repo.join("blobs").join(&name);
            if !blob.exists() {
                fs::write(&blob, &bytes).unwrap();
            }
            let up = "../".repeat(rel.components().count() + 1);
            std::os::unix::fs::symlink(format!("{up}blobs/{name}"), snapshot.join(&rel)).unwrap();
        }
    }
    fs::create_dir_all(&snapshot).unwrap();
    link_all(&fixture(), Path::new(""), &repo, &snapshot);
    snapshot
}

#[test]
fn a_hugging_face_cache_snapshot_by_path_and_by_repo_id() {
    let tmp = tempfile::tempdir().unwrap();
    let hf_home = tmp.path().join("hf");
    let snapshot = hf_cache(&hf_home);
    let config = snapshot.join("transformer/config.json");
    assert!(fs::symlink_metadata(&config).unwrap().is_symlink());
    assert!(config.is_file(), "the link resolves");

    // by the snapshot's path
    let (stdout, image) = generate(snapshot.to_str().unwrap(), &tmp.path().join("p.png"), &[]);
    assert_eq!(&image, original(), "snapshot by path");
    assert!(stdout.contains(&format!("model: {}", snapshot.display())));

    // by repo id, HF_HOME set for the child only
    let out = tmp.path().join("r.png");
    let env = [("HF_HOME", Some(hf_home.as_path()))];
    let (stdout, image) = generate("Qwen/Qwen-Image", &out, &env);
    assert_eq!(&image, original(), "by repo id with HF_HOME");
    assert!(
        stdout.contains(&format!("model: {}", snapshot.display())),
        "{stdout}"
    );

    // by repo id, HF_HOME unset: $HOME/.cache/huggingface
    let home = tmp.path().join("home");
    fs::create_dir_all(home.join(".cache")).unwrap();
    std::os::unix::fs::symlink(&hf_home, home.join(".cache/huggingface")).unwrap();
    let env = [("HF_HOME", None), ("HOME", Some(home.as_path()))];
    let (_, image) = generate("Qwen/Qwen-Image", &tmp.path().join("h.png"), &env);
    assert_eq!(&image, original(), "by repo id under HOME");

    // an output that is a cached file (through the resolved folder's links) is refused
    let blob = fs::read_link(snapshot.join("model_index.json")).unwrap();
    let blob = snapshot.join(blob);
    let env = [("HF_HOME", Some(hf_home.as_path()))];
    let run = qwen_run(
        &[
            "--prompt",
            "x",
            "--model",
            "Qwen/Qwen-Image",
            "-o",
            blob.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("an input of this run"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn a_repo_id_not_in_the_cache_names_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let out = out.to_str().unwrap();
    let args = ["--prompt", "x", "--model", "Qwen/Qwen-Image", "-o", out];
    let check = |run: Output, looked: &[String]| {
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one error line expected: {err}");
        assert!(lines[0].starts_with("error: model Qwen/Qwen-Image not found"));
        for place in looked {
            assert!(lines[0].contains(place.as_str()), "`{place}` not in: {err}");
        }
        assert!(!Path::new(out).exists());
    };
    let folder = std::env::current_dir()
        .unwrap()
        .join("Qwen/Qwen-Image")
        .display()
        .to_string();

    let hf_home = tmp.path().join("hf");
    let repo = hf_home.join("hub/models--Qwen--Qwen-Image");
    check(
        qwen_run(&args, &[("HF_HOME", Some(hf_home.as_path()))]),
        &[
            folder.clone(),
            repo.display().to_string(),
            format!("HF_HOME={}", hf_home.display()),
        ],
    );

    let home = tmp.path().join("home");
    let repo = home.join(".cache/huggingface/hub/models--Qwen--Qwen-Image");
    check(
        qwen_run(&args, &[("HF_HOME", None), ("HOME", Some(home.as_path()))]),
        &[folder, repo.display().to_string(), "HF_HOME unset".into()],
    );
}
