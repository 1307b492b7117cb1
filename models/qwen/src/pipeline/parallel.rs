//! CFG-parallel generation over a group of two processes (one GPU each): rank 0 runs the
//! conditional half of every step, rank 1 the unconditional one, and the two velocities are
//! summed over the group (each rank fills its own row of a `[2, L, 64]` zero array), so that
//! both ranks take the same guided Euler step and hold the same latents; rank 0 decodes.

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, transforms, Array};
use qwen_runtime::distributed::Group;
use qwen_runtime::RgbImage;

use super::generate::{Event, Generation, Request, Timings};
use super::latents::PACKED_CHANNELS;
use super::{Embeddings, Network, Pipeline, PipelineError, Result};

impl Pipeline {
    /// One image of `request` with its two CFG halves on the two ranks of `group` (the
    /// request must make a negative pass); `Some` on rank 0, `None` on rank 1. Each rank
    /// encodes both texts (tens of milliseconds) and runs its own through the transformer,
    /// best a module of one text per call (`Options::negative_pass` false).
    pub fn generate_cfg_parallel(
        &self,
        request: &Request,
        group: &Group,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<Generation>> {
        if group.size() != 2 {
            return Err(PipelineError::Request(format!(
                "CFG-parallel takes a group of 2 processes, not {}",
                group.size()
            )));
        }
        self.check_request(request, 1, "image")?;
        let negative = match &request.negative_prompt {
            Some(n) if request.cfg_scale > 1.0 => n.as_str(),
            _ => return Err(PipelineError::Request(
                "CFG-parallel needs a negative pass (a CFG scale above 1 and a negative prompt)"
                    .into(),
            )),
        };
        let rank = group.rank();
        let mut warnings = vec![];
        let start = std::time::Instant::now();
        let emb = self.encode(&request.prompt, Some(negative), &mut warnings)?;
        let encode_s = start.elapsed().as_secs_f64();
        for w in &warnings {
            on_event(Event::Warning(w));
        }

        let start = std::time::Instant::now();
        // the stages `denoise_with` starts with, so that `step` times the steps alone
        self.modulation_table(&self.timesteps(request.steps)?)?;
        self.ensure(Network::Denoiser)?;
        let latents = self
            .initial_batches(request.latents.as_ref(), request.seed, 1)?
            .remove(0);
        let steps_start = std::time::Instant::now();
        let on_step = &mut |done, total| on_event(Event::Step { done, total });
        let latents = self.denoise_with(
            latents,
            &emb,
            Some(group),
            request.steps,
            request.cfg_scale,
            on_step,
        )?;
        let denoise_s = start.elapsed().as_secs_f64();
        let steps_s = steps_start.elapsed().as_secs_f64();
        if rank != 0 {
            return Ok(None);
        }
        let start = std::time::Instant::now();
        let decoded = self.decode(&latents)?;
        let image = RgbImage::from_array(&decoded)?;
        Ok(Some(Generation {
            latents,
            decoded,
            image,
            warnings,
            timings: Timings {
                encode: encode_s,
                denoise: denoise_s,
                decode: start.elapsed().as_secs_f64(),
                step: steps_s / request.steps as f64,
            },
            peaks: vec![],
        }))
    }

    /// One exchange of a step's velocities (zeros, this pipeline's shape and dtype) over
    /// `group`, evaluated; every rank calls it, before it times anything. NCCL connects the
    /// ranks lazily, at their first collective, which would otherwise be in the first step.
    pub fn connect_ranks(&self, group: &Group) -> Result<()> {
        let shape = [1, self.image_seq_len() as i32, PACKED_CHANNELS as i32];
        let run = || -> std::result::Result<(), Exception> {
            let v = ops::zeros_dtype(&shape, self.dtype)?;
            let (cond, uncond) = exchange(group, v)?;
            transforms::eval(std::iter::once(&cond).chain(uncond.as_ref()))
        };
        run().map_err(super::mlx("connecting the ranks"))
    }
}

/// The text a rank runs: the prompt on rank 0, the negative prompt on rank 1.
pub(super) fn text_of_rank<'e>(emb: &'e Embeddings, group: &Group) -> Result<&'e Array> {
    match (group.rank(), &emb.negative) {
        (0, _) => Ok(&emb.prompt),
        (_, Some(n)) => Ok(n),
        (_, None) => Err(PipelineError::Request(
            "CFG-parallel needs a negative prompt".into(),
        )),
    }
}

/// Both ranks' velocities from this rank's `v`: summed over the group, each rank filling its
/// row of a `[2, ..]` zero array (rank 0 the conditional one), so that every rank has both
/// halves and takes the same guided step.
pub(super) fn exchange(
    group: &Group,
    v: Array,
) -> std::result::Result<(Array, Option<Array>), Exception> {
    let zeros = ops::zeros_like(&v)?;
    let rows = if group.rank() == 0 {
        [&v, &zeros]
    } else {
        [&zeros, &v]
    };
    let both = group.all_sum(&ops::concatenate(&rows, 0)?)?;
    let mut halves = ops::split_equal(&both, 2, 0)?;
    let uncond = halves.pop();
    Ok((halves.remove(0), uncond))
}
