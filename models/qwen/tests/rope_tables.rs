//! Qwen-Image's RoPE tables made at bind time (`qwen_runtime::rope`, for an edit's reference
//! images): against diffusers' `QwenEmbedRope` with two references
//! (`tests/fixtures/make_edit_rope_refs.py`), and for one image against the tables the
//! generated module folds into constants.

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::rope::qwen_image_rope;
use qwen_runtime::Checkpoint;

/// The tiny transformer's RoPE: axes (8, 12, 12), θ 10000.
const AXES: [usize; 3] = [8, 12, 12];

#[test]
fn reference_images_rope_matches_diffusers() {
    let r = Checkpoint::open(fixture("references/edit_rope.safetensors")).unwrap();
    let t = qwen_image_rope(AXES, 10000.0, &[(1, 4, 6), (1, 3, 5), (1, 5, 2)], 7).unwrap();
    for (name, ours) in [
        ("img_cos", &t.img_cos),
        ("img_sin", &t.img_sin),
        ("txt_cos", &t.txt_cos),
        ("txt_sin", &t.txt_sin),
    ] {
        let theirs = r.array(name).unwrap();
        assert_eq!(ours.shape(), theirs.shape(), "{name}");
        let e = rel_err(ours, &theirs);
        println!("{name}: rel err {e:.3e}");
        assert!(e <= 1e-6, "{name}: {e:.3e}");
    }
}

/// One image: the generated module's folded tables (96×64: a 4×6 packed grid, the text after
/// `max(2, 3)`).
#[test]
fn one_image_rope_is_the_folded_tables() {
    let (ic, is, tc, ts) = tiny::rope(7).unwrap();
    let t = qwen_image_rope(AXES, 10000.0, &[(1, 4, 6)], 7).unwrap();
    for (name, ours, folded) in [
        ("img_cos", &t.img_cos, &ic),
        ("img_sin", &t.img_sin, &is),
        ("txt_cos", &t.txt_cos, &tc),
        ("txt_sin", &t.txt_sin, &ts),
    ] {
        assert_eq!(ours.shape(), folded.shape(), "{name}");
        let e = rel_err(ours, folded);
        assert!(e <= 1e-6, "{name}: {e:.3e}");
    }
}
