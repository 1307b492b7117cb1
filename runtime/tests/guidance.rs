//! True CFG against `tests/fixtures/references/cfg.safetensors` (the diffusers pipeline's
//! combine and norm rescale, float32).

mod common;

use common::{max_rel_elem, rel_error, Fixture};
use qwen_runtime::__private::mlx_rs::Array;
use qwen_runtime::guidance::{cfg_combine, true_cfg};

/// ‖ours − ref‖ / ‖ref‖ over the whole tensor.
const REL_TOL: f64 = 1e-6;

fn array(fx: &Fixture, name: &str) -> (Array, Vec<f32>) {
    let (shape, values) = fx.f32(name);
    let dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
    (Array::from_slice(&values, &dims), values)
}

#[test]
fn true_cfg_matches_diffusers_at_both_scales() {
    let fx = Fixture::reference("cfg.safetensors");
    let scales: Vec<f32> = serde_json::from_str(&fx.metadata()["scales"]).unwrap();
    assert_eq!(scales, [4.0, 2.5]);
    let (cond, _) = array(&fx, "input.cond");
    let (uncond, _) = array(&fx, "input.uncond");
    assert_eq!(cond.shape(), [2, 16, 64]);

    for scale in scales {
        let name = format!("scale_{scale:?}");
        let (_, want_comb) = array(&fx, &format!("{name}.combined_before_rescale"));
        let (_, want_out) = array(&fx, &format!("{name}.output"));

        let comb = cfg_combine(&cond, &uncond, scale).unwrap();
        let out = true_cfg(&cond, &uncond, scale).unwrap();
        assert_eq!(out.shape(), [2, 16, 64]);
        let (comb, out) = (comb.as_slice::<f32>(), out.as_slice::<f32>());

        let comb_err = rel_error(comb, &want_comb);
        let out_err = rel_error(out, &want_out);
        eprintln!(
            "{name}: combine rel {comb_err:e} (max elem {:e}), output rel {out_err:e} (max elem {:e})",
            max_rel_elem(comb, &want_comb, 1e-3),
            max_rel_elem(out, &want_out, 1e-3),
        );
        assert!(comb_err <= REL_TOL, "{name} combine: {comb_err:e}");
        assert!(out_err <= REL_TOL, "{name} output: {out_err:e}");
    }
}

#[test]
fn rescaled_tokens_keep_the_conditional_norm() {
    // One token, 2 channels: cond (3, 4) has norm 5; with uncond 0 and scale 2 the combined
    // prediction is (6, 8) and the rescale brings it back to (3, 4).
    let cond = Array::from_slice(&[3.0f32, 4.0, 1.0, 0.0], &[1, 2, 2]);
    let uncond = Array::from_slice(&[0.0f32, 0.0, 0.0, 1.0], &[1, 2, 2]);
    let out = true_cfg(&cond, &uncond, 2.0).unwrap();
    // Token 2: comb = (0,1) + 2·((1,0) − (0,1)) = (2, −1), norm √5, cond norm 1.
    let s5 = 5f32.sqrt();
    let want = [3.0, 4.0, 2.0 / s5, -1.0 / s5];
    for (got, want) in out.as_slice::<f32>().iter().zip(want) {
        assert!((got - want).abs() <= 1e-6, "{got} vs {want}");
    }
}

#[test]
fn bf16_inputs_give_bf16_outputs_close_to_the_f32_reference() {
    use qwen_runtime::__private::mlx_rs::Dtype;
    let fx = Fixture::reference("cfg.safetensors");
    let (cond, _) = array(&fx, "input.cond");
    let (uncond, _) = array(&fx, "input.uncond");
    let (_, want) = array(&fx, "scale_4.0.output");
    let to_bf16 = |a: &Array| a.as_dtype(Dtype::Bfloat16).unwrap();
    let out = true_cfg(&to_bf16(&cond), &to_bf16(&uncond), 4.0).unwrap();
    assert_eq!(out.dtype(), Dtype::Bfloat16);
    let out = out.as_dtype(Dtype::Float32).unwrap();
    let err = rel_error(out.as_slice::<f32>(), &want);
    eprintln!("bf16 inputs, scale 4: rel {err:e}");
    // Inputs rounded to bf16 (rel 2^-9), amplified by the scale; output rounded once.
    assert!(err <= 1e-2, "{err:e}");
}
