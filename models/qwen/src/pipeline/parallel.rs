//! Generation over a group of processes (one GPU each). Two ways to share an image's work,
//! which combine ([`Ranks`]):
//!
//! - the CFG halves: the ranks form two runs, the first runs the conditional half of every
//!   step and the second the unconditional one; the velocities are summed over the group
//!   (each run's first rank fills its row of a `[2, L, 64]` zero array, the others add
//!   zeros), so that every rank takes the same guided Euler step and holds the same latents;
//! - the image tokens (sequence parallelism, a module generated with `sp = N`): the `N`
//!   ranks of a run each take `1/N` of the tokens through the transformer, whose generated
//!   code gathers the attention's keys and values and the velocity over them.
//!
//! A group of `W` ranks with a module of `N` parts has `W / N` runs: 2 (the CFG halves, each
//! over `N` ranks) or 1 (every rank runs both halves, or the one pass without CFG, on its
//! share). Rank 0 decodes.

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, transforms, Array};
use qwen_runtime::distributed::Group;
use qwen_runtime::RgbImage;

use super::generate::{Event, Generation, Request, Timings};
use super::latents::PACKED_CHANNELS;
use super::{Embeddings, Network, Pipeline, PipelineError, Result};

/// How the ranks of a group share the steps of one image: `parts` ranks per run, one run per
/// CFG half (`halves`) or one run in all.
#[derive(Clone, Copy)]
pub(super) struct Ranks<'g> {
    pub group: &'g Group,
    /// The ranks a run's image tokens are split over (the module's `sp`; 1: not split).
    pub parts: usize,
    /// Two runs, one per CFG half.
    pub halves: bool,
}

impl<'g> Ranks<'g> {
    /// The layout of `group` for a module of `parts` parts, for steps with a negative pass
    /// (`guided`) or without.
    pub fn new(group: &'g Group, parts: usize, guided: bool) -> Result<Self> {
        let halves =
            split_halves(group.size() as usize, parts, guided).map_err(PipelineError::Request)?;
        Ok(Ranks {
            group,
            parts,
            halves,
        })
    }

    /// This rank's run: its CFG half when the halves are split (0 the conditional one).
    pub fn run(&self) -> usize {
        self.group.rank() as usize / self.parts
    }

    /// This rank's share of the image tokens within its run.
    pub fn share(&self) -> usize {
        self.group.rank() as usize % self.parts
    }
}

/// Whether `size` ranks with a module of `parts` parts make two runs, one per CFG half
/// (which takes a negative pass: `guided`), or one; any other layout is an error.
fn split_halves(size: usize, parts: usize, guided: bool) -> std::result::Result<bool, String> {
    if parts == 0 || size % parts != 0 {
        return Err(format!(
            "a module that splits the image over {parts} ranks, in a group of {size}"
        ));
    }
    match size / parts {
        1 => Ok(false),
        2 if guided => Ok(true),
        2 => Err(format!(
            "{size} ranks put the two CFG halves on {parts} each: they need a negative pass (a CFG scale above 1 and a negative prompt)"
        )),
        runs => Err(format!(
            "{size} ranks with a module of {parts} parts make {runs} runs: only 1 (the tokens split) or 2 (the CFG halves) are built"
        )),
    }
}

impl Pipeline {
    /// One image of `request` over the ranks of `group` ([`Ranks`]: the CFG halves, the image
    /// tokens or both split, as the group's size and the module's `sequence_parts` say);
    /// `Some` on rank 0, `None` on the others. Each rank encodes both texts (tens of
    /// milliseconds). Where the halves are split, the module is best one of one text per
    /// call (`Options::negative_pass` false).
    pub fn generate_parallel(
        &self,
        request: &Request,
        group: &Group,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<Option<Generation>> {
        self.check_request(request, 1, "image")?;
        let negative = match &request.negative_prompt {
            Some(n) if request.cfg_scale > 1.0 => Some(n.as_str()),
            _ => None,
        };
        let ranks = Ranks::new(group, self.variant.sequence_parts(), negative.is_some())?;
        let mut warnings = vec![];
        let start = std::time::Instant::now();
        let emb = self.encode(&request.prompt, negative, &mut warnings)?;
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
            Some(ranks),
            request.steps,
            request.cfg_scale,
            on_step,
        )?;
        let denoise_s = start.elapsed().as_secs_f64();
        let steps_s = steps_start.elapsed().as_secs_f64();
        if group.rank() != 0 {
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

    /// One collective over `group` (a sum of zeros of a step's velocities' shape, in this
    /// pipeline's dtype), evaluated; every rank calls it, before it times anything. NCCL
    /// connects the ranks lazily, at their first collective, which would otherwise be in the
    /// first step.
    pub fn connect_ranks(&self, group: &Group) -> Result<()> {
        let shape = [2, self.image_seq_len() as i32, PACKED_CHANNELS as i32];
        let run = || -> std::result::Result<(), Exception> {
            let v = ops::zeros_dtype(&shape, self.dtype)?;
            transforms::eval([&group.all_sum(&v)?])
        };
        run().map_err(super::mlx("connecting the ranks"))
    }
}

/// The texts a rank runs: where the CFG halves are split, its run's (the prompt in run 0,
/// the negative prompt in run 1) alone; else both.
pub(super) fn texts_of_rank<'e>(
    emb: &'e Embeddings,
    ranks: &Ranks<'_>,
) -> Result<(&'e Array, Option<&'e Array>)> {
    if !ranks.halves {
        return Ok((&emb.prompt, emb.negative.as_ref()));
    }
    match (ranks.run(), &emb.negative) {
        (0, _) => Ok((&emb.prompt, None)),
        (_, Some(n)) => Ok((n, None)),
        (_, None) => Err(PipelineError::Request(
            "the CFG halves split over ranks need a negative prompt".into(),
        )),
    }
}

/// Both halves' velocities from this rank's `v` (its run's half, whole: the generated code
/// gathered its tokens), summed over the group: each run's first rank fills its run's row of
/// a `[2, ..]` zero array (run 0 the conditional one), the other ranks add `0·v`, so that
/// every rank has both halves once and takes the same guided step.
///
/// `0·v`, not zeros: the sum must come after `v` on every rank. The collectives of a step
/// (the transformer's gathers, then this sum) must reach MLX's backend in one order on all
/// ranks, and MLX orders independent work as it likes: a sum of zeros that does not wait
/// for `v` ran before the gathers on the ranks that add zeros (the ring paired one rank's
/// sum with another's gather, and the image came out wrong). A NaN in `v` reaches every
/// rank this way, which the finite check of the step stops at.
pub(super) fn exchange(
    ranks: &Ranks<'_>,
    v: Array,
) -> std::result::Result<(Array, Option<Array>), Exception> {
    let zeros = ops::multiply(&v, &Array::from_f32(0.0).as_dtype(v.dtype())?)?;
    let rows = match (ranks.share(), ranks.run()) {
        (0, 0) => [&v, &zeros],
        (0, _) => [&zeros, &v],
        _ => [&zeros, &zeros],
    };
    let both = ranks.group.all_sum(&ops::concatenate(&rows, 0)?)?;
    let mut halves = ops::split_equal(&both, 2, 0)?;
    let uncond = halves.pop();
    Ok((halves.remove(0), uncond))
}

/// How `gpus` processes share one image at `resolution` ([`plan_ranks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankPlan {
    /// The ranks each run splits the image tokens over (the module's `sp`; 1: not split).
    pub parts: usize,
    /// Two runs, one per CFG half (else one run: every rank both halves of its share).
    pub halves: bool,
    /// With `halves` and one part: no module of one text per call at this size, so each
    /// rank runs the joint-CFG module on its text (no faster than one GPU).
    pub joint_fallback: bool,
}

/// How `gpus` processes (2 or more) share one image at `resolution`, with a negative pass
/// (`guided`) or without, from the generated modules (or the forced `module`): with CFG, the
/// two halves on `gpus / 2` ranks each (the tokens split over them by an `sp = gpus / 2`
/// module where that is above 1, or one rank each with a module of one text per call), else
/// the tokens split over all of them (an `sp = gpus` module, both halves on every rank);
/// without CFG, the tokens over all of them. An error names what is missing.
pub fn plan_ranks(
    resolution: super::Resolution,
    config: super::ModelConfig,
    gpus: usize,
    guided: bool,
    module: Option<&str>,
) -> Result<RankPlan> {
    use super::variant::{find_one_text_variant, find_sequence_variant, find_variant};
    let plan = |parts, halves| RankPlan {
        parts,
        halves,
        joint_fallback: false,
    };
    if let Some(name) = module {
        let v = super::variant_by_name(name)
            .ok_or_else(|| PipelineError::Request(format!("no generated module `{name}`")))?;
        let parts = v.sequence_parts();
        let halves = split_halves(gpus, parts, guided).map_err(|e| {
            PipelineError::Request(format!("--gpus {gpus} with module `{name}`: {e}"))
        })?;
        return Ok(RankPlan {
            joint_fallback: halves && v.joint_cfg(),
            ..plan(parts, halves)
        });
    }
    let split = |parts| find_sequence_variant(resolution, config, parts).is_some();
    let missing =
        || {
            PipelineError::Request(format!(
            "--gpus {gpus} at {resolution}: no generated module splits the image over {}{} ({})",
            if guided && gpus % 2 == 0 && gpus > 2 {
                format!("{} or {gpus} ranks", gpus / 2)
            } else {
                format!("{gpus} ranks")
            },
            if guided { "" } else { " (without CFG the image is the only work to split)" },
            super::variant::sequence_modules()
        ))
        };
    if !guided {
        return if split(gpus) {
            Ok(plan(gpus, false))
        } else {
            Err(missing())
        };
    }
    if gpus == 2 && find_one_text_variant(resolution, config).is_some() {
        return Ok(plan(1, true));
    }
    if gpus % 2 == 0 && gpus > 2 && split(gpus / 2) {
        return Ok(plan(gpus / 2, true));
    }
    if split(gpus) {
        return Ok(plan(gpus, false));
    }
    if gpus == 2 && find_variant(resolution, config).is_ok() {
        return Ok(RankPlan {
            joint_fallback: true,
            ..plan(1, true)
        });
    }
    Err(missing())
}
