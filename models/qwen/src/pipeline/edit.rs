//! An edit (Qwen-Image-Edit-2509 and -2511, spec §5) to its final latents: the input images
//! through the vision path (the condition size, the processor's whole patches, the vision
//! tower) into the prompt, and through the VAE into reference latents; the edit transformer
//! denoising the generated image's tokens beside the references'.

use qwen_runtime::__private::mlx_rs::{ops, transforms, Array};
use qwen_runtime::resample::{resize_rgb, Filter};
use qwen_runtime::rope::qwen_image_rope;
use qwen_runtime::RgbImage;

use super::latents::batch_rows;
use super::variants::repeat_rows;
use super::{edit_token_ids, EDIT_TEMPLATE_DROP, IMAGE_PAD};
use super::{
    mlx, EditEncoder, EditModulation, Event, Network, Pipeline, PipelineError, Purpose, Request,
    Result,
};
use crate::edit::{area_size, smart_resize, CONDITION_AREA, VAE_AREA};
use crate::vision::{image_patches, PromptImages, VisionGrid, VisionLayout};

/// The pixel range the Qwen2-VL processor keeps an image in (its `min_pixels`, `max_pixels`).
const MIN_PIXELS: usize = 3136;
const MAX_PIXELS: usize = 12_845_056;
/// RoPE θ of the DiT.
const DIT_THETA: f32 = 10000.0;

/// Which positions the text encoder gives the prompt's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptPositions {
    /// `0..S` on every axis: what diffusers 0.42.1 with transformers 5.24 computes (the
    /// pipeline gives the encoder no `mm_token_type_ids`, so transformers cannot build the
    /// multimodal ones): the reference's.
    #[default]
    OneDimensional,
    /// Qwen2.5-VL's multimodal positions (each image's tokens on its grid), as the model was
    /// trained.
    Multimodal,
}

/// One edit: a generation's request (the instruction as its prompt) and the input images.
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub request: Request,
    /// The input images, in the prompt's order (`Picture 1`, …).
    pub images: Vec<RgbImage>,
    pub positions: PromptPositions,
}

/// The images as the vision path gives them to the text encoder.
struct Inputs {
    /// The vision tower's embeddings, stacked `[Σ M, hidden]`.
    embeds: Array,
    /// Merged tokens per image and their grids (rows, columns).
    tokens: Vec<usize>,
    grids: Vec<(usize, usize)>,
}

/// The images as the VAE path gives them to the edit transformer.
struct References {
    /// The reference latents, joined `[1, Σ L_ref, 64]`.
    latents: Array,
    /// Their packed grids (rows, columns).
    grids: Vec<(usize, usize)>,
}

/// Joins the images' arrays on `axis` (one is taken as it is).
fn join(v: &[Array], axis: i32) -> Result<Array> {
    if v.len() == 1 {
        Ok(v[0].clone())
    } else {
        ops::concatenate(v, axis).map_err(mlx("joining the images"))
    }
}

/// The error of image `i` (numbered from 1, as the prompt's `Picture N`).
fn bad(i: usize, e: String) -> PipelineError {
    PipelineError::Request(format!("image {}: {e}", i + 1))
}

impl Pipeline {
    /// The final latents `[1, L_img, 64]` (f32) of an edit of `edit.images` at this
    /// pipeline's size, through the shared module's edit networks (a pipeline opened with
    /// `Options::edit`: the networks loaded and freed by [`super::memory`]'s rule, Edit-2511's
    /// `zero_cond_t` read at open).
    pub fn edit_latents(&self, edit: &EditRequest) -> Result<Array> {
        self.edit_latents_with(edit, &mut |_| {})
    }

    /// [`Pipeline::edit_latents`], telling `on_event` of each finished step.
    pub fn edit_latents_with(
        &self,
        edit: &EditRequest,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Array> {
        Ok(self.edit_images_with(edit, 1, on_event)?.remove(0))
    }

    /// `count` edits of one request, seeds `seed, seed + 1, …`: the final latents `[1, L_img,
    /// 64]` (f32) of each, as `count` calls of [`Pipeline::edit_latents`] with those seeds make
    /// them. The images and the prompts are encoded once; the edits are denoised as one batch
    /// where its working memory fits beside what stays loaded ([`super::memory`]), else one
    /// after another; `on_event` hears of every step of every denoise.
    pub fn edit_images_with(
        &self,
        edit: &EditRequest,
        count: usize,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Vec<Array>> {
        let request = &edit.request;
        self.check_request(request, count, "edit")?;
        if edit.images.is_empty() {
            return Err(PipelineError::Request(
                "an edit needs at least one image".into(),
            ));
        }
        let Purpose::Edit { zero_cond } = self.purpose else {
            return Err(PipelineError::Request(
                "this pipeline was opened for generations: open it with Options::edit to edit"
                    .into(),
            ));
        };
        let cfg = self.variant.config().graph_config();
        // the references through the VAE first (its activations at ~1 MP, with room made as for
        // a decode), then the vision tower and the prompts, each network loaded by the rule
        let references = self.edit_references(&edit.images)?;
        // the denoise estimates for these references' tokens
        let ref_tokens: usize = references.grids.iter().map(|(h, w)| h * w).sum();
        self.set_edit_references(ref_tokens);
        self.ensure(Network::TextEncoder)?;
        let loaded = self.loaded.borrow();
        let encoder = loaded.edit_encoder.as_deref().expect("ensured");
        let inputs = self.edit_inputs(&edit.images, &cfg, encoder)?;

        // the prompts, each with the images' tokens; the first 64 rows dropped
        let te = &cfg.text_encoder;
        let pad = self.tokenizer.token_id(IMAGE_PAD).ok_or_else(|| {
            PipelineError::Request(format!("the tokenizer has no {IMAGE_PAD} token"))
        })? as i32;
        let encode = |text: &str| -> Result<Array> {
            let ids: Vec<i32> = edit_token_ids(&self.tokenizer, text, &inputs.tokens)?
                .iter()
                .map(|t| *t as i32)
                .collect();
            let mut p =
                PromptImages::new(&ids, pad, &inputs.grids).map_err(PipelineError::Request)?;
            if edit.positions == PromptPositions::OneDimensional {
                p.positions = (0..ids.len()).map(|i| [i; 3]).collect();
            }
            let run = || {
                let (cos, sin) = p.rope(
                    te.head_dim(),
                    te.rope_theta as f32,
                    te.rope_scaling.mrope_section,
                )?;
                let s = ids.len() as i32;
                let hidden = encoder.encode(
                    &Array::from_slice(&ids, &[1, s]),
                    &inputs.embeds,
                    [
                        &Array::from_slice(&p.rows, &[s]),
                        &Array::from_slice(&p.mask, &[s, 1]),
                    ],
                    [&cos, &sin],
                )?;
                let kept =
                    ops::split_at_indices(&hidden, &[EDIT_TEMPLATE_DROP as i32], 1)?.swap_remove(1);
                kept.as_dtype(self.dtype)
            };
            run().map_err(mlx("encoding the edit prompt"))
        };
        let guided = request.cfg_scale > 1.0 && request.negative_prompt.is_some();
        let cond = encode(&request.prompt)?;
        let uncond = match (&request.negative_prompt, guided) {
            (Some(n), true) => Some(encode(n)?),
            _ => None,
        };
        // computed now, while the encoders are loaded (the rule may free them next)
        let mut done = vec![&cond];
        done.extend(uncond.as_ref());
        transforms::eval(done).map_err(mlx("encoding the edit prompt"))?;
        drop(loaded);

        // the schedule and its modulation (and timestep 0's for Edit-2511's references)
        let out_len = self.image_seq_len();
        let schedule = self.scheduler.schedule(request.steps, out_len)?;
        // Edit-2511: timestep 0's row after the schedule's, one table kept for both
        let mut timesteps = self.timesteps(request.steps)?;
        let refs_row = zero_cond.then(|| {
            timesteps.push(0.0);
            timesteps.len() - 1
        });
        let table = self.modulation_table(&timesteps)?;
        let (gh, gw) = self.grid();
        let mut images = vec![(1, gh, gw)];
        images.extend(references.grids.iter().map(|&(h, w)| (1, h, w)));
        let t = &cfg.transformer;
        let rope = |text: &Array| {
            qwen_image_rope(
                t.axes_dims_rope,
                DIT_THETA,
                &images,
                text.shape()[1] as usize,
            )
            .map_err(mlx("building the rope tables"))
        };
        let (rope_c, rope_u) = (rope(&cond)?, uncond.as_ref().map(rope).transpose()?);
        let references = references
            .latents
            .as_dtype(self.dtype)
            .map_err(mlx("casting"))?;
        let ref_len = references.shape()[1];

        self.ensure(Network::Denoiser)?;
        let batches = self.initial_batches(request.latents.as_ref(), request.seed, count)?;
        let rows = batches[0].shape()[0];
        let _blocks = self.denoise_block_eval(rows as usize).scoped();
        let loaded = self.loaded.borrow();
        let denoiser = loaded.edit_denoiser.as_deref().expect("ensured");
        // the references' tokens after each generated image's, every step
        let refs = repeat_rows(&references, rows).map_err(mlx("repeating the references"))?;
        let velocity = |x: &Array, i: usize| {
            let x_in = ops::concatenate(&[x.clone(), refs.clone()], 1)?;
            let modulation = EditModulation {
                table: &table,
                step: i,
                refs_row,
            };
            let negative = uncond.as_ref().zip(rope_u.as_ref());
            let lengths = (out_len as i32, ref_len);
            denoiser.velocities(&x_in, (&cond, &rope_c), negative, modulation, lengths)
        };
        let total = schedule.steps();
        let mut out = Vec::with_capacity(count);
        for x in batches {
            let x = x.as_dtype(self.dtype).map_err(mlx("casting"))?;
            let done = self.run_steps(
                x,
                &schedule,
                request.cfg_scale,
                None,
                &velocity,
                &mut |done, _| on_event(Event::Step { done, total }),
            )?;
            out.extend(batch_rows(done)?);
        }
        Ok(out)
    }

    /// Each image through the vision path: the condition size, the processor's whole
    /// patches, the vision tower.
    fn edit_inputs(
        &self,
        images: &[RgbImage],
        cfg: &qwen_graph::config::Config,
        encoder: &dyn EditEncoder,
    ) -> Result<Inputs> {
        let vc = &cfg.text_encoder.vision_config;
        let layout = VisionLayout {
            merge: vc.spatial_merge_size,
            window: vc.window_cells(),
            head_dim: vc.head_dim(),
        };
        let (mut embeds, mut tokens, mut grids) = (vec![], vec![], vec![]);
        for (i, img) in images.iter().enumerate() {
            let (w, h) = (img.width as usize, img.height as usize);
            let (cw, ch) = area_size(CONDITION_AREA, w as f64 / h.max(1) as f64);
            let cond =
                resize_rgb(&img.pixels, w, h, cw, ch, Filter::Lanczos).map_err(|e| bad(i, e))?;
            let factor = vc.patch_size * vc.spatial_merge_size;
            let (ph, pw) =
                smart_resize(ch, cw, factor, MIN_PIXELS, MAX_PIXELS).map_err(|e| bad(i, e))?;
            let pix = resize_rgb(&cond, cw, ch, pw, ph, Filter::Bicubic).map_err(|e| bad(i, e))?;
            let (rows, (gh, gw)) = image_patches(
                &pix,
                pw,
                ph,
                vc.patch_size,
                vc.spatial_merge_size,
                vc.temporal_patch_size,
            )
            .map_err(|e| bad(i, e))?;
            let grid = VisionGrid::new(gh, gw, layout).map_err(|e| bad(i, e))?;
            let vision = || {
                let patches = Array::from_slice(&rows, &[(gh * gw) as i32, vc.patch_dim() as i32]);
                let mut ins = grid.inputs(&patches, layout)?;
                ins[0] = ins[0].as_dtype(self.dtype)?;
                encoder.vision(&ins)
            };
            embeds.push(vision().map_err(mlx("running the vision tower"))?);
            let m = vc.spatial_merge_size;
            tokens.push(gh * gw / (m * m));
            grids.push((gh / m, gw / m));
        }
        Ok(Inputs {
            embeds: join(&embeds, 0)?,
            tokens,
            grids,
        })
    }

    /// Each image through the VAE path: the VAE area at its aspect ratio, the VAE encoder
    /// (after room is made for its activations, which are of the decoder's size).
    fn edit_references(&self, images: &[RgbImage]) -> Result<References> {
        self.make_room(super::memory::Stage::Decode)?;
        let (mut latents, mut grids) = (vec![], vec![]);
        for (i, img) in images.iter().enumerate() {
            let (w, h) = (img.width as usize, img.height as usize);
            let (vw, vh) = area_size(VAE_AREA, w as f64 / h.max(1) as f64);
            let v =
                resize_rgb(&img.pixels, w, h, vw, vh, Filter::Lanczos).map_err(|e| bad(i, e))?;
            let x: Vec<f32> = v.iter().map(|b| *b as f32 / 255.0 * 2.0 - 1.0).collect();
            let x = Array::from_slice(&x, &[1, vh as i32, vw as i32, 3]);
            latents.push(self.encode_image(&x)?);
            grids.push((vh / 16, vw / 16));
        }
        let latents = join(&latents, 1)?;
        // encoded now, within the room made for it (not in the first step, beside the
        // edit transformer)
        latents
            .eval()
            .map_err(mlx("encoding the reference images"))?;
        Ok(References { latents, grids })
    }
}
