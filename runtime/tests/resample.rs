//! Resizing against Pillow's `Image.resize` (`tests/fixtures/make_resize_refs.py`): the same
//! bytes, with Lanczos and bicubic, shrinking, enlarging and one side only.

mod common;

use qwen_runtime::resample::{resize_rgb, Filter};
use qwen_runtime::Checkpoint;

#[test]
fn resize_matches_pillow_byte_for_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/references/resize.safetensors");
    let r = Checkpoint::open(&dir).unwrap();
    let bytes = |k: &str| -> Vec<u8> {
        r.array(k)
            .unwrap()
            .as_slice::<f32>()
            .iter()
            .map(|v| *v as u8)
            .collect()
    };
    let source = bytes("source");
    for (name, filter) in [("lanczos", Filter::Lanczos), ("bicubic", Filter::Bicubic)] {
        for (w, h) in [(64, 40), (150, 90), (97, 30), (50, 61), (33, 120)] {
            let ours = resize_rgb(&source, 97, 61, w, h, filter).unwrap();
            let theirs = bytes(&format!("{name}.{w}x{h}"));
            let worst = ours
                .iter()
                .zip(&theirs)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert_eq!(ours.len(), theirs.len());
            assert_eq!(worst, 0, "{name} {w}x{h}: up to {worst} levels off");
        }
    }
}
