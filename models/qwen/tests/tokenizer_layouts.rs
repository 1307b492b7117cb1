//! `qwen-run` with the model folder's tokenizer in either layout (issue 9): the tiny
//! checkpoint whose `tokenizer/` holds only `tokenizer.json` + `tokenizer_config.json` (what
//! transformers 5 writes) gives a PNG byte-identical to the one from its vocab.json +
//! merges.txt; an empty merges.txt is one clear error, not a meaningless image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

/// The Qwen2 pre-tokenizer split, as in Qwen2's published tokenizer.json.
const SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen-image")
}

/// A model folder at `root/model`: links to the fixture's components, and a `tokenizer/`
/// holding copies of the fixture's tokenizer files named in `files`.
fn model_with_tokenizer(root: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dst = root.join("model");
    if dst.exists() {
        fs::remove_dir_all(&dst).unwrap();
    }
    fs::create_dir_all(dst.join("tokenizer")).unwrap();
    for entry in fs::read_dir(fixture()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "tokenizer" {
            std::os::unix::fs::symlink(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    for (name, bytes) in files {
        fs::write(dst.join("tokenizer").join(name), bytes).unwrap();
    }
    dst
}

fn fixture_file(name: &str) -> Vec<u8> {
    fs::read(fixture().join("tokenizer").join(name)).unwrap()
}

/// The fixture's tokenizer as Qwen2's fast tokenizer serializes itself (merges in the
/// "a b" string form older tokenizers write), built from vocab.json, merges.txt and
/// tokenizer_config.json's added tokens.
fn tokenizer_json() -> Vec<u8> {
    let text = |name: &str| String::from_utf8(fixture_file(name)).unwrap();
    let vocab: Value = serde_json::from_str(&text("vocab.json")).unwrap();
    let merges_text = text("merges.txt");
    let merges: Vec<&str> = merges_text
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .collect();
    let config: Value = serde_json::from_str(&text("tokenizer_config.json")).unwrap();
    let added: Vec<Value> = config["added_tokens_decoder"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, t)| {
            let mut t = t.clone();
            t["id"] = json!(id.parse::<u32>().unwrap());
            t
        })
        .collect();
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let value = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    serde_json::to_vec_pretty(&value).unwrap()
}

fn qwen_run(model: &Path, out: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args([
            "--device", "cpu", "--dtype", "f32", "--seed", "7", "--steps", "2",
        ])
        .args([
            "--prompt",
            "一只猫 in the café\u{301}, 3 foxes!\n<|vision_start|>",
        ])
        .args(["--negative-prompt", "blurry, low quality"])
        .arg("--model")
        .arg(model)
        .arg("-o")
        .arg(out)
        .output()
        .expect("qwen-run starts")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tokenizer_json_only_folder_gives_the_identical_png() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = fs::read_dir(fixture().join("tokenizer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let slow: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (&**n, fixture_file(n))).collect();
    assert!(slow.iter().any(|(n, _)| *n == "merges.txt"));

    // The same folder path for both runs: the PNG's metadata names the model folder.
    let model = model_with_tokenizer(tmp.path(), &slow);
    let a = tmp.path().join("vocab_merges.png");
    let run = qwen_run(&model, &a);
    assert!(run.status.success(), "{}", stderr(&run));

    let model = model_with_tokenizer(
        tmp.path(),
        &[
            ("tokenizer.json", tokenizer_json()),
            (
                "tokenizer_config.json",
                fixture_file("tokenizer_config.json"),
            ),
        ],
    );
    let names: Vec<String> = fs::read_dir(model.join("tokenizer"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let b = tmp.path().join("tokenizer_json.png");
    let run = qwen_run(&model, &b);
    assert!(run.status.success(), "{}", stderr(&run));

    let (a, b) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert!(a.len() > 100);
    assert!(
        a == b,
        "the PNGs differ ({} and {} bytes)",
        a.len(),
        b.len()
    );
}

#[test]
fn empty_merges_txt_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files: Vec<(&str, Vec<u8>)> = ["vocab.json", "tokenizer_config.json"]
        .into_iter()
        .map(|n| (n, fixture_file(n)))
        .collect();
    files.push(("merges.txt", b"#version: 0.2\n".to_vec()));
    let model = model_with_tokenizer(tmp.path(), &files);
    let out = tmp.path().join("out.png");
    let run = qwen_run(&model, &out);
    let err = stderr(&run);
    assert_eq!(run.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains("merges.txt is empty: no merges"), "{err}");
    assert!(!out.exists());
}
