//! The prompt of an edit: the Edit-2509/2511 template, one `Picture i:` segment per image and
//! each image's `<|image_pad|>` expanded to its merged tokens, against the ids
//! `QwenImageEditPlusPipeline` gives its text encoder (`tests/fixtures/make_edit_prompt_refs.py`,
//! which also records the pipeline's template and drop index).

mod common;

use common::fixture;
use qwen::pipeline::{edit_token_ids, EDIT_PROMPT_TEMPLATE, EDIT_TEMPLATE_DROP, IMAGE_PAD};
use qwen_runtime::{Checkpoint, Tokenizer};

const PROMPT: &str = "make the fox blue, keep the snow";

fn reference(key: &str) -> Vec<u32> {
    let r = Checkpoint::open(fixture("references/edit_prompt.safetensors")).unwrap();
    r.array(key)
        .unwrap()
        .as_slice::<f32>()
        .iter()
        .map(|v| *v as u32)
        .collect()
}

#[test]
fn edit_prompt_ids_are_the_pipelines() {
    let tok = Tokenizer::from_dir(fixture("tiny-qwen-image/tokenizer")).unwrap();
    for (key, images) in [
        ("two.input_ids", &[24usize, 6][..]),
        ("one.input_ids", &[24][..]),
    ] {
        let ours = edit_token_ids(&tok, PROMPT, images).unwrap();
        assert_eq!(ours, reference(key), "{key}");
    }
    // the dropped tokens are the system turn and `<|im_start|>user\n`: the rows kept start
    // with the first image's segment
    let ids = edit_token_ids(&tok, PROMPT, &[24]).unwrap();
    let kept = tok.decode(&ids[EDIT_TEMPLATE_DROP..]).unwrap();
    assert!(kept.starts_with("Picture 1: <|vision_start|>"), "{kept:?}");
    let dropped = tok.decode(&ids[..EDIT_TEMPLATE_DROP]).unwrap();
    assert!(dropped.ends_with("<|im_start|>user\n"), "{dropped:?}");
    assert!(EDIT_PROMPT_TEMPLATE.contains("Describe the key features of the input image"));
    // an instruction holding the image token is refused
    let e = edit_token_ids(&tok, &format!("a {IMAGE_PAD}"), &[24]).unwrap_err();
    assert!(e.to_string().contains("may not contain"), "{e}");
}
