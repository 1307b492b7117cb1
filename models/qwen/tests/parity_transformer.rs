//! Parity of the whole macro-generated tiny transformer (img_in, txt_norm/txt_in, timestep
//! embedding, 2 blocks in a loop, norm_out, proj_out) with diffusers'
//! `QwenImageTransformer2DModel`, weights from the sharded tiny checkpoint.
//!
//! The reference ran batch 2 with a text mask (valid lengths 9 and 5). Our hot loop has no
//! masks: each sample runs with its own unpadded text, and must match the masked
//! reference — the claim behind the `cfg_batch` pass.

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::{ops, Array, Dtype};
use qwen_runtime::{Checkpoint, Extra};

const TOL: f32 = 1e-4;

/// `a[i..i+1, ..len]` along the first two axes (len `None`: all).
fn take(a: &Array, i: i32, len: Option<i32>) -> Array {
    let row = ops::split_at_indices(a, &[i, i + 1], 0)
        .unwrap()
        .swap_remove(1);
    match len {
        Some(l) => ops::split_at_indices(&row, &[l], 1).unwrap().swap_remove(0),
        None => row,
    }
}

/// The tiny transformer's two parts: its timestep modulation and the rest.
fn load(ck: &Checkpoint) -> (tiny::TimestepModulationWeights, tiny::TransformerWeights) {
    (
        tiny::TimestepModulationWeights::load(ck, "", Dtype::Float32).unwrap(),
        tiny::TransformerWeights::load(ck, "", Dtype::Float32).unwrap(),
    )
}

/// Sample by sample: timesteps `[B]` give the modulation `[layers, B, ..]` of the batch.
fn run(
    (m, w): &(tiny::TimestepModulationWeights, tiny::TransformerWeights),
    x: &Array,
    ctx: &Array,
    t: &Array,
) -> Array {
    let (mi, mt, mo) = tiny::timestep_modulation(m, t).unwrap();
    let (ic, is, tc, ts) = tiny::rope(ctx.shape()[1]).unwrap();
    tiny::transformer(w, x, ctx, &mi, &mt, &mo, &ic, &is, &tc, &ts).unwrap()
}

/// The 96×64 transformer reference (diffusers, batch 2 with a masked second text) and its
/// inputs: hidden states, encoder hidden states, timestep.
fn reference() -> (Checkpoint, [Array; 3]) {
    let r = Checkpoint::open(fixture("references/transformer.safetensors")).unwrap();
    let inputs = ["hidden_states", "encoder_hidden_states", "timestep"]
        .map(|k| at(&r, &format!("input.{k}")));
    (r, inputs)
}

/// Tensor `k` of the 96×64 reference.
fn at(r: &Checkpoint, k: &str) -> Array {
    r.array(&format!("96x64.{k}")).unwrap()
}

#[test]
fn tiny_transformer_matches_diffusers_without_masks() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/transformer")).unwrap();
    // the two parts read every tensor of the checkpoint, once
    let mut specs = tiny::TimestepModulationWeights::specs("");
    specs.extend(tiny::TransformerWeights::specs(""));
    ck.check(&specs, Extra::Report).unwrap();
    let w = load(&ck);

    let (r, [x, ctx, t]) = reference();
    let valid = [9, 5];

    // sample 0: all 9 text tokens valid; reference run alone with mask None
    let y0 = run(
        &w,
        &take(&x, 0, None),
        &take(&ctx, 0, Some(valid[0])),
        &take(&t, 0, None),
    );
    let e0 = rel_err(&y0, &at(&r, "nomask.output.sample"));
    // sample 1: 5 valid tokens; reference is the masked batch-2 call
    let y1 = run(
        &w,
        &take(&x, 1, None),
        &take(&ctx, 1, Some(valid[1])),
        &take(&t, 1, None),
    );
    let e1 = rel_err(&y1, &take(&at(&r, "output.sample"), 1, None));
    println!("transformer 96x64: sample 0 (unmasked ref) rel err {e0:.3e}, sample 1 (unpadded vs masked ref) rel err {e1:.3e}");
    assert!(e0 <= TOL, "sample 0: {e0:.3e}");
    assert!(e1 <= TOL, "sample 1: {e1:.3e}");
}

/// Both samples in ONE call of the `cfg = split` module — the shape of a CFG step with a
/// prompt and a negative prompt of different lengths — against the masked batch-2 call.
#[test]
fn split_halves_module_matches_the_masked_batch_in_one_call() {
    use qwen::specializations::res96x64_tiny_split as split;

    let ck = Checkpoint::open(fixture("tiny-qwen-image/transformer")).unwrap();
    let m = split::TimestepModulationWeights::load(&ck, "", Dtype::Float32).unwrap();
    let w = split::TransformerWeights::load(&ck, "", Dtype::Float32).unwrap();
    let (r, [x, ctx, t]) = reference();
    // both samples' timesteps: the modulation of each half, [layers, 2, ..]
    let (mi, mt, mo) = split::timestep_modulation(&m, &t).unwrap();
    let (c0, c1) = (take(&ctx, 0, Some(9)), take(&ctx, 1, Some(5)));
    let (ic, is, tc0, ts0) = split::rope(9).unwrap();
    let (_, _, tc1, ts1) = split::rope(5).unwrap();
    let c = ops::concatenate(&[&c0, &c1], 1).unwrap();
    let y =
        split::transformer(&w, &x, &c, &mi, &mt, &mo, &ic, &is, &tc0, &tc1, &ts0, &ts1).unwrap();
    let e = rel_err(&y, &at(&r, "output.sample"));
    println!(
        "transformer 96x64, cfg = split (text lengths 9 and 5, one call, no mask): rel err {e:.3e}"
    );
    assert!(e <= TOL, "rel err {e:.3e}");
}
