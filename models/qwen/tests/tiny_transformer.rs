//! The whole generated tiny transformer (2 blocks in a loop) on a synthetic checkpoint
//! written from its own `specs()`: keys, load, the loop, shapes, finiteness, and the
//! loader's error for a missing key.

mod common;

use std::collections::BTreeMap;

use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::{ops, Array, Dtype};
use qwen_runtime::{Checkpoint, Extra, TensorSpec};
use safetensors::tensor::{Dtype as StDtype, TensorView};

/// Deterministic values in [-1, 1) (xorshift).
fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A bf16 checkpoint with every tensor of `specs` (weights scaled by 1/√fan_in, norm
/// weights near 1), minus the names in `skip`.
fn write_checkpoint(specs: &[TensorSpec], skip: &[&str]) -> tempfile::NamedTempFile {
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for s in specs.iter().filter(|s| !skip.contains(&s.name.as_str())) {
        let n: usize = s.shape.iter().product();
        let v = values(n, &mut seed);
        let v: Vec<f32> = if s.name.contains("norm") {
            v.iter().map(|x| 1.0 + 0.1 * x).collect()
        } else {
            let fan_in = if s.shape.len() > 1 {
                s.shape[1..].iter().product::<usize>()
            } else {
                1
            };
            v.iter().map(|x| x / (fan_in as f32).sqrt()).collect()
        };
        let bytes = v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        data.insert(s.name.clone(), (s.shape.clone(), bytes));
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(k, (shape, b))| {
            (
                k.clone(),
                TensorView::new(StDtype::BF16, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let f = tempfile::NamedTempFile::new().unwrap();
    safetensors::serialize_to_file(views, None, f.path()).unwrap();
    f
}

fn random(shape: &[i32], seed: u64) -> Array {
    let mut s = seed;
    let n: i32 = shape.iter().product();
    Array::from_slice(&values(n as usize, &mut s), shape)
}

#[test]
fn tiny_transformer_runs_its_block_loop() {
    let specs = tiny::TransformerWeights::specs("");
    assert_eq!(specs.len(), 28 * tiny::NUM_LAYERS + 7); // + img_in, txt_norm, txt_in, proj_out
    assert!(specs
        .iter()
        .any(|s| s.name == "transformer_blocks.1.attn.to_add_out.bias"));
    // the timestep-only part: time embedding, each block's img_mod.1 / txt_mod.1, norm_out
    let mod_specs = tiny::TimestepModulationWeights::specs("");
    assert_eq!(mod_specs.len(), 4 * tiny::NUM_LAYERS + 6);
    assert!(mod_specs
        .iter()
        .any(|s| s.name == "transformer_blocks.1.txt_mod.1.weight"));
    let all: Vec<_> = specs.iter().chain(&mod_specs).cloned().collect();
    let file = write_checkpoint(&all, &[]);
    let ck = Checkpoint::open(file.path()).unwrap();
    ck.check(&all, Extra::Report).unwrap();
    let w = tiny::TransformerWeights::load(&ck, "", Dtype::Float32).unwrap();
    assert_eq!(w.transformer_blocks.len(), tiny::NUM_LAYERS);
    let m = tiny::TimestepModulationWeights::load(&ck, "", Dtype::Float32).unwrap();

    let (b, l_txt) = (2, 5);
    let l_img = tiny::IMG_TOKENS as i32;
    let x = random(&[b, l_img, 64], 1);
    let ctx = random(&[b, l_txt, 32], 2);
    let t = Array::from_slice(&[0.9f32, 0.3], &[2]);
    let (mi, mt, mo) = tiny::timestep_modulation(&m, &t).unwrap();
    assert_eq!(mi.shape(), &[tiny::NUM_LAYERS as i32, 2, 6 * 64]);
    assert_eq!(mo.shape(), &[2, 2 * 64]);
    let (ic, is, tc, ts) = tiny::rope(l_txt).unwrap();
    let v = tiny::transformer(&w, &x, &ctx, &mi, &mt, &mo, &ic, &is, &tc, &ts).unwrap();
    assert_eq!(v.shape(), &[b, l_img, 64]);
    let bad = ops::logical_or(ops::is_nan(&v).unwrap(), ops::is_inf(&v).unwrap()).unwrap();
    let any_bad = ops::any(&bad, None).unwrap();
    assert!(!any_bad.item_exact::<bool>(), "non-finite velocity");
    // deterministic, and the text length really is a run-time choice
    let v2 = tiny::transformer(&w, &x, &ctx, &mi, &mt, &mo, &ic, &is, &tc, &ts).unwrap();
    assert_eq!(common::rel_err(&v2, &v), 0.0);
    let ctx9 = random(&[b, 9, 32], 3);
    let (ic, is, tc, ts) = tiny::rope(9).unwrap();
    let v9 = tiny::transformer(&w, &x, &ctx9, &mi, &mt, &mo, &ic, &is, &tc, &ts).unwrap();
    assert_eq!(v9.shape(), &[b, l_img, 64]);
}

#[test]
fn a_missing_weight_is_a_load_error_naming_it() {
    let specs = tiny::DualStreamBlockWeights::specs("transformer_blocks.0");
    let file = write_checkpoint(&specs, &["transformer_blocks.0.attn.norm_k.weight"]);
    let ck = Checkpoint::open(file.path()).unwrap();
    assert!(ck.check(&specs, Extra::Allow).is_err());
    let err = tiny::DualStreamBlockWeights::load(&ck, "transformer_blocks.0", Dtype::Float32)
        .err()
        .expect("load must fail");
    assert!(matches!(err, tiny::LoadError::Weight(_)), "{err}");
    assert!(
        err.to_string()
            .contains("transformer_blocks.0.attn.norm_k.weight"),
        "{err}"
    );
}

/// `Checkpoint::staged` copies tensors ahead in the order of `specs()`: each generated loader
/// asks for its tensors in exactly that order (else the copies made ahead wait, and the
/// loader makes its own one at a time).
#[test]
fn every_loader_asks_for_its_tensors_in_the_order_of_its_specs() {
    fn asked(
        specs: Vec<TensorSpec>,
        load: impl FnOnce(&mut dyn FnMut(&str) -> Result<Array, tiny::LoadError>),
    ) -> (Vec<String>, Vec<String>) {
        let mut names = vec![];
        let shapes: BTreeMap<String, Vec<i32>> = specs
            .iter()
            .map(|s| (s.name.clone(), s.shape.iter().map(|&d| d as i32).collect()))
            .collect();
        load(&mut |k| {
            names.push(k.to_string());
            Ok(ops::zeros::<f32>(&shapes[k])?)
        });
        (names, specs.into_iter().map(|s| s.name).collect())
    }
    let plan = qwen_runtime::quant::Dense;
    let dt = Dtype::Float32;
    let checks = [
        asked(tiny::TransformerWeights::specs(""), |get| {
            tiny::TransformerWeights::load_from(get, &plan, "", dt).unwrap();
        }),
        asked(tiny::TimestepModulationWeights::specs(""), |get| {
            tiny::TimestepModulationWeights::load_from(get, &plan, "", dt).unwrap();
        }),
        asked(tiny::TextEncoderWeights::specs(""), |get| {
            tiny::TextEncoderWeights::load_from(get, &plan, "", dt).unwrap();
        }),
    ];
    for (asked, specs) in checks {
        assert!(asked.len() > 10);
        assert_eq!(asked, specs);
    }
}
