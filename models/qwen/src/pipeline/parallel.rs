//! CFG-parallel generation over a group of two processes (one GPU each): rank 0 runs the
//! conditional half of every step, rank 1 the unconditional one, and the two velocities are
//! summed over the group (each rank fills its own row of a `[2, L, 64]` zero array), so that
//! both ranks take the same guided Euler step and hold the same latents; rank 0 decodes.

use qwen_runtime::__private::mlx_rs::{ops, transforms, Array, Dtype};
use qwen_runtime::distributed::Group;
use qwen_runtime::guidance::true_cfg;
use qwen_runtime::scheduler::euler_step_array;
use qwen_runtime::RgbImage;

use super::generate::{Event, Generation, Request, Timings};
use qwen_runtime::scheduler::Schedule;

use super::{mlx, ModulationTable, Network, Pipeline, PipelineError, Result};

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
        let negative = match &request.negative_prompt {
            Some(n) if request.cfg_scale > 1.0 => n.as_str(),
            _ => return Err(PipelineError::Request(
                "CFG-parallel needs a negative pass (a CFG scale above 1 and a negative prompt)"
                    .into(),
            )),
        };
        if request.steps == 0 {
            return Err(PipelineError::Request("steps must be at least 1".into()));
        }
        if let Some(l) = &request.latents {
            self.check_latents(l)?;
        }
        let rank = group.rank();
        let mut warnings = vec![];
        let start = std::time::Instant::now();
        let emb = self.encode(&request.prompt, Some(negative), &mut warnings)?;
        let encode_s = start.elapsed().as_secs_f64();
        for w in &warnings {
            on_event(Event::Warning(w));
        }
        let mine = if rank == 0 {
            emb.prompt
        } else {
            emb.negative.expect("encoded with a negative prompt")
        };

        let start = std::time::Instant::now();
        let schedule = self
            .scheduler
            .schedule(request.steps, self.image_seq_len())?;
        let table = self.modulation_table(&self.timesteps(request.steps)?)?;
        self.ensure(Network::Denoiser)?;
        let latents = match &request.latents {
            Some(l) => l.clone(),
            None => self.noise(request.seed)?,
        };
        let x = self.denoise_half(
            latents,
            mine,
            &table,
            &schedule,
            request.cfg_scale,
            group,
            on_event,
        )?;
        let latents = x.as_dtype(Dtype::Float32).map_err(mlx("casting"))?;
        let denoise_s = start.elapsed().as_secs_f64();
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
            },
            peaks: vec![],
        }))
    }

    /// The denoise loop of one rank: its own text's velocity, both summed over the group.
    #[allow(clippy::too_many_arguments)]
    fn denoise_half(
        &self,
        latents: Array,
        mine: Array,
        table: &ModulationTable,
        schedule: &Schedule,
        cfg_scale: f32,
        group: &Group,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Array> {
        let rank = group.rank();
        let loaded = self.loaded.borrow();
        let denoiser = loaded.denoiser.as_deref().expect("ensured");
        let bound = denoiser
            .bind(
                mine.as_dtype(self.dtype).map_err(mlx("casting"))?,
                None,
                table,
            )
            .map_err(mlx("building the rope tables"))?;
        let mut x = latents.as_dtype(self.dtype).map_err(mlx("casting"))?;
        for i in 0..schedule.steps() {
            let (v, _) = bound
                .velocity(&x, i)
                .map_err(mlx("running the transformer"))?;
            let zeros = ops::zeros_like(&v).map_err(mlx("exchanging the velocities"))?;
            let rows = if rank == 0 {
                [&v, &zeros]
            } else {
                [&zeros, &v]
            };
            let both = ops::concatenate(&rows, 0)
                .and_then(|b| group.all_sum(&b))
                .map_err(mlx("exchanging the velocities"))?;
            let halves = ops::split_equal(&both, 2, 0).map_err(mlx("exchanging the velocities"))?;
            let v = true_cfg(&halves[0], &halves[1], cfg_scale).map_err(mlx("combining cfg"))?;
            x = euler_step_array(&x, &v, schedule.sigmas[i], schedule.sigmas[i + 1])
                .map_err(mlx("taking the euler step"))?;
            let finite = x
                .is_finite()
                .and_then(|f| f.all(None))
                .map_err(mlx("checking the latents"))?;
            transforms::eval([&x, &finite]).map_err(mlx("running the transformer"))?;
            if !finite.item_exact::<bool>() {
                return Err(PipelineError::NonFinite {
                    step: i + 1,
                    steps: schedule.steps(),
                });
            }
            on_event(Event::Step {
                done: i + 1,
                total: schedule.steps(),
            });
        }
        Ok(x)
    }
}
