//! The sizes of an edit against diffusers' `calculate_dimensions` (and the pipeline's floor to
//! 16) and transformers' `smart_resize`, for 17 input sizes from 28² to 4000×3000 and 3000×40
//! (`tests/fixtures/make_edit_sizes_refs.py`).

mod common;

use common::fixture;
use qwen::edit::{area_size, output_size, smart_resize, CONDITION_AREA, VAE_AREA};
use qwen_runtime::Checkpoint;

#[test]
fn edit_sizes_are_the_references() {
    let r = Checkpoint::open(fixture("references/edit_sizes.safetensors")).unwrap();
    let pairs = |k: &str| -> Vec<(usize, usize)> {
        let v: Vec<usize> = r
            .array(k)
            .unwrap()
            .as_slice::<f32>()
            .iter()
            .map(|x| *x as usize)
            .collect();
        v.chunks(2).map(|c| (c[0], c[1])).collect()
    };
    let inputs = pairs("inputs");
    let [output, condition, vae, smart, smart_raw] =
        ["output", "condition", "vae", "smart", "smart_raw"].map(pairs);
    for (i, &(w, h)) in inputs.iter().enumerate() {
        let ratio = w as f64 / h as f64;
        assert_eq!(output_size((w, h)), output[i], "{w}×{h} output");
        let c = area_size(CONDITION_AREA, ratio);
        assert_eq!(c, condition[i], "{w}×{h} condition");
        assert_eq!(area_size(VAE_AREA, ratio), vae[i], "{w}×{h} vae");
        assert_eq!(
            smart_resize(c.1, c.0, 28, 3136, 12_845_056).unwrap(),
            smart[i],
            "{w}×{h} smart"
        );
        assert_eq!(
            smart_resize(h, w, 28, 3136, 1_003_520).unwrap(),
            smart_raw[i],
            "{w}×{h} smart raw"
        );
    }
}
