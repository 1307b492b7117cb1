//! The transformer of an edit: Qwen-Image's RoPE tables made at bind time
//! (`qwen_runtime::rope`, for reference images) against diffusers' `QwenEmbedRope` with two
//! references (`tests/fixtures/make_edit_rope_refs.py`) and, for one image, against the tables
//! the generated module folds into constants; the generated edit transformer with a reference
//! image in its image stream against diffusers (`make_edit_transformer_refs.py`).

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::Array;
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

/// The edit transformer (shared module): the generated image's 4×6 tokens then a 3×5
/// reference's in the image stream, their RoPE tables from `qwen_image_rope`, the velocity of
/// the first 24 tokens, against diffusers' `QwenImageTransformer2DModel` with `img_shapes
/// [[(1, 4, 6), (1, 3, 5)]]` (`tests/fixtures/make_edit_transformer_refs.py`). The same tokens
/// through the edit transformer with the reference dropped give the plain one's velocity.
#[test]
fn edit_transformer_with_a_reference_matches_diffusers() {
    use qwen::specializations::shared_tiny as shared;
    use qwen_runtime::__private::mlx_rs::{ops, Dtype};
    let ck = Checkpoint::open(fixture("tiny-qwen-image/transformer")).unwrap();
    let m = shared::TimestepModulationWeights::load(&ck, "", Dtype::Float32).unwrap();
    let w = shared::EditTransformerWeights::load(&ck, "", Dtype::Float32).unwrap();
    let r = Checkpoint::open(fixture("references/edit_transformer.safetensors")).unwrap();
    let [x, ctx, t] =
        ["hidden_states", "encoder_hidden_states", "timestep"].map(|k| r.array(k).unwrap());
    let (mi, mt, mo) = shared::timestep_modulation(&m, &t).unwrap();
    let run = |x: &Array, images: &[(usize, usize, usize)], out: i32| {
        let rope = qwen_image_rope(AXES, 10000.0, images, ctx.shape()[1] as usize).unwrap();
        let refs = x.shape()[1] - out;
        shared::edit_transformer(
            &w,
            x,
            &ctx,
            &mi,
            &mt,
            &mo,
            &rope.img_cos,
            &rope.img_sin,
            &rope.txt_cos,
            &rope.txt_sin,
            out,
            refs,
        )
        .unwrap()
    };
    let v = run(&x, &[(1, 4, 6), (1, 3, 5)], 24);
    let reference = r.array("velocity").unwrap();
    assert_eq!(v.shape(), reference.shape());
    let e = rel_err(&v, &reference);
    println!("edit_transformer: rel err {e:.3e}");
    assert!(e <= 1e-4, "{e:.3e}");

    // without the reference: the 96×64 module's transformer on the same 24 tokens
    let alone = ops::split_at_indices(&x, &[24], 1).unwrap().swap_remove(0);
    let v0 = run(&alone, &[(1, 4, 6)], 24);
    let tw = tiny::TransformerWeights::load(&ck, "", Dtype::Float32).unwrap();
    let (ic, is, tc, ts) = tiny::rope(ctx.shape()[1]).unwrap();
    let plain = tiny::transformer(&tw, &alone, &ctx, &mi, &mt, &mo, &ic, &is, &tc, &ts).unwrap();
    let e0 = rel_err(&v0, &plain);
    assert!(e0 <= 1e-6, "{e0:.3e}");
    // and the reference changes the velocity
    assert!(rel_err(&v0, &reference) > 1e-3);
}

/// Edit-2511's `zero_cond_t`: the reference's tokens take the modulation of timestep 0, the
/// generated image's the step's, against diffusers' transformer with `zero_cond_t=True`
/// (7.5e-3 from the plain edit velocity, so the test tells them apart).
#[test]
fn edit_transformer_zero_cond_matches_diffusers() {
    use qwen::specializations::shared_tiny as shared;
    use qwen_runtime::__private::mlx_rs::{ops, Dtype};
    let ck = Checkpoint::open(fixture("tiny-qwen-image/transformer")).unwrap();
    let m = shared::TimestepModulationWeights::load(&ck, "", Dtype::Float32).unwrap();
    let w = shared::EditTransformerZeroCondWeights::load(&ck, "", Dtype::Float32).unwrap();
    let r = Checkpoint::open(fixture("references/edit_transformer.safetensors")).unwrap();
    let [x, ctx, t] =
        ["hidden_states", "encoder_hidden_states", "timestep"].map(|k| r.array(k).unwrap());
    // the step's timestep and 0: rows 0 and 1 of the modulation
    let t2 = ops::concatenate(&[t.clone(), ops::zeros_like(&t).unwrap()], 0).unwrap();
    let (mi, mt, mo) = shared::timestep_modulation(&m, &t2).unwrap();
    let row = |a: &Array, axis: i32, i: i32| {
        ops::split_at_indices(a, &[i, i + 1], axis)
            .unwrap()
            .swap_remove(1)
    };
    let rope = qwen_image_rope(
        AXES,
        10000.0,
        &[(1, 4, 6), (1, 3, 5)],
        ctx.shape()[1] as usize,
    )
    .unwrap();
    let v = shared::edit_transformer_zero_cond(
        &w,
        &x,
        &ctx,
        &row(&mi, 1, 0),
        &row(&mt, 1, 0),
        &row(&mo, 0, 0),
        &row(&mi, 1, 1),
        &rope.img_cos,
        &rope.img_sin,
        &rope.txt_cos,
        &rope.txt_sin,
        24,
        15,
    )
    .unwrap();
    let reference = r.array("velocity_zero_cond").unwrap();
    let e = rel_err(&v, &reference);
    println!("edit_transformer_zero_cond: rel err {e:.3e}");
    assert!(e <= 1e-4, "{e:.3e}");
    assert!(rel_err(&v, &r.array("velocity").unwrap()) > 1e-3);
}

/// The edit transformer of both CFG halves in one call (the shared module's
/// `edit_transformer_cfg` / `edit_transformer_zero_cond_cfg`, loaded for a joint-CFG module)
/// gives the velocities of two calls of the one-text kind (loaded for a module of one text per
/// call): the prompt's and the negative prompt's (texts of 7 and 4 rows, each with its own
/// RoPE tables), a reference in the image stream, Edit-2509 and Edit-2511; without a negative
/// prompt, the prompt's alone.
#[test]
fn joint_cfg_edit_transformer_is_two_one_text_calls() {
    use qwen::pipeline::{variant_by_name, EditDenoiser, EditModulation};
    use qwen_runtime::__private::mlx_rs::{ops, random, Dtype};
    use qwen_runtime::lora::Loras;
    use qwen_runtime::quant::Dense;
    use qwen_runtime::weights::Staging;
    let ck = Checkpoint::open(fixture("tiny-qwen-image/transformer")).unwrap();
    let (one, joint) = (
        variant_by_name("res96x64_tiny").unwrap(),
        variant_by_name("res96x64_tiny_split").unwrap(),
    );
    let loras = Loras::default();
    let (f32_, s) = (Dtype::Float32, Staging::default());
    let modulation = one.load_modulation(&ck, s, f32_, &Dense, &loras).unwrap();
    // two steps' timesteps, then 0 (Edit-2511's references' row)
    let table = modulation
        .table(&Array::from_slice(&[0.9f32, 0.6, 0.0], &[3]))
        .unwrap();
    let normal = |seed: u64, shape: &[i32]| {
        let k = random::key(seed).unwrap();
        random::normal::<f32>(shape, None, None, &k).unwrap()
    };
    // 24 generated tokens (4×6), then a 3×5 reference's 15
    let x = normal(0, &[1, 39, 64]);
    let x2 = normal(3, &[1, 39, 64]);
    let (c, u) = (normal(1, &[1, 7, 32]), normal(2, &[1, 4, 32]));
    let images = [(1, 4, 6), (1, 3, 5)];
    let (rc, ru) = (
        qwen_image_rope(AXES, 10000.0, &images, 7).unwrap(),
        qwen_image_rope(AXES, 10000.0, &images, 4).unwrap(),
    );
    for zero_cond in [false, true] {
        let load = |v: &dyn qwen::pipeline::Variant| {
            v.load_edit_denoiser(&ck, s, f32_, &Dense, &loras, zero_cond)
                .unwrap()
        };
        let (a, b) = (load(one), load(joint));
        assert!(!a.joint_cfg() && b.joint_cfg());
        let refs_row = zero_cond.then_some(2);
        let run_on = |d: &dyn EditDenoiser, x: &Array, uncond| {
            let m = EditModulation {
                table: &table,
                step: 1,
                refs_row,
            };
            d.velocities(x, (&c, &rc), uncond, m, (24, 15)).unwrap()
        };
        let run = |d: &dyn EditDenoiser, uncond| run_on(d, &x, uncond);
        let (va, ua) = run(a.as_ref(), Some((&u, &ru)));
        let (vb, ub) = run(b.as_ref(), Some((&u, &ru)));
        let (ua, ub) = (ua.unwrap(), ub.unwrap());
        assert_eq!(vb.shape(), &[1, 24, 64]);
        let (ec, eu) = (rel_err(&vb, &va), rel_err(&ub, &ua));
        println!("zero_cond {zero_cond}: joint vs two calls: cond {ec:.3e}, uncond {eu:.3e}");
        assert!(ec <= 1e-5 && eu <= 1e-5, "{ec:.3e} {eu:.3e}");
        // the halves differ: each had its own text
        assert!(rel_err(&ua, &va) > 1e-2);
        let (alone, none) = run(b.as_ref(), None);
        assert!(none.is_none());
        assert!(rel_err(&alone, &va) <= 1e-5);
        // two edits in one call (`--count 2`): each row the velocity of its edit alone
        let both = ops::concatenate(&[&x, &x2], 0).unwrap();
        for d in [a.as_ref(), b.as_ref()] {
            let (v, vu) = run_on(d, &both, Some((&u, &ru)));
            let (v, vu) = (v, vu.unwrap());
            assert_eq!(v.shape(), &[2, 24, 64]);
            let rows = |t: &Array| ops::split_equal(t, 2, 0).unwrap();
            let (second, second_u) = run_on(d, &x2, Some((&u, &ru)));
            let second_u = second_u.unwrap();
            for (got, want) in rows(&v).iter().zip([&va, &second]) {
                assert!(rel_err(got, want) <= 1e-5, "{:.3e}", rel_err(got, want));
            }
            for (got, want) in rows(&vu).iter().zip([&ua, &second_u]) {
                assert!(rel_err(got, want) <= 1e-5, "{:.3e}", rel_err(got, want));
            }
        }
    }
}
