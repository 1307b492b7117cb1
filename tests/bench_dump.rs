//! `qwen-bench dump` on the tiny checkpoint, f32 on the CPU, from the initial latents of
//! `references/pipeline.safetensors` (96x64): the tensors it writes, under the names and
//! layouts of `benches/diffusers_qwen_e2e.py`, against diffusers' (the reference the pipeline
//! tests of `models/qwen/tests/pipeline.rs` use, with their tolerance).

#[path = "../models/qwen/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::rel_err;
use qwen_runtime::Checkpoint;
use safetensors::SafeTensors;

/// The f32 end-to-end bound of `models/qwen/tests/pipeline.rs`.
const TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn dump_matches_the_diffusers_reference() {
    let reference = fixtures().join("references/pipeline.safetensors");
    let bytes = std::fs::read(&reference).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let steps: usize = meta["num_inference_steps"].parse().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dump.safetensors");
    let steps_list = format!("2,{steps}");
    let status = Command::new(env!("CARGO_BIN_EXE_qwen-bench"))
        .args([
            "dump", "--device", "cpu", "--res", "96x64", "--dtype", "f32",
        ])
        .arg("--model")
        .arg(fixtures().join("tiny-qwen-image"))
        .arg("--latents")
        .arg(&reference)
        .args(["--latents-key", "96x64.input.latents"])
        .args(["--steps-list", &steps_list])
        .args(["--cfg", &meta["true_cfg_scale"]])
        .args(["--prompt", &meta["prompt"]])
        .args(["--negative", &meta["negative_prompt"]])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "qwen-bench dump failed: {status}");

    let ours = Checkpoint::open(&out).unwrap();
    let theirs = Checkpoint::open(&reference).unwrap();
    let latents_2 = ours.array("latents_2").unwrap();
    assert_eq!(latents_2.shape(), &[1, 24, 64]);
    let latents_n = format!("latents_{steps}");
    for (name, reference_name) in [
        ("prompt_emb", "prompt_embeds"),
        ("negative_emb", "negative_prompt_embeds"),
        (latents_n.as_str(), "output.latents"),
        ("decoded", "output.decoded"),
    ] {
        let a = ours.array(name).unwrap();
        let e = rel_err(
            &a,
            &theirs.array(&format!("96x64.{reference_name}")).unwrap(),
        );
        println!("{name} vs {reference_name}: rel err {e:.3e}");
        assert!(e <= TOL, "{name}: {e:.3e}");
    }
}
