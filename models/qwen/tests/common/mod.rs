//! Helpers shared by the tests (each test file uses a subset).
#![allow(dead_code)]

use std::path::PathBuf;

use qwen_runtime::__private::mlx_rs::{ops, Array};

/// A file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

/// ‖ours − reference‖₂ / ‖reference‖₂ over the whole tensor (shapes must match).
pub fn rel_err(ours: &Array, reference: &Array) -> f32 {
    assert_eq!(
        ours.shape(),
        reference.shape(),
        "shape of ours vs reference"
    );
    let diff = ops::subtract(ours, reference).unwrap();
    let norm = |a: &Array| {
        let sq = ops::square(a).unwrap();
        ops::sqrt(ops::sum(sq, None).unwrap()).unwrap()
    };
    let (num, den) = (norm(&diff), norm(reference));
    num.item_exact::<f32>() / den.item_exact::<f32>()
}
