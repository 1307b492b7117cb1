//! Model folders that must be refused with one clear error (issue 9): a `model_index.json`
//! that is not ours, component configs that disagree with the generated module, values out
//! of range, token ids past the text encoder's embedding table, and weights that make the
//! latents non-finite (stopped at the step, no image written).
//!
//! Each test builds a copy of `tests/fixtures/tiny-qwen-image` in a tempdir whose files are
//! links to the fixture's, and replaces one file by an edited copy (the link is removed
//! first, so the fixture itself is never written).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::fixture;
use qwen::pipeline::{Options, Pipeline, PipelineError};
use qwen_runtime::__private::mlx_rs::Dtype;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;

/// A copy of the tiny model under `root`: real folders, every file a link to the fixture's.
fn model_copy(root: &Path) -> PathBuf {
    fn mirror(src: &Path, dst: &Path) {
        fs::create_dir_all(dst).unwrap();
        for entry in fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let target = dst.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                mirror(&entry.path(), &target);
            } else {
                std::os::unix::fs::symlink(entry.path(), &target).unwrap();
            }
        }
    }
    let dst = root.join("model");
    mirror(&fixture("tiny-qwen-image"), &dst);
    dst
}

/// Replaces `model/rel` (a link) by a file holding `edit` of its bytes.
fn edit_bytes(model: &Path, rel: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let path = model.join(rel);
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    fs::write(&path, edit(bytes)).unwrap();
}

/// Replaces `model/rel` by its text with `from` replaced by `to` (which must occur).
fn edit_text(model: &Path, rel: &str, from: &str, to: &str) {
    edit_bytes(model, rel, |bytes| {
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(from), "`{from}` not in {rel}");
        text.replacen(from, to, 1).into_bytes()
    });
}

/// Opens `model` on the CPU at the default resolution: the error it gives.
fn open_error(model: &Path) -> PipelineError {
    let options = Options {
        dtype: Dtype::Float32,
        ..Options::default()
    };
    Pipeline::open(model, &options).expect_err("the folder must be refused")
}

/// `qwen-run --prompt x --model MODEL -o OUT --steps 2` on the CPU.
fn qwen_run(model: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qwen-run"))
        .args(["--device", "cpu", "--prompt", "x", "--steps", "2"])
        .arg("--model")
        .arg(model)
        .arg("-o")
        .arg(out)
        .output()
        .expect("qwen-run starts")
}

/// The run failed cleanly: exit status 1, one `error:` line holding every `needle`, no
/// output written.
fn assert_fails_with(out: &Output, png: &Path, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "`{needle}` not in: {err}");
    }
    assert!(!png.exists(), "no image written");
}

#[test]
fn model_index_must_name_our_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let rel = "model_index.json";
    let cases: [(&str, &str); 4] = [
        ("", "not valid JSON: EOF while parsing"),
        ("{\"_class_name\": ", "not valid JSON"),
        (
            "{\"_class_name\": \"FluxPipeline\"}",
            "`_class_name` is \"FluxPipeline\", expected \"QwenImagePipeline\"",
        ),
        ("[1, 2]", "not a JSON object"),
    ];
    for (text, needle) in cases {
        edit_bytes(&model, rel, |_| text.as_bytes().to_vec());
        let err = open_error(&model).to_string();
        assert!(
            err.contains("model_index.json") && err.contains(needle),
            "{text:?}: {err}"
        );
    }
    edit_bytes(&model, rel, |_| {
        b"{\"_diffusers_version\": \"0.42.1\"}".to_vec()
    });
    let err = open_error(&model).to_string();
    assert!(err.contains("no `_class_name`"), "{err}");
}

/// One error lists every field of every config that differs, with the file, the value found
/// and the value expected; the CLI shows it on one line and exits 1.
#[test]
fn configs_are_checked_against_the_generated_module() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_text(
        &model,
        "transformer/config.json",
        "\"in_channels\": 64",
        "\"in_channels\": -7",
    );
    edit_text(
        &model,
        "transformer/config.json",
        "\"patch_size\": 2",
        "\"patch_size\": \"2\"",
    );
    edit_text(
        &model,
        "text_encoder/config.json",
        "\"num_hidden_layers\": 2",
        "\"num_hidden_layers\": 1e9",
    );
    edit_text(
        &model,
        "text_encoder/config.json",
        "\"rms_norm_eps\": 1e-06,",
        "",
    );
    edit_text(&model, "vae/config.json", "\"z_dim\": 16", "\"z_dim\": 0");
    edit_text(&model, "vae/config.json", "\"base_dim\": 16,", "");
    let png = tmp.path().join("x.png");
    assert_fails_with(
        &qwen_run(&model, &png),
        &png,
        &[
            "do not fit the generated module res96x64_tiny_split (6 problems)",
            "transformer/config.json: `patch_size` is \"2\", expected 2",
            "transformer/config.json: `in_channels` is -7, expected 64",
            "text_encoder/config.json: `num_hidden_layers` is 1000000000.0, expected 2",
            "text_encoder/config.json: `rms_norm_eps` is missing, expected 1e-6",
            "vae/config.json: `base_dim` is missing (diffusers' default 96), expected 16",
            "vae/config.json: `z_dim` is 0, expected 16",
        ],
    );
}

/// Absent fields with a diffusers default equal to the expected value, numbers written
/// another way, and a transformers 5 `text_config` are all accepted.
#[test]
fn equivalent_configs_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    edit_text(&model, "vae/config.json", "\"z_dim\": 16", "\"zz\": 0");
    edit_text(
        &model,
        "transformer/config.json",
        "\"guidance_embeds\": false,",
        "",
    );
    edit_text(
        &model,
        "text_encoder/config.json",
        "\"rope_theta\": 1000000.0",
        "\"rope_theta\": 1000000",
    );
    edit_text(
        &model,
        "text_encoder/config.json",
        "\"hidden_size\": 32,\n  \"image",
        "\"text_config\": {\"hidden_size\": 32},\n  \"image",
    );
    let options = Options {
        dtype: Dtype::Float32,
        ..Options::default()
    };
    Pipeline::open(&model, &options).unwrap();
}

#[test]
fn latent_statistics_must_be_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let vae = "vae/config.json";
    let cases = [
        (
            "-0.7089",
            "1e39",
            "`latents_mean[1]` is 1e+39, expected a finite number",
        ),
        (
            "1.4541",
            "-1",
            "`latents_std[1]` is -1, expected a positive number",
        ),
        (
            "1.4541",
            "0.0",
            "`latents_std[1]` is 0, expected a positive number",
        ),
        (
            "1.4541",
            "\"x\"",
            "`latents_std[1]` is \"x\", expected a finite number",
        ),
    ];
    for (from, to, needle) in cases {
        let original = fs::read(model.join(vae)).unwrap();
        edit_text(&model, vae, from, to);
        let err = open_error(&model).to_string();
        assert!(
            err.contains("vae/config.json") && err.contains(needle),
            "{to}: {err}"
        );
        edit_bytes(&model, vae, |_| original);
    }
}

#[test]
fn scheduler_values_must_be_in_range() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let rel = "scheduler/scheduler_config.json";
    let cases = [
        (
            "\"num_train_timesteps\": 1000",
            "\"num_train_timesteps\": 0",
            "`num_train_timesteps` is 0, expected at least 1",
        ),
        (
            "\"shift\": 1.0",
            "\"shift\": 1e308",
            "`shift` is 1e308, expected a positive number",
        ),
        (
            "\"shift\": 1.0",
            "\"shift\": -2",
            "`shift` is -2.0, expected a positive number",
        ),
        (
            "\"max_shift\": 0.9",
            "\"max_shift\": 500",
            "`max_shift` is 500.0, expected a number between -87 and 87",
        ),
        (
            "\"base_shift\": 0.5",
            "\"base_shift\": -1e300",
            "`base_shift` is -1e300",
        ),
        (
            "\"shift_terminal\": 0.02",
            "\"shift_terminal\": 1.5",
            "`shift_terminal` is 1.5",
        ),
    ];
    for (from, to, needle) in cases {
        let original = fs::read(model.join(rel)).unwrap();
        edit_text(&model, rel, from, to);
        let err = open_error(&model).to_string();
        assert!(
            err.contains("scheduler_config.json") && err.contains(needle),
            "{to}: {err}"
        );
        edit_bytes(&model, rel, |_| original);
    }
}

/// A token whose id is past the embedding table is refused when the model is opened (it
/// used to crash MLX's gather); the CLI exits 1 with one line.
#[test]
fn token_ids_must_fit_the_embedding_table() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let rel = "tokenizer/added_tokens.json";
    for id in [152_064u32, i32::MAX as u32 - 1] {
        edit_text(&model, rel, "{", &format!("{{\n  \"<|far|>\": {id},"));
        let err = open_error(&model);
        assert!(matches!(err, PipelineError::TokenId { .. }), "{err}");
        let expected =
            format!("token `<|far|>` in {} has id {id}, past the text encoder's embedding table of 152064 rows", model.join("tokenizer").display());
        assert_eq!(err.to_string(), expected);
        edit_bytes(&model, rel, |_| {
            fs::read(fixture("tiny-qwen-image").join(rel)).unwrap()
        });
    }
    // an id no tokenizer may hold (the tokenizers crate overflowed on u32::MAX) is refused
    // when the tokenizer is read
    edit_text(
        &model,
        rel,
        "{",
        &format!("{{\n  \"<|far|>\": {},", u32::MAX),
    );
    let err = open_error(&model).to_string();
    assert!(
        err.contains("`<|far|>` has id 4294967295, past the largest token id"),
        "{err}"
    );
    edit_bytes(&model, rel, |_| {
        fs::read(fixture("tiny-qwen-image").join(rel)).unwrap()
    });
    edit_text(&model, rel, "{", "{\n  \"<|far|>\": 152064,");
    let png = tmp.path().join("x.png");
    assert_fails_with(
        &qwen_run(&model, &png),
        &png,
        &["token `<|far|>`", "has id 152064"],
    );
}

/// A NaN in the transformer's output bias makes the latents NaN at the first step: the run
/// stops there and writes no image.
#[test]
fn non_finite_latents_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path());
    let shard = "transformer/diffusion_pytorch_model-00003-of-00003.safetensors";
    edit_bytes(&model, shard, |bytes| {
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            let mut data = view.data().to_vec();
            if name == "proj_out.bias" {
                assert_eq!(view.dtype(), safetensors::Dtype::BF16);
                data[..2].copy_from_slice(&0x7fc0u16.to_le_bytes()); // bf16 NaN
            }
            tensors.push((name, view.dtype(), view.shape().to_vec(), data));
        }
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    });
    let png = tmp.path().join("x.png");
    assert_fails_with(
        &qwen_run(&model, &png),
        &png,
        &["the latents are not finite (NaN or infinity) after denoising step 1 of 2"],
    );
}
