//! The real-config dual-stream block of `res1024` (literal shapes: 4096 image tokens,
//! 24 heads × 128) on random weights: it runs, keeps shapes, stays finite. Slow on CPU
//! (one block is ~2 TFLOP: 12 min on the 2-core dev machine), so ignored by default:
//! `cargo test -p qwen --release --test real_block_1024 -- --ignored --nocapture`.

use std::collections::BTreeMap;

use qwen::specializations::res1024_split as real;
use qwen_runtime::__private::mlx_rs::{ops, random, Array, Dtype};

#[test]
#[ignore = "slow: one full-size block on CPU"]
fn real_block_runs_at_1024() {
    let prefix = "transformer_blocks.0";
    let shapes: BTreeMap<String, Vec<i32>> = real::DualStreamBlockWeights::specs(prefix)
        .into_iter()
        .map(|s| (s.name, s.shape.iter().map(|&d| d as i32).collect()))
        .collect();
    let mut get = |key: &str| -> Result<Array, real::LoadError> {
        let s = &shapes[key];
        let fan_in = if s.len() > 1 { s[1] as f32 } else { 1.0 };
        let std = if key.contains("norm") {
            0.0
        } else {
            1.0 / fan_in.sqrt()
        };
        let mean = if key.contains("norm") { 1.0 } else { 0.0 };
        Ok(random::normal::<f32>(&s[..], mean, std, None)?)
    };
    let w = real::DualStreamBlockWeights::load_with(&mut get, prefix, Dtype::Float32).unwrap();
    let (l_img, l_txt) = (real::IMG_TOKENS as i32, 12);
    let x = random::normal::<f32>(&[2, l_img, 3072][..], None, None, None).unwrap();
    let ctx = random::normal::<f32>(&[1, l_txt, 3072][..], None, None, None).unwrap();
    let mods = [0, 1].map(|_| random::normal::<f32>(&[2, 6 * 3072][..], None, 0.5, None).unwrap());
    let (ic, is, tc, ts) = real::rope(l_txt).unwrap();
    let t0 = std::time::Instant::now();
    let ctx2 = ops::concatenate(&[&ctx, &ctx], 1).unwrap();
    let (y, c) = real::dual_stream_block(
        &w, &x, &ctx2, &mods[0], &mods[1], &ic, &is, &tc, &tc, &ts, &ts,
    )
    .unwrap();
    for a in [&y, &c] {
        a.eval().unwrap();
    }
    println!(
        "res1024 dual_stream_block (both CFG halves, L_txt={l_txt}) on CPU f32: {:.2?}",
        t0.elapsed()
    );
    assert_eq!(y.shape(), &[2, l_img, 3072]);
    assert_eq!(c.shape(), &[1, 2 * l_txt, 3072]);
    for a in [&y, &c] {
        let bad = ops::logical_or(ops::is_nan(a).unwrap(), ops::is_inf(a).unwrap()).unwrap();
        assert!(!ops::any(&bad, None).unwrap().item_exact::<bool>());
    }
}
