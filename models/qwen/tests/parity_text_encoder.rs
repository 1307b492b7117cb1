//! Parity of the macro-generated tiny text encoder (embedding, 2 GQA decoder layers in a
//! loop, final norm) with transformers' Qwen2.5-VL language model. Each prompt runs
//! unpadded (no masks); the reference ran the padded batch with an attention mask.

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::{ops, Array, Dtype};
use qwen_runtime::{Checkpoint, Extra};

/// `a[i..i+1, ..len]`.
fn take(a: &Array, i: i32, len: i32) -> Array {
    let row = ops::split_at_indices(a, &[i, i + 1], 0)
        .unwrap()
        .swap_remove(1);
    ops::split_at_indices(&row, &[len], 1)
        .unwrap()
        .swap_remove(0)
}

#[test]
fn tiny_text_encoder_matches_transformers() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/text_encoder")).unwrap();
    ck.check(&tiny::TextEncoderWeights::specs(""), Extra::Allow)
        .unwrap();
    let w = tiny::TextEncoderWeights::load(&ck, "", Dtype::Float32).unwrap();

    let r = Checkpoint::open(fixture("references/text_encoder.safetensors")).unwrap();
    let ids = r
        .array("input_ids")
        .unwrap()
        .as_dtype(Dtype::Int32)
        .unwrap();
    let reference = r.array("hidden_states.2").unwrap();
    for (i, len) in [(0, 48), (1, 41)] {
        let y = tiny::text_encoder(&w, &take(&ids, i, len)).unwrap();
        let e = rel_err(&y, &take(&reference, i, len));
        println!("text_encoder prompt {i} ({len} tokens, unpadded vs masked ref): rel err {e:.3e}");
        assert!(e <= 1e-4, "prompt {i}: rel err {e:.3e}");
    }
}
