//! One generation: [`Request`] in, [`Generation`] out; the denoise loop, the VAE decode and
//! the PNG metadata.

use std::collections::BTreeMap;

use qwen_runtime::__private::mlx_rs::{error::Exception, memory, ops, transforms, Array, Dtype};
use qwen_runtime::guidance::true_cfg;
use qwen_runtime::scheduler::{euler_step_array, Schedule};
use qwen_runtime::tiles::tiled_decode;
use qwen_runtime::RgbImage;

use super::latents::{batch_rows, unpack_nhwc, LATENT_CHANNELS};
use super::parallel::{exchange, texts_of_rank, Ranks};
use super::{mlx, Embeddings, Network, Pipeline, PipelineError, Result, VaeTiling, Warning};

/// One generation.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    /// `None`: no negative prompt, no CFG (one transformer pass per step).
    pub negative_prompt: Option<String>,
    pub steps: usize,
    /// True CFG scale; CFG runs when it is above 1 and there is a negative prompt.
    pub cfg_scale: f32,
    pub seed: u64,
    /// Packed initial latents `[1, L_img, 64]` instead of seeded noise.
    pub latents: Option<Array>,
}

impl Request {
    /// Diffusers' recommended defaults: negative prompt `" "`, 50 steps, scale 4, seed 0.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: Some(" ".into()),
            steps: 50,
            cfg_scale: 4.0,
            seed: 0,
            latents: None,
        }
    }
}

/// What [`Pipeline::generate`] reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A warning, as soon as it is known (the prompts are encoded first).
    Warning(&'a Warning),
    /// `done` of `total` denoising steps finished.
    Step { done: usize, total: usize },
}

/// What a generation produced.
#[derive(Debug)]
pub struct Generation {
    /// Final packed latents `[1, L_img, 64]`.
    pub latents: Array,
    /// Decoder output, clamped, `[1, 3, H, W]` f32 in [−1, 1].
    pub decoded: Array,
    pub image: RgbImage,
    pub warnings: Vec<Warning>,
    /// Seconds spent: text encoding, denoising, decoding.
    pub timings: Timings,
    /// MLX's peak memory (bytes, since the caller's last reset) after each stage: `encode`,
    /// `modulation` (the schedule's modulation table, its network loaded if it was not),
    /// `denoiser` (loaded), `denoise` (every step), `decode`: where the peak of an image is.
    /// Empty for an image made over several ranks ([`Pipeline::generate_parallel`]).
    pub peaks: Vec<(&'static str, usize)>,
}

/// Wall-clock seconds of the three stages; `encode` and `denoise` include loading their
/// networks where the memory budget had them freed, and `denoise` every batch of a count.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub encode: f64,
    pub denoise: f64,
    pub decode: f64,
    /// The mean seconds of one step of the step loops (no loading, no modulation table).
    pub step: f64,
}

/// The velocities of latents at a step: the prompt's and, for CFG, the negative prompt's.
pub(super) type Velocity<'a> =
    dyn Fn(&Array, usize) -> std::result::Result<(Array, Option<Array>), Exception> + 'a;

impl Pipeline {
    /// Runs a whole generation. `on_event` must not call back into this pipeline (the
    /// loaded networks are borrowed while it runs).
    pub fn generate(
        &self,
        request: &Request,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Generation> {
        let mut one = self.generate_images(request, 1, on_event)?;
        Ok(one.remove(0))
    }

    /// `count` images of one request, seeds `seed, seed + 1, …`: the images `count` runs of
    /// [`Pipeline::generate`] with those seeds make. The text is encoded once; the images are
    /// denoised as one batch where their working memory fits beside what stays loaded
    /// ([`super::memory`]), else one after another: every step one call of `2 · count` rows
    /// through a joint-CFG module (both halves of every image), or one call of `count` per
    /// half through a module of one text per call; then each is decoded. Each [`Generation`] carries the
    /// timings and peaks of the whole run.
    pub fn generate_images(
        &self,
        request: &Request,
        count: usize,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Vec<Generation>> {
        self.for_generations()?;
        self.check_request(request, count, "image")?;
        let mut warnings = Vec::new();
        let guided = request.cfg_scale > 1.0 && request.negative_prompt.is_some();
        let negative = if guided {
            request.negative_prompt.as_deref()
        } else {
            None
        };

        let mut peaks = vec![];
        let mut peak = |stage: &'static str| -> Result<()> {
            peaks.push((
                stage,
                memory::peak_memory().map_err(mlx("reading the peak memory"))?,
            ));
            Ok(())
        };
        let start = std::time::Instant::now();
        let emb = self.encode(&request.prompt, negative, &mut warnings)?;
        let encode_s = start.elapsed().as_secs_f64();
        peak("encode")?;
        for w in &warnings {
            on_event(Event::Warning(w));
        }

        let start = std::time::Instant::now();
        // the stages `denoise` starts with, here so that their peaks are seen apart
        self.modulation_table(&self.timesteps(request.steps)?)?;
        peak("modulation")?;
        self.ensure(Network::Denoiser)?;
        peak("denoiser")?;
        let batches = self.initial_batches(request.latents.as_ref(), request.seed, count)?;
        let n_batches = batches.len();
        let mut finals = Vec::with_capacity(count);
        let mut in_steps = 0.0;
        for latents in batches {
            let steps_start = std::time::Instant::now();
            let out = self.denoise(
                latents,
                &emb,
                request.steps,
                request.cfg_scale,
                &mut |done, total| on_event(Event::Step { done, total }),
            )?;
            in_steps += steps_start.elapsed().as_secs_f64();
            finals.extend(batch_rows(out)?);
        }
        let denoise_s = start.elapsed().as_secs_f64();
        peak("denoise")?;

        let start = std::time::Instant::now();
        // one image at a time: the decode's activations are the largest of a generation
        let mut images = Vec::with_capacity(count);
        for l in finals {
            let decoded = self.decode(&l)?;
            let image = RgbImage::from_array(&decoded)?;
            images.push((l, decoded, image));
        }
        let decode_s = start.elapsed().as_secs_f64();
        peak("decode")?;
        let timings = Timings {
            encode: encode_s,
            denoise: denoise_s,
            decode: decode_s,
            step: in_steps / (n_batches * request.steps) as f64,
        };
        Ok(images
            .into_iter()
            .map(|(latents, decoded, image)| Generation {
                latents,
                decoded,
                image,
                warnings: warnings.clone(),
                timings,
                peaks: peaks.clone(),
            })
            .collect())
    }

    /// The transformer's timesteps of a schedule of `steps`: diffusers passes `t / 1000` with
    /// t = sigma · 1000. Kept in f32 for every run dtype (the generated modulation takes an
    /// f32 timestep and casts its embedding); a bf16 diffusers run rounds t and t/1000 to bf16
    /// (spacing 4 near t = 1000), which moved the bf16 result 4× further from the f32
    /// reference when tried.
    pub(super) fn timesteps(&self, steps: usize) -> Result<Vec<f32>> {
        let schedule = self.scheduler.schedule(steps, self.image_seq_len())?;
        Ok(schedule.timesteps.iter().map(|t| t / 1000.0).collect())
    }

    /// An error unless `count` runs (`what`s: images, edits) of `request` can be made: at
    /// least one, given initial latents for one only and of the right shape, at least one
    /// step, a finite CFG scale.
    pub(super) fn check_request(&self, request: &Request, count: usize, what: &str) -> Result<()> {
        if count == 0 {
            return Err(PipelineError::Request(format!(
                "the {what} count must be at least 1"
            )));
        }
        if count > 1 && request.latents.is_some() {
            return Err(PipelineError::Request(format!(
                "given initial latents make one {what}, not several"
            )));
        }
        if request.steps == 0 {
            return Err(PipelineError::Request("steps must be at least 1".into()));
        }
        if !request.cfg_scale.is_finite() {
            return Err(PipelineError::Request(format!(
                "cfg scale {} is not a finite number",
                request.cfg_scale
            )));
        }
        if let Some(l) = &request.latents {
            self.check_latents(l)?;
        }
        Ok(())
    }

    /// The denoise loop from packed latents `[N, L_img, 64]` (N images of one text); returns
    /// the final latents (f32).
    pub fn denoise(
        &self,
        latents: Array,
        emb: &Embeddings,
        steps: usize,
        cfg_scale: f32,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Array> {
        self.denoise_with(latents, emb, None, steps, cfg_scale, on_step)
    }

    /// The denoise loop; with `ranks`, this process runs its share of every step
    /// ([`super::parallel`]): where the CFG halves are split, the half its run has text for in
    /// `emb` (run 0 the prompt, run 1 the negative), the two velocities summed over the group
    /// every step; where the module splits the image tokens, its share of them.
    pub(super) fn denoise_with(
        &self,
        latents: Array,
        emb: &Embeddings,
        ranks: Option<Ranks<'_>>,
        steps: usize,
        cfg_scale: f32,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Array> {
        self.for_generations()?;
        self.check_latents_batch(&latents)?;
        let schedule = self.scheduler.schedule(steps, self.image_seq_len())?;
        let table = self.modulation_table(&self.timesteps(steps)?)?;
        self.ensure(Network::Denoiser)?;
        let images = latents.shape()[0] as usize;
        let _blocks = self.denoise_block_eval(images).scoped();
        let loaded = self.loaded.borrow();
        let denoiser = loaded.denoiser.as_deref().expect("ensured");
        let cast = |a: &Array| a.as_dtype(self.dtype).map_err(mlx("casting"));
        let (cond, uncond) = match &ranks {
            Some(r) => texts_of_rank(emb, r)?,
            None => (&emb.prompt, emb.negative.as_ref()),
        };
        let (cond, uncond) = (cast(cond)?, uncond.map(cast).transpose()?);
        // the group the generated code of a module that splits the tokens gathers over
        let _sequence = ranks.as_ref().map(|r| r.group.sequence_scope());
        let bound = denoiser
            .bind(cond, uncond, &table)
            .map_err(mlx("building the rope tables"))?;
        let x = latents.as_dtype(self.dtype).map_err(mlx("casting"))?;
        self.run_steps(
            x,
            &schedule,
            cfg_scale,
            ranks,
            &|x, i| bound.velocity(x, i),
            on_step,
        )
    }

    /// The steps of a schedule from latents `x` (in the run dtype): per step the velocities
    /// `velocity(x, i)` gives (the prompt's and, for CFG, the negative prompt's), with `ranks`
    /// summed over the group ([`super::parallel`]), true CFG, the Euler step, and one `eval`
    /// that also reduces the latents to one "all finite" flag; returns the final latents (f32).
    pub(super) fn run_steps(
        &self,
        mut x: Array,
        schedule: &Schedule,
        cfg_scale: f32,
        ranks: Option<Ranks<'_>>,
        velocity: &Velocity<'_>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Array> {
        // QWEN_STEP_PROFILE=1: each step's velocities evaluated on their own; the first
        // step's time in that and in the rest (the exchange between ranks, CFG, the Euler
        // step), and the later steps' means, printed at the end. A diagnostic (one more wait
        // per step), off by default.
        let profile = std::env::var("QWEN_STEP_PROFILE").is_ok_and(|v| v == "1");
        let mut times: Vec<(f64, f64)> = vec![];
        for i in 0..schedule.steps() {
            let start = std::time::Instant::now();
            let (cond, uncond) = velocity(&x, i).map_err(mlx("running the transformer"))?;
            if profile {
                transforms::eval(std::iter::once(&cond).chain(uncond.as_ref()))
                    .map_err(mlx("running the transformer"))?;
            }
            let in_velocity = start.elapsed().as_secs_f64();
            let rest = std::time::Instant::now();
            let (cond, uncond) = match &ranks {
                Some(r) if r.halves => {
                    exchange(r, cond).map_err(mlx("exchanging the velocities"))?
                }
                _ => (cond, uncond),
            };
            let v = match uncond {
                Some(u) => true_cfg(&cond, &u, cfg_scale).map_err(mlx("combining cfg"))?,
                None => cond,
            };
            x = euler_step_array(&x, &v, schedule.sigmas[i], schedule.sigmas[i + 1])
                .map_err(mlx("taking the euler step"))?;
            // One reduction evaluated with the step, one bool read back: a NaN or an
            // infinity (bad weights, an overflow in bf16) stops the run here, naming the step,
            // instead of decoding into a meaningless image.
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
            if profile {
                times.push((in_velocity, rest.elapsed().as_secs_f64()));
            }
            on_step(i + 1, schedule.steps());
        }
        if let [(v0, r0), later @ ..] = times.as_slice() {
            let rank = ranks
                .as_ref()
                .map_or(String::new(), |r| format!(" (rank {})", r.group.rank()));
            let n = later.len().max(1) as f64;
            let (v, r) = later
                .iter()
                .fold((0.0, 0.0), |(a, b), (v, r)| (a + v, b + r));
            let line = format!(
                "step profile{rank}: step 1: velocities {:.2} ms, the rest {:.2} ms; steps 2-{}: \
                 {:.2} ms and {:.2} ms (means)\n",
                1e3 * v0,
                1e3 * r0,
                times.len(),
                1e3 * v / n,
                1e3 * r / n
            );
            // one write: the ranks share the terminal
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        }
        x.as_dtype(Dtype::Float32).map_err(mlx("casting"))
    }

    /// Packed latents → decoder output `[1, 3, H, W]` f32, clamped to [−1, 1]. Frees what
    /// the decode's activations need room for (see [`super::memory`]); decodes in tiles as
    /// `Options::vae_tiling` says (automatically: when even then they would not fit).
    pub fn decode(&self, latents: &Array) -> Result<Array> {
        self.check_latents(latents)?;
        self.make_room(super::memory::Stage::Decode)?;
        let (gh, gw) = self.grid();
        let tiling = self.variant.vae_tiling();
        let tiled = tiling.applies(2 * gh as i32, 2 * gw as i32)
            && match self.vae_tiling {
                VaeTiling::On => true,
                VaeTiling::Off => false,
                VaeTiling::Auto => !self.decode_fits(),
            };
        let run = || -> Result<Array, Exception> {
            let z = unpack_nhwc(&latents.as_dtype(Dtype::Float32)?, gh, gw)?;
            // diffusers: z / (1 / std) + mean, in f32.
            let inv: Vec<f32> = self.latents_std.iter().map(|s| 1.0 / s).collect();
            let inv = Array::from_slice(&inv, &[LATENT_CHANNELS as i32]);
            let mean = Array::from_slice(&self.latents_mean, &[LATENT_CHANNELS as i32]);
            let z = ops::add(&ops::divide(&z, &inv)?, &mean)?.as_dtype(self.dtype)?;
            let y = if tiled {
                let mut tile = |t: &Array| {
                    self.vae.decode_tile(t)?.ok_or_else(|| {
                        Exception::custom(format!("no tile decoder for latents {:?}", t.shape()))
                    })
                };
                tiled_decode(&z, tiling, &mut tile)?
            } else {
                self.vae.decode(&z)?
            };
            let y = ops::clip(&y.as_dtype(Dtype::Float32)?, (-1.0f32, 1.0f32))?;
            let y = ops::transpose_axes(&y, &[0, 3, 1, 2])?;
            y.eval()?;
            Ok(y)
        };
        run().map_err(mlx("running the vae decoder"))
    }

    /// PNG text chunks describing a generation.
    pub fn metadata(&self, request: &Request) -> Vec<(String, String)> {
        let r = self.resolution();
        let mut m = BTreeMap::new();
        m.insert("prompt", request.prompt.clone());
        if let Some(n) = &request.negative_prompt {
            m.insert("negative_prompt", n.clone());
        }
        m.insert("steps", request.steps.to_string());
        m.insert("true_cfg_scale", request.cfg_scale.to_string());
        m.insert(
            "seed",
            if request.latents.is_some() {
                "none (initial latents given)".into()
            } else {
                request.seed.to_string()
            },
        );
        m.insert("width", r.width.to_string());
        m.insert("height", r.height.to_string());
        m.insert("module", self.variant.name().to_owned());
        m.insert("dtype", format!("{:?}", self.dtype));
        if let Some(q) = &self.quantize {
            m.insert("quantize", q.describe());
        }
        if !self.loras.is_empty() {
            m.insert("loras", self.loras.describe());
        }
        if self.lightning {
            m.insert(
                "scheduler",
                "lightning (mu = ln 3, no terminal stretch)".into(),
            );
        }
        if let Some(q) = &self.stored_quantization {
            m.insert("quantized_folder", q.layers.clone());
        }
        m.insert("model", self.dir.display().to_string());
        m.insert(
            "software",
            format!("qwen-aot {}", env!("CARGO_PKG_VERSION")),
        );
        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}
