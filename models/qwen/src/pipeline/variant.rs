//! The face every generated module is run through ([`Variant`], the loaded networks behind
//! [`TextEncoder`], [`Modulator`], [`Denoiser`], [`Step`], [`Decoder`] and, for edits,
//! [`EditEncoder`], [`EditDenoiser`] and [`ImageEncoder`]) and the list of
//! them ([`VARIANTS`]); the implementations are made in `variants.rs`.

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, Array, Dtype};
use qwen_runtime::lora::Loras;
use qwen_runtime::quant::Plan;
use qwen_runtime::weights::{Checkpoint, Staging, TensorSpec};

use super::{variants, ModelConfig, PipelineError, Resolution, Result};

/// One generated module (one `specialize!` line) behind a common face.
pub trait Variant: Sync {
    /// The module's name in [`crate::specializations`].
    fn name(&self) -> &'static str;
    fn resolution(&self) -> Resolution;
    fn config(&self) -> ModelConfig;
    /// Whether the transformer runs both CFG halves in one call (`cfg = split`).
    fn joint_cfg(&self) -> bool;
    /// The ranks the transformer's image tokens are split over (`sp = N`: sequence
    /// parallelism, run in a process group); 1 for a module one process runs alone.
    fn sequence_parts(&self) -> usize;
    fn text_encoder_specs(&self) -> Vec<TensorSpec>;
    /// The transformer's timestep-only part (`time_text_embed`, every block's `img_mod.1` /
    /// `txt_mod.1`, `norm_out.linear`).
    fn modulation_specs(&self) -> Vec<TensorSpec>;
    /// The rest of the transformer (what every step reads).
    fn transformer_specs(&self) -> Vec<TensorSpec>;
    fn vae_specs(&self) -> Vec<TensorSpec>;
    /// Loaders: the checkpoint, how its tensors are copied ahead (the copies count against
    /// the memory budget), the compute dtype, which linear layers to quantize.
    fn load_text_encoder(
        &self,
        ck: &Checkpoint,
        staging: Staging,
        dtype: Dtype,
        plan: &dyn Plan,
    ) -> Result<Box<dyn TextEncoder>>;
    /// Loads the timestep modulation from the transformer's checkpoint (the adapters
    /// `loras` fused into its weights before any quantization).
    fn load_modulation(
        &self,
        ck: &Checkpoint,
        staging: Staging,
        dtype: Dtype,
        plan: &dyn Plan,
        loras: &Loras,
    ) -> Result<Box<dyn Modulator>>;
    fn load_transformer(
        &self,
        ck: &Checkpoint,
        staging: Staging,
        dtype: Dtype,
        plan: &dyn Plan,
        loras: &Loras,
    ) -> Result<Box<dyn Denoiser>>;
    fn load_vae(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn Decoder>>;
    /// The encoders of an edit (the shared module's vision tower and text encoder with
    /// images): what they read from the text encoder's checkpoint.
    fn edit_encoder_specs(&self) -> Vec<TensorSpec>;
    /// The shared module's edit transformer (with Edit-2511's `zero_cond_t` or without): what
    /// every step of an edit reads.
    fn edit_denoiser_specs(&self, zero_cond: bool) -> Vec<TensorSpec>;
    /// Loads the encoders of an edit (`plan` quantizes the text encoder's layers as for
    /// [`Variant::load_text_encoder`]; the vision tower stays dense).
    fn load_edit_encoder(
        &self,
        ck: &Checkpoint,
        staging: Staging,
        dtype: Dtype,
        plan: &dyn Plan,
    ) -> Result<Box<dyn EditEncoder>>;
    /// Loads the edit transformer, as [`Variant::load_transformer`] loads the text-to-image
    /// one (the same checkpoint keys): the kind that runs both CFG halves in one call where
    /// this module's transformer does ([`Variant::joint_cfg`]).
    #[allow(clippy::too_many_arguments)]
    fn load_edit_denoiser(
        &self,
        ck: &Checkpoint,
        staging: Staging,
        dtype: Dtype,
        plan: &dyn Plan,
        loras: &Loras,
        zero_cond: bool,
    ) -> Result<Box<dyn EditDenoiser>>;
    /// What the VAE encoder reads (an edit's reference images).
    fn vae_encoder_specs(&self) -> Vec<TensorSpec>;
    /// The VAE encoder (the shared module's: its size is free at run time).
    fn load_vae_encoder(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn ImageEncoder>>;
    /// Compiles every fused kernel the module's networks use (one tiny call each; see the
    /// generated `warm_up_kernels`).
    fn warm_up_kernels(&self, dtype: Dtype) -> Result<(), Exception>;
    /// The tiles of a tiled VAE decode (diffusers' defaults for the real model).
    fn vae_tiling(&self) -> qwen_runtime::tiles::Tiling;
}

/// A loaded text encoder: token ids `[1, S]` (int32) → final-norm states `[1, S, hidden]`.
pub trait TextEncoder {
    fn encode(&self, ids: &Array) -> Result<Array, Exception>;
}

/// The loaded timestep modulation: a schedule's timesteps → the modulation of every step.
pub trait Modulator {
    /// For timesteps `[T]` (f32, t/1000): every block's and `norm_out`'s modulation.
    fn table(&self, timesteps: &Array) -> Result<ModulationTable, Exception>;
}

/// Every step's modulation (the generated `timestep_modulation`'s outputs, evaluated):
/// `img`, `txt` `[num_layers, T, 6·D]`, `out` `[T, 2·D]`.
#[derive(Debug, Clone)]
pub struct ModulationTable {
    pub img: Array,
    pub txt: Array,
    pub out: Array,
}

impl ModulationTable {
    /// Step `i`'s rows for a batch of `batch` (both CFG halves share the step's timestep):
    /// `img`, `txt` `[num_layers, batch, 6·D]`, `out` `[batch, 2·D]`.
    pub fn step(&self, i: usize, batch: i32) -> Result<[Array; 3], Exception> {
        let i = i as i32;
        let pick = |a: &Array, axis: i32| -> Result<Array, Exception> {
            let row = a
                .take_axis(Array::from_int(i), axis)?
                .expand_dims_axes(&[axis])?;
            let mut shape = row.shape().to_vec();
            shape[axis as usize] = batch;
            if batch == 1 {
                Ok(row)
            } else {
                ops::broadcast_to(&row, &shape)
            }
        };
        Ok([
            pick(&self.img, 1)?,
            pick(&self.txt, 1)?,
            pick(&self.out, 0)?,
        ])
    }
}

/// A loaded transformer.
pub trait Denoiser {
    /// Binds the prompt embeddings (and the negative ones for CFG) and the schedule's
    /// modulation: builds the RoPE tables of the texts' lengths once, for every step.
    fn bind<'a>(
        &'a self,
        cond: Array,
        uncond: Option<Array>,
        modulation: &'a ModulationTable,
    ) -> Result<Box<dyn Step + 'a>, Exception>;
}

/// A transformer bound to its texts and schedule.
pub trait Step {
    /// Velocities for latents `[N, L, 64]` (N images of the bound text) at step `i` of the
    /// schedule: the conditional ones and, when bound with a negative prompt, the
    /// unconditional ones, each `[N, L, 64]`.
    fn velocity(&self, latents: &Array, i: usize) -> Result<(Array, Option<Array>), Exception>;
}

/// The loaded encoders of an edit (spec §5): the vision tower and the text encoder with
/// images.
pub trait EditEncoder {
    /// The vision tower on one image's inputs (`qwen::vision::VisionGrid::inputs`): its
    /// merged tokens' embeddings `[M, hidden]` in the image's order.
    fn vision(&self, inputs: &[Array; 5]) -> Result<Array, Exception>;
    /// The text encoder with images: ids `[1, S]`, the images' embeddings stacked, each
    /// token's row and mask, the RoPE tables → hidden states `[1, S, hidden]`.
    fn encode(
        &self,
        ids: &Array,
        images: &Array,
        rows_mask: [&Array; 2],
        rope: [&Array; 2],
    ) -> Result<Array, Exception>;
}

/// One text's inputs of the edit transformer: its hidden states `[1, L_txt, hidden]` and the
/// RoPE tables of the image stream and of its length.
pub type EditText<'a> = (&'a Array, &'a qwen_runtime::rope::RopeTables);

/// The loaded edit transformer (spec §5.1), of one text per call or (`cfg = split`'s kind) of
/// both CFG halves in one call.
pub trait EditDenoiser {
    /// Whether both CFG halves run in one call.
    fn joint_cfg(&self) -> bool;
    /// The velocities at `modulation`'s step of the first `L_out` tokens of the image streams
    /// `x` `[N, L_out + L_ref, 64]` (N edits: each generated image's tokens, then the
    /// references'; `lengths` = (L_out, L_ref)) for the prompt and, for CFG, the negative
    /// prompt: `[N, L_out, 64]` each.
    fn velocities(
        &self,
        x: &Array,
        cond: EditText<'_>,
        uncond: Option<EditText<'_>>,
        modulation: EditModulation<'_>,
        lengths: (i32, i32),
    ) -> Result<(Array, Option<Array>), Exception>;
}

/// The modulation of one step of an edit.
#[derive(Clone, Copy)]
pub struct EditModulation<'a> {
    /// The schedule's table, and the step.
    pub table: &'a ModulationTable,
    pub step: usize,
    /// Edit-2511's `zero_cond_t`: the references' tokens take the modulation of timestep 0,
    /// this row of `table` (made with the schedule's, one table kept for both).
    pub refs_row: Option<usize>,
}

/// A loaded VAE encoder: an NHWC image `[1, 8h, 8w, 3]` in [−1, 1] → the posterior's mean
/// `[1, h, w, 16]` (not normalised).
pub trait ImageEncoder {
    fn encode(&self, image: &Array) -> Result<Array, Exception>;
}

/// A loaded VAE decoder: NHWC latents `[1, h, w, 16]` (de-normalised) → `[1, H, W, 3]`.
pub trait Decoder {
    fn decode(&self, z: &Array) -> Result<Array, Exception>;
    /// One tile of a tiled decode (latents `[1, th, tw, 16]`, no final clamp), for the tile
    /// sizes the module's tiling makes ([`Variant::vae_tiling`]); `None` for other sizes.
    fn decode_tile(&self, z: &Array) -> Result<Option<Array>, Exception>;
}

/// Every generated module the pipeline can run, one per `specialize!(res = …)` line of
/// `specializations.rs`, in that order (the list is made by `specializations!`).
pub static VARIANTS: &[&dyn Variant] = variants::ALL;

/// The variant for a resolution and config (a joint-CFG one if there is one, else the first
/// listed), or the error listing what exists.
pub fn find_variant(resolution: Resolution, config: ModelConfig) -> Result<&'static dyn Variant> {
    VARIANTS
        .iter()
        .copied()
        .filter(|v| v.resolution() == resolution && v.config() == config)
        .filter(|v| v.sequence_parts() == 1)
        .min_by_key(|v| !v.joint_cfg())
        .ok_or_else(|| {
            let mut available: Vec<String> = VARIANTS
                .iter()
                .filter(|v| v.config() == config && v.sequence_parts() == 1)
                .map(|v| v.resolution().to_string())
                .collect();
            // the joint and the one-text module of a size are both listed
            let mut seen = std::collections::HashSet::new();
            available.retain(|r| seen.insert(r.clone()));
            PipelineError::UnsupportedResolution {
                resolution,
                config,
                available,
            }
        })
}

/// A variant of one text per transformer call for a resolution and config, if one exists:
/// for runs without a negative pass (Lightning), where a joint-CFG module would compute a
/// second half and throw it away.
pub fn find_one_text_variant(
    resolution: Resolution,
    config: ModelConfig,
) -> Option<&'static dyn Variant> {
    VARIANTS.iter().copied().find(|v| {
        v.resolution() == resolution
            && v.config() == config
            && !v.joint_cfg()
            && v.sequence_parts() == 1
    })
}

/// The module that splits the image tokens of `resolution` over `parts` ranks (`sp = N`),
/// if one is generated.
pub fn find_sequence_variant(
    resolution: Resolution,
    config: ModelConfig,
    parts: usize,
) -> Option<&'static dyn Variant> {
    VARIANTS.iter().copied().find(|v| {
        v.resolution() == resolution && v.config() == config && v.sequence_parts() == parts
    })
}

/// The generated modules of a sequence split, as `name (W×H over N ranks)`, or `none`.
pub fn sequence_modules() -> String {
    let v: Vec<String> = VARIANTS
        .iter()
        .filter(|v| v.sequence_parts() > 1)
        .map(|v| {
            format!(
                "{} ({} over {} ranks)",
                v.name(),
                v.resolution(),
                v.sequence_parts()
            )
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        format!("generated: {}", v.join(", "))
    }
}

/// A variant by module name (e.g. `res96x64_tiny` to force two transformer calls per step).
pub fn variant_by_name(name: &str) -> Option<&'static dyn Variant> {
    VARIANTS.iter().copied().find(|v| v.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each `specialize!(res = ...)` line of `specializations.rs` declares, read from
    /// the source text: (module name, resolution, config, joint CFG, sequence parts).
    fn declared_modules() -> Vec<(String, Resolution, ModelConfig, bool, usize)> {
        include_str!("../specializations.rs")
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("specialize!(res"))
            .map(|l| {
                let args = &l["specialize!(".len()..l.len() - 2];
                let (mut name, mut res) = (String::new(), None);
                let (mut config, mut joint, mut parts) = (ModelConfig::Real, false, 1);
                for arg in args.split(',') {
                    let (k, v) = arg.split_once('=').unwrap();
                    match (k.trim(), v.trim()) {
                        ("res", r) => {
                            name = format!("res{r}");
                            res = Some(r.parse::<Resolution>().unwrap());
                        }
                        ("config", "tiny") => {
                            name.push_str("_tiny");
                            config = ModelConfig::Tiny;
                        }
                        ("cfg", "split") => {
                            name.push_str("_split");
                            joint = true;
                        }
                        ("sp", n) => {
                            name.push_str(&format!("_sp{n}"));
                            parts = n.parse().unwrap();
                        }
                        other => panic!("unknown specialize! argument {other:?}"),
                    }
                }
                (name, res.unwrap(), config, joint, parts)
            })
            .collect()
    }

    /// The registry `specializations!` makes has exactly the resolution modules of the
    /// `specialize!` lines, in their order, each with its resolution, config and CFG mode.
    #[test]
    fn registry_is_the_specialize_lines() {
        let declared = declared_modules();
        assert!(declared.len() >= 4, "{declared:?}");
        let registry: Vec<(String, Resolution, ModelConfig, bool, usize)> = VARIANTS
            .iter()
            .map(|v| {
                (
                    v.name().to_owned(),
                    v.resolution(),
                    v.config(),
                    v.joint_cfg(),
                    v.sequence_parts(),
                )
            })
            .collect();
        assert_eq!(registry, declared);
        for v in VARIANTS {
            assert!(variant_by_name(v.name()).is_some_and(|w| std::ptr::addr_eq(w, *v)));
        }
        // a joint-CFG module wins over a batched one of the same resolution and config
        let tiny = Resolution {
            width: 96,
            height: 64,
        };
        let v = find_variant(tiny, ModelConfig::Tiny).unwrap();
        assert_eq!(v.name(), "res96x64_tiny_split");
        // a module that splits the tokens over ranks is found only when asked for
        let r64 = Resolution {
            width: 64,
            height: 64,
        };
        assert_eq!(
            find_sequence_variant(r64, ModelConfig::Tiny, 2).map(|v| v.name()),
            Some("res64_tiny_sp2")
        );
        assert!(find_sequence_variant(r64, ModelConfig::Tiny, 3).is_none());
        assert_eq!(
            find_variant(r64, ModelConfig::Tiny).unwrap().name(),
            "res64_tiny_split"
        );
        assert!(find_one_text_variant(r64, ModelConfig::Tiny).is_none());
    }

    /// What `--gpus N` makes of the generated modules (the real config's 1024², 2048² and
    /// 1328², and the forced module).
    #[test]
    fn rank_plans_follow_the_generated_modules() {
        use super::super::plan_ranks;
        let real = ModelConfig::Real;
        let sq = |n| Resolution {
            width: n,
            height: n,
        };
        let plan = |res, gpus, guided| plan_ranks(sq(res), real, gpus, guided, None);
        let p = |parts, halves| super::super::RankPlan {
            parts,
            halves,
            joint_fallback: false,
        };
        // 1024²: the CFG halves on one GPU each (the one-text module); without CFG the tokens
        // over two; four GPUs: each half over two
        assert_eq!(plan(1024, 2, true).unwrap(), p(1, true));
        assert_eq!(plan(1024, 2, false).unwrap(), p(2, false));
        assert_eq!(plan(1024, 4, true).unwrap(), p(2, true));
        // 2048²: the same; without CFG the tokens over two
        assert_eq!(plan(2048, 2, true).unwrap(), p(1, true));
        assert_eq!(plan(2048, 2, false).unwrap(), p(2, false));
        // 1328²: the joint module on each rank, said as a fallback; nothing without CFG
        assert!(plan(1328, 2, true).unwrap().joint_fallback);
        let e = plan(1328, 2, false).unwrap_err().to_string();
        assert!(
            e.contains("no generated module splits the image over 2 ranks"),
            "{e}"
        );
        assert!(e.contains("res1024_sp2"), "{e}");
        assert!(plan(1024, 3, true).is_err());
        // a forced module: its parts decide
        let forced = plan_ranks(sq(1024), real, 4, true, Some("res1024_sp2")).unwrap();
        assert_eq!(forced, p(2, true));
        assert!(plan_ranks(sq(1024), real, 4, false, Some("res1024_sp2")).is_err());
        assert_eq!(
            plan_ranks(sq(1024), real, 2, true, Some("res1024_sp2")).unwrap(),
            p(2, false)
        );
    }
}
