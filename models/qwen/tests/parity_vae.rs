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
