//! Tiled VAE decoding against diffusers' `enable_tiling` (the tiny config's tiles: 4 latents
//! every 3, as `tests/fixtures/make_vae_tiling_refs.py` configures diffusers), and when
//! `VaeTiling::Auto` tiles.

mod common;

use common::{fixture, rel_err};
use qwen::pipeline::{Options, Pipeline, Resolution, VaeTiling};
use qwen_runtime::__private::mlx_rs::Dtype;
use qwen_runtime::Checkpoint;

const TOL: f32 = 1e-4;

fn open(res: &str, tiling: VaeTiling, memory_limit: Option<usize>) -> Pipeline {
    let options = Options {
        resolution: Some(res.parse::<Resolution>().unwrap()),
        dtype: Dtype::Float32,
        vae_tiling: tiling,
        memory_limit,
        ..Options::default()
    };
    Pipeline::open(fixture("tiny-qwen-image"), &options).unwrap()
}

#[test]
fn tiled_and_untiled_decodes_match_diffusers() {
    let r = Checkpoint::open(fixture("references/vae_tiling.safetensors")).unwrap();
    for (res, key) in [("96x64", "96x64"), ("64", "64x64")] {
        let latents = r.array(&format!("{key}.input.latents")).unwrap();
        let tiled_ref = r.array(&format!("{key}.tiled.decoded")).unwrap();
        let untiled_ref = r.array(&format!("{key}.untiled.decoded")).unwrap();
        let tiled = open(res, VaeTiling::On, None).decode(&latents).unwrap();
        let untiled = open(res, VaeTiling::Off, None).decode(&latents).unwrap();
        let (e_t, e_u) = (rel_err(&tiled, &tiled_ref), rel_err(&untiled, &untiled_ref));
        let apart = rel_err(&tiled, &untiled);
        println!(
            "{res}: tiled vs diffusers {e_t:.3e}, untiled {e_u:.3e} (tiled vs untiled {apart:.3e})"
        );
        assert!(e_t <= TOL && e_u <= TOL, "{res}: {e_t:.3e} {e_u:.3e}");
        assert!(
            apart > 0.1,
            "{res}: the tiles must change the image here ({apart:.3e})"
        );
    }
}

#[test]
fn auto_tiles_only_when_the_untiled_decode_does_not_fit() {
    let r = Checkpoint::open(fixture("references/vae_tiling.safetensors")).unwrap();
    let latents = r.array("96x64.input.latents").unwrap();
    let tiled_ref = r.array("96x64.tiled.decoded").unwrap();
    let untiled_ref = r.array("96x64.untiled.decoded").unwrap();
    // no limit: the decode fits; 1 MB: nothing fits, so the decode goes in tiles
    let roomy = open("96x64", VaeTiling::Auto, None)
        .decode(&latents)
        .unwrap();
    let tight = open("96x64", VaeTiling::Auto, Some(1_000_000))
        .decode(&latents)
        .unwrap();
    assert!(rel_err(&roomy, &untiled_ref) <= TOL);
    assert!(rel_err(&tight, &tiled_ref) <= TOL);
}
