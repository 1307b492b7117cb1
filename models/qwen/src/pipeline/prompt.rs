//! Prompts: the Qwen template, tokenizing, and the text encoder's embeddings (spec §1.2).

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, Array};

use super::{mlx, Network, Pipeline, PipelineError, Result, TextEncoder, Warning};

/// The prompt template of Qwen-Image (spec §1.2); `{}` is the user prompt. The system text
/// must match the published one byte for byte.
pub const PROMPT_TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";

/// Tokens of the template before the prompt (the system turn and `<|im_start|>user\n`); their
/// encoder rows are dropped.
pub const TEMPLATE_DROP: usize = 34;

/// Tokens the tokenizer keeps, template included: `1024 + 34`.
pub const TOKENIZER_MAX_LENGTH: usize = 1024 + TEMPLATE_DROP;

/// Encoder rows kept after the drop (diffusers' default `max_sequence_length`).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// The prompt in the template.
pub fn format_prompt(prompt: &str) -> String {
    PROMPT_TEMPLATE.replacen("{}", prompt, 1)
}

/// The prompt template of Qwen-Image-Edit-2509 and -2511 (`QwenImageEditPlusPipeline`, spec
/// §5.2); `{}` is the images' segments, then the instruction.
pub const EDIT_PROMPT_TEMPLATE: &str = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";

/// Tokens of the edit template before the user's turn; their encoder rows are dropped.
pub const EDIT_TEMPLATE_DROP: usize = 64;

/// The token each image's embeddings replace, once per merged token of the image.
pub const IMAGE_PAD: &str = "<|image_pad|>";

/// An edit prompt in its template: `Picture i: <|vision_start|><|image_pad|><|vision_end|>`
/// for each of `images` images, then the instruction.
pub fn format_edit_prompt(prompt: &str, images: usize) -> String {
    let segments: String = (1..=images)
        .map(|i| format!("Picture {i}: <|vision_start|>{IMAGE_PAD}<|vision_end|>"))
        .collect();
    EDIT_PROMPT_TEMPLATE.replacen("{}", &(segments + prompt), 1)
}

/// Token ids of an edit prompt for images of `image_tokens[i]` merged tokens each: the
/// template's ids with image `i`'s [`IMAGE_PAD`] repeated `image_tokens[i]` times, as the
/// Qwen2-VL processor expands it. An error when the tokenizer has no [`IMAGE_PAD`] or the
/// instruction itself holds one (it would take an image's place).
pub fn edit_token_ids(
    tokenizer: &qwen_runtime::Tokenizer,
    prompt: &str,
    image_tokens: &[usize],
) -> Result<Vec<u32>> {
    let pad = tokenizer
        .token_id(IMAGE_PAD)
        .ok_or_else(|| PipelineError::Request(format!("the tokenizer has no {IMAGE_PAD} token")))?;
    let ids = tokenizer.encode(&format_edit_prompt(prompt, image_tokens.len()))?;
    let found = ids.iter().filter(|&&t| t == pad).count();
    if found != image_tokens.len() {
        return Err(PipelineError::Request(format!(
            "an edit prompt for {} image(s) holds {found} {IMAGE_PAD} tokens: the instruction may not contain {IMAGE_PAD}",
            image_tokens.len()
        )));
    }
    let mut counts = image_tokens.iter();
    let mut out = Vec::with_capacity(ids.len() + image_tokens.iter().sum::<usize>());
    for t in ids {
        if t == pad {
            let n = *counts.next().expect("one count per pad, checked above");
            out.extend(std::iter::repeat_n(pad, n));
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// Prompt embeddings: `[1, L_txt, hidden]`.
#[derive(Debug)]
pub struct Embeddings {
    pub prompt: Array,
    pub negative: Option<Array>,
}

impl Pipeline {
    /// Token ids of a prompt in the template, cut at [`TOKENIZER_MAX_LENGTH`].
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize(prompt)?.0)
    }

    /// [`Self::token_ids`] and the length before the cut.
    fn tokenize(&self, prompt: &str) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.tokenizer.encode(&format_prompt(prompt))?;
        let untruncated = ids.len();
        ids.truncate(TOKENIZER_MAX_LENGTH);
        Ok((ids, untruncated))
    }

    /// Prompt embeddings as `encode_prompt` makes them (spec §1.2), with the warnings.
    /// Loads the text encoder if it is not loaded (see [`super::memory`]).
    pub fn encode(
        &self,
        prompt: &str,
        negative: Option<&str>,
        warnings: &mut Vec<Warning>,
    ) -> Result<Embeddings> {
        self.for_generations()?;
        self.ensure(Network::TextEncoder)?;
        let loaded = self.loaded.borrow();
        let encoder: &dyn TextEncoder = loaded.encoder.as_deref().expect("ensured");
        let mut one = |which: &'static str, text: &str| -> Result<Array> {
            if text.trim().is_empty() && which == "prompt" {
                warnings.push(Warning::EmptyPrompt { which });
            }
            let (ids, untruncated) = self.tokenize(text)?;
            let n = ids.len();
            let rows = n.saturating_sub(TEMPLATE_DROP);
            if rows == 0 {
                return Err(PipelineError::Request(format!(
                    "the {which} in the template gave only {n} tokens"
                )));
            }
            if rows > MAX_SEQUENCE_LENGTH {
                warnings.push(Warning::Truncated {
                    which,
                    tokens: untruncated - TEMPLATE_DROP,
                    kept: MAX_SEQUENCE_LENGTH,
                });
            }
            let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            let ids = Array::from_slice(&ids, &[1, n as i32]);
            let states = encoder
                .encode(&ids)
                .map_err(mlx("running the text encoder"))?;
            let keep = rows.min(MAX_SEQUENCE_LENGTH) as i32;
            let start = TEMPLATE_DROP as i32;
            let parts = ops::split_at_indices(&states, &[start, start + keep], 1)
                .map_err(mlx("slicing the prompt embeddings"))?;
            let emb = parts.into_iter().nth(1).ok_or_else(|| PipelineError::Mlx {
                what: "slicing the prompt embeddings",
                source: Exception::from("no middle part"),
            })?;
            emb.eval().map_err(mlx("running the text encoder"))?;
            Ok(emb)
        };
        let prompt = one("prompt", prompt)?;
        let negative = match negative {
            Some(n) => Some(one("negative prompt", n)?),
            None => None,
        };
        Ok(Embeddings { prompt, negative })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_splits_at_the_prompt() {
        let t = format_prompt("fox");
        assert!(t.starts_with("<|im_start|>system\nDescribe the image"));
        assert!(t.ends_with("<|im_end|>\n<|im_start|>user\nfox<|im_end|>\n<|im_start|>assistant\n"));
        // a `{}` in the prompt is not a placeholder
        assert!(format_prompt("{}").contains("user\n{}<|im_end|>"));
    }
}
