//! Parity of the whole macro-generated tiny VAE decoder (post_quant_conv, conv_in, mid
//! block with attention, 4 up blocks, norm_out, conv_out, clamp), NHWC, one frame, with
//! diffusers' `AutoencoderKLQwenImage.decode`.

mod common;

use common::{fixture, rel_err};
use qwen::specializations::res96x64_tiny as tiny;
use qwen_runtime::__private::mlx_rs::{ops, Dtype};
use qwen_runtime::{Checkpoint, Extra};

#[test]
fn tiny_vae_decoder_matches_diffusers() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/vae")).unwrap();
    ck.check(&tiny::VaeDecoderWeights::specs(""), Extra::Allow)
        .unwrap();
    let w = tiny::VaeDecoderWeights::load(&ck, "", Dtype::Float32).unwrap();

    let r = Checkpoint::open(fixture("references/vae.safetensors")).unwrap();
    // NCTHW [1, 16, 1, 8, 12] -> NHWC [1, 8, 12, 16] (the harness's job)
    let z = r.array("96x64.decode.input.z").unwrap();
    let s = z.shape().to_vec();
    let z = ops::reshape(&z, &[s[0], s[1], s[3], s[4]]).unwrap();
    let z = ops::transpose_axes(&z, &[0, 2, 3, 1]).unwrap();

    let y = tiny::vae_decoder(&w, &z).unwrap(); // [1, 64, 96, 3]
    assert_eq!(y.shape(), &[1, tiny::HEIGHT as i32, tiny::WIDTH as i32, 3]);
    let reference = r.array("96x64.decode.output.sample").unwrap(); // [1, 3, 1, 64, 96]
    let y = ops::transpose_axes(&y, &[0, 3, 1, 2]).unwrap();
    let y = ops::reshape(&y, reference.shape()).unwrap();
    let e = rel_err(&y, &reference);
    println!("vae_decoder 96x64: rel err {e:.3e}");
    assert!(e <= 1e-4, "rel err {e:.3e}");
}

/// The macro-generated tiny VAE encoder (conv_in, 4 down stages with their downsamplers,
/// mid block with attention, norm_out, conv_out, quant_conv; the posterior's mean) against
/// diffusers' `AutoencoderKLQwenImage.encode(...).latent_dist.mean`, at both fixture sizes:
/// one generated function, its spatial size read from the image at run time.
#[test]
fn tiny_vae_encoder_matches_diffusers() {
    use qwen::specializations::shared_tiny as shared;
    let ck = Checkpoint::open(fixture("tiny-qwen-image/vae")).unwrap();
    ck.check(&shared::VaeEncoderWeights::specs(""), Extra::Allow)
        .unwrap();
    let w = shared::VaeEncoderWeights::load(&ck, "", Dtype::Float32).unwrap();
    let r = Checkpoint::open(fixture("references/vae.safetensors")).unwrap();
    for size in ["96x64", "64x64"] {
        // NCTHW [1, 3, 1, H, W] -> NHWC [1, H, W, 3]
        let x = r.array(&format!("{size}.encode.input.image")).unwrap();
        let s = x.shape().to_vec();
        let x = ops::reshape(&x, &[s[0], s[1], s[3], s[4]]).unwrap();
        let x = ops::transpose_axes(&x, &[0, 2, 3, 1]).unwrap();
        let lat = (s[3] / 8) * (s[4] / 8);
        let mean = shared::vae_encoder(&w, &x, lat).unwrap(); // [1, H/8, W/8, 16]
        assert_eq!(mean.shape(), &[1, s[3] / 8, s[4] / 8, 16]);
        let reference = r.array(&format!("{size}.encode.output.mean")).unwrap(); // [1, 16, 1, h, w]
        let mean = ops::transpose_axes(&mean, &[0, 3, 1, 2]).unwrap();
        let mean = ops::reshape(&mean, reference.shape()).unwrap();
        let e = rel_err(&mean, &reference);
        println!("vae_encoder {size}: rel err {e:.3e}");
        assert!(e <= 1e-4, "{size}: rel err {e:.3e}");
    }
    // the latent size is read from the image: one that is not a multiple of 8 is an error
    let odd = qwen_runtime::__private::mlx_rs::Array::zeros::<f32>(&[1, 36, 64, 3]).unwrap();
    let e = shared::vae_encoder(&w, &odd, 32).unwrap_err().to_string();
    assert!(e.contains("is not a multiple of 8"), "{e}");
}
