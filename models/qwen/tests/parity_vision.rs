//! Parity of the macro-generated tiny Qwen2.5-VL vision tower (patch embedding, a windowed
//! and a full-attention block, the merger) with transformers'
//! `Qwen2_5_VisionTransformerPretrainedModel`, and of the bind-time layout (window order,
//! windows, patch positions) with its index functions, at two patch grids whose windows are
//! padded (`tests/fixtures/make_vision_refs.py`).

mod common;

use common::{fixture, rel_err};
use qwen::specializations::shared_tiny as shared;
use qwen::vision::{PromptImages, VisionGrid, VisionLayout};
use qwen_runtime::__private::mlx_rs::{Array, Dtype};
use qwen_runtime::{Checkpoint, Extra};

fn ints(a: &qwen_runtime::__private::mlx_rs::Array) -> Vec<usize> {
    a.as_slice::<f32>().iter().map(|v| *v as usize).collect()
}

#[test]
fn tiny_vision_tower_matches_transformers() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/text_encoder")).unwrap();
    ck.check(&shared::VisionTowerWeights::specs(""), Extra::Allow)
        .unwrap();
    let w = shared::VisionTowerWeights::load(&ck, "", Dtype::Float32).unwrap();
    let r = Checkpoint::open(fixture("references/vision.safetensors")).unwrap();
    // the tiny tower: 32 wide, 2 heads of 16, windows of 112 px = 4 merged tokens
    let layout = VisionLayout {
        merge: 2,
        window: 4,
        head_dim: 16,
    };
    for (rows, cols) in [(8, 12), (10, 6)] {
        let name = format!("{rows}x{cols}");
        let g = VisionGrid::new(rows, cols, layout).unwrap();
        assert_eq!(
            g.window_index,
            ints(&r.array(&format!("{name}.window_index")).unwrap())
        );
        assert_eq!(
            g.cu_window_seqlens,
            ints(&r.array(&format!("{name}.cu_window_seqlens")).unwrap())
        );
        let pos = ints(&r.array(&format!("{name}.position_ids")).unwrap());
        let ours: Vec<usize> = g.positions.iter().flat_map(|(y, x)| [*y, *x]).collect();
        assert_eq!(ours, pos, "{name} positions");

        let patches = r.array(&format!("{name}.input.patches")).unwrap();
        let [p, cos, sin, mask, reverse] = g.inputs(&patches, layout).unwrap();
        let embeds = shared::vision_tower(&w, &p, &cos, &sin, &mask, &reverse).unwrap();
        let reference = r.array(&format!("{name}.output.embeds")).unwrap();
        assert_eq!(embeds.shape(), reference.shape());
        let e = rel_err(&embeds, &reference);
        println!("vision_tower {name}: rel err {e:.3e}");
        assert!(e <= 1e-4, "{name}: rel err {e:.3e}");
    }
}

/// The generated text encoder with images: a prompt of text, an 8×12-patch image (24 merged
/// tokens) and text, the image rows taking given embeddings and the multimodal RoPE positions
/// of `get_rope_index` (`qwen::vision::PromptImages`), against transformers' language model
/// (`tests/fixtures/make_mm_text_refs.py`).
#[test]
fn tiny_text_encoder_with_an_image_matches_transformers() {
    let ck = Checkpoint::open(fixture("tiny-qwen-image/text_encoder")).unwrap();
    ck.check(
        &shared::TextEncoderWithImagesWeights::specs(""),
        Extra::Allow,
    )
    .unwrap();
    let w = shared::TextEncoderWithImagesWeights::load(&ck, "", Dtype::Float32).unwrap();
    let r = Checkpoint::open(fixture("references/text_encoder_mm.safetensors")).unwrap();
    let ids: Vec<i32> = ints(&r.array("input_ids").unwrap())
        .iter()
        .map(|&v| v as i32)
        .collect();
    const IMAGE_PAD: i32 = 151655;
    let p = PromptImages::new(&ids, IMAGE_PAD, &[(4, 6)]).unwrap();
    let pos = ints(&r.array("position_ids").unwrap()); // [3, S]
    let s = ids.len();
    for (i, q) in p.positions.iter().enumerate() {
        assert_eq!(*q, [pos[i], pos[s + i], pos[2 * s + i]], "token {i}");
    }
    // the tiny language model: head size 8, mrope_section [2, 1, 1], θ 1e6
    let (cos, sin) = p.rope(8, 1e6, [2, 1, 1]).unwrap();
    let n = s as i32;
    let input = Array::from_slice(&ids, &[1, n]);
    let rows = Array::from_slice(&p.rows, &[n]);
    let mask = Array::from_slice(&p.mask, &[n, 1]);
    let images = r.array("image_embeds").unwrap();
    let hidden =
        shared::text_encoder_with_images(&w, &input, &images, &rows, &mask, &cos, &sin).unwrap();
    let reference = r.array("hidden_states").unwrap();
    assert_eq!(hidden.shape(), reference.shape());
    let e = rel_err(&hidden, &reference);
    println!("text_encoder_with_images: rel err {e:.3e}");
    assert!(e <= 1e-4, "rel err {e:.3e}");
    // the positions matter: the text-only ones (0..S on every axis) are far off
    let flat = PromptImages {
        positions: (0..s).map(|i| [i; 3]).collect(),
        ..p
    };
    let (cos, sin) = flat.rope(8, 1e6, [2, 1, 1]).unwrap();
    let off =
        shared::text_encoder_with_images(&w, &input, &images, &rows, &mask, &cos, &sin).unwrap();
    let e = rel_err(&off, &reference);
    println!("with text-only positions: rel err {e:.3e}");
    assert!(e > 1e-3, "{e:.3e}");
}

/// The vision path's patch rows of an RGB image already at a multiple of 28: the same as the
/// Qwen2-VL processor's (PIL backend) `pixel_values` and grid
/// (`tests/fixtures/make_vision_patches_refs.py`).
#[test]
fn image_patches_are_the_processors() {
    let r = Checkpoint::open(fixture("references/vision_patches.safetensors")).unwrap();
    let rgb: Vec<u8> = r
        .array("image")
        .unwrap()
        .as_slice::<f32>()
        .iter()
        .map(|v| *v as u8)
        .collect();
    let (rows, grid) = qwen::vision::image_patches(&rgb, 168, 112, 14, 2, 2).unwrap();
    assert_eq!(grid, (8, 12));
    assert_eq!(ints(&r.array("image_grid_thw").unwrap()), [1, 8, 12]);
    let ours = Array::from_slice(&rows, &[96, 1176]);
    let e = rel_err(&ours, &r.array("pixel_values").unwrap());
    println!("image_patches: rel err {e:.3e}");
    assert!(e <= 1e-6, "{e:.3e}");
    assert!(qwen::vision::image_patches(&rgb, 168, 100, 14, 2, 2).is_err());
}
