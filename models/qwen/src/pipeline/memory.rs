//! What stays loaded: the one rule that decides, from the memory MLX may use, which networks
//! are kept between stages and generations, and the loading and freeing it implies.
//!
//! Four networks: the text encoder, the timestep modulation (the transformer's
//! timestep-only 6.8 B parameters, used once per schedule), the denoiser (the rest of the
//! transformer, used every step) and the VAE decoder (small, always loaded). The rule:
//!
//! - a stage loads the network it needs if it is not loaded;
//! - before that, while the loaded networks, the one to load and the stage's working memory
//!   ([`Sizes::work`]) would exceed the budget, loaded networks the stage does not need are
//!   freed: first the modulation, then the text encoder, then the denoiser;
//! - nothing is freed that fits. So on a card that holds everything (an H200: ~140 GB)
//!   everything is loaded once, at open; on a 24–32 GB card each stage holds only its own
//!   network: encode (text encoder), modulation table (modulation), denoise + decode
//!   (denoiser); a card in between keeps what fits.
//!
//! The modulation of a schedule is kept (`[num_layers, T, 6·D]` twice, 0.2 GB for 50 steps
//! at 1024²) while the modulation network is not loaded, so generations with the same steps
//! and size do not load it again; when it is loaded, the table is made again per generation
//! (milliseconds) and dropped before the decode.
//!
//! A pipeline opened for edits (`Options::edit`) runs the same rule over the same places:
//! the text encoder's holds the vision tower and the text encoder with images, the
//! denoiser's the edit transformer; the VAE encoder, like the decoder, is small and stays.
//!
//! The budget is `Options::memory_limit`, else MLX's memory limit (`mlx_get_memory_limit`:
//! 95 % of the device memory with CUDA, the recommended working set on a Mac).

use std::cell::RefCell;

use qwen_runtime::__private::mlx_rs::{memory, Array, Dtype};
use qwen_runtime::kernels::BlockEval;
use qwen_runtime::quant::{Dense, Plan, Stored};
use qwen_runtime::weights::{Checkpoint, Staging, TensorSpec};

use crate::quantize::{Quantization, TextEncoderPlan};

use super::{
    mlx, Denoiser, EditDenoiser, EditEncoder, ModulationTable, Modulator, Pipeline, Purpose,
    Resolution, Result, TextEncoder, Variant,
};

const GIB: usize = 1 << 30;

/// The networks that can come and go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    TextEncoder,
    Modulation,
    Denoiser,
}

/// Freed first to last when room is needed.
const EVICTION_ORDER: [Network; 3] = [Network::Modulation, Network::TextEncoder, Network::Denoiser];

/// Bytes of each network's weights once loaded, and the working memory of each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    pub text_encoder: usize,
    pub modulation: usize,
    pub denoiser: usize,
    pub vae: usize,
    /// LoRA pairs, held for the whole run (a network that is loaded again fuses them again);
    /// counted like the VAE, always.
    pub loras: usize,
    /// Activations of a denoising step (both CFG halves) with one block in flight
    /// ([`BlockEval::OneAtATime`]) at this resolution, and the kept modulation table (for
    /// an edit: with one reference image's tokens beside the generated image's).
    pub denoise_work: usize,
    /// What a second block in flight adds ([`BlockEval::Pipelined`], the faster way).
    pub pipeline_work: usize,
    /// Activations of the VAE decode at this resolution.
    pub decode_work: usize,
    /// Activations of the text encoder for a long prompt.
    pub encode_work: usize,
}

/// Bytes of a set of tensors once loaded in `dtype` (floating tensors take the run dtype;
/// the matrices `plan` quantizes: `bits` per value, plus a scale and a bias per group).
pub fn loaded_bytes(specs: &[TensorSpec], dtype: Dtype, plan: &dyn Plan) -> usize {
    let per = match dtype {
        Dtype::Float32 => 4,
        _ => 2,
    };
    specs
        .iter()
        .map(|s| {
            let n = s.shape.iter().product::<usize>();
            match plan.spec(&s.name) {
                Some(q) if s.shape.len() == 2 => {
                    n * q.bits as usize / 8 + 2 * per * n / q.group_size as usize
                }
                _ => n * per,
            }
        })
        .sum()
}

impl Sizes {
    /// The sizes for a generated module in `dtype`. The working memory is an estimate for
    /// bf16 at 1024², from MLX's peaks on an H200, scaled with the pixels and the dtype's
    /// width: the denoise 2.36 GB over the loaded weights and the schedule's table with one
    /// block in flight (2026-11-30, 30 GB budget: peak 29.91 GB over 27.55), 3.13 GB with two
    /// (everything loaded: `stage_peaks_gb` 55.59 → 58.72); the VAE decode's full-resolution
    /// convolutions ~7.2 GB (2026-11-29: everything loaded, weights 55.1 GB, image peak
    /// 62.3 GB; q8 in 24 GB: denoiser 14.5 GB, peak 22.0 GB). An edit's step runs the
    /// references' tokens too, and its VAE encoder stays beside the decoder: the step's
    /// estimates count one reference of the VAE path's area (`crate::edit::VAE_AREA`, 1024²)
    /// beside the output until the edit's own are known ([`Sizes::with_references`]).
    pub fn of(
        variant: &dyn Variant,
        purpose: Purpose,
        dtype: Dtype,
        quantize: Option<&Quantization>,
        stored: Option<(&Checkpoint, i32)>,
    ) -> Self {
        let (te, tr) = plans(quantize, stored);
        let (encoder, denoiser, vae, references) = match purpose {
            Purpose::Generate => (
                variant.text_encoder_specs(),
                variant.transformer_specs(),
                variant.vae_specs(),
                0,
            ),
            Purpose::Edit { zero_cond } => {
                let mut vae = variant.vae_specs();
                vae.extend(variant.vae_encoder_specs());
                (
                    variant.edit_encoder_specs(),
                    variant.edit_denoiser_specs(zero_cond),
                    vae,
                    crate::edit::VAE_AREA,
                )
            }
        };
        Self {
            text_encoder: loaded_bytes(&encoder, dtype, &te),
            modulation: loaded_bytes(&variant.modulation_specs(), dtype, tr.as_ref()),
            denoiser: loaded_bytes(&denoiser, dtype, tr.as_ref()),
            vae: loaded_bytes(&vae, dtype, &Dense),
            loras: 0,
            denoise_work: 0,
            pipeline_work: 0,
            decode_work: 0,
            encode_work: 0,
        }
        .with_references(variant, dtype, references)
    }

    /// The working-memory estimates for `variant`'s size in `dtype`, the step's with
    /// `reference_pixels` of an edit's reference images beside the output (their tokens in the
    /// image stream: activations grow with the tokens, attention being flash).
    pub fn with_references(
        self,
        variant: &dyn Variant,
        dtype: Dtype,
        reference_pixels: usize,
    ) -> Self {
        let width = if dtype == Dtype::Float32 { 2 } else { 1 };
        let Resolution {
            width: w,
            height: h,
        } = variant.resolution();
        let megapixels = (w * h) as f64 / (1024.0 * 1024.0);
        let tokens = (w * h + reference_pixels) as f64 / (w * h) as f64;
        let work = |gib_per_megapixel: f64, floor: f64| {
            ((gib_per_megapixel * megapixels).max(floor) * GIB as f64) as usize * width
        };
        Self {
            denoise_work: work(2.25 * tokens, 0.25),
            pipeline_work: work(0.75 * tokens, 0.1),
            decode_work: work(7.0, 0.25),
            encode_work: work(0.0, 1.0),
            ..self
        }
    }

    fn weights(&self, n: Network) -> usize {
        match n {
            Network::TextEncoder => self.text_encoder,
            Network::Modulation => self.modulation,
            Network::Denoiser => self.denoiser,
        }
    }

    fn work(&self, n: Network) -> usize {
        match n {
            Network::TextEncoder => self.encode_work,
            Network::Modulation => 0,
            Network::Denoiser => self.denoise_work,
        }
    }

    /// Everything loaded at once, with the largest stage's working memory.
    pub fn all(&self) -> usize {
        self.text_encoder
            + self.modulation
            + self.denoiser
            + self.vae
            + self.loras
            + self
                .denoise_work
                .max(self.encode_work)
                .max(self.decode_work)
    }
}

/// The plans of the text encoder and the transformer (both dense without `--quantize`;
/// layers a quantized folder stores quantized are loaded as stored).
fn plans<'a>(
    q: Option<&'a Quantization>,
    stored: Option<(&'a Checkpoint, i32)>,
) -> (TextEncoderPlan, Box<dyn Plan + 'a>) {
    let (te, tr): (TextEncoderPlan, Box<dyn Plan + 'a>) = match q {
        Some(q) => (q.text_encoder(), Box::new(q.transformer())),
        None => (TextEncoderPlan(None), Box::new(Dense)),
    };
    match stored {
        Some((checkpoint, group_size)) => (
            te,
            Box::new(Stored {
                checkpoint,
                group_size,
                fallback: tr,
            }),
        ),
        None => (te, tr),
    }
}

/// The loaded networks (each `None` until a stage needs it, or after it was freed) and the
/// last schedule's modulation.
#[derive(Default)]
pub(super) struct Loaded {
    pub(super) encoder: Option<Box<dyn TextEncoder>>,
    pub(super) modulation: Option<Box<dyn Modulator>>,
    pub(super) denoiser: Option<Box<dyn Denoiser>>,
    /// An edit pipeline's networks in the text encoder's and the denoiser's places.
    pub(super) edit_encoder: Option<Box<dyn EditEncoder>>,
    pub(super) edit_denoiser: Option<Box<dyn EditDenoiser>>,
    /// (the timesteps' bits, their table)
    pub(super) table: Option<(Vec<u32>, ModulationTable)>,
}

impl Loaded {
    fn has(&self, n: Network) -> bool {
        match n {
            Network::TextEncoder => self.encoder.is_some() || self.edit_encoder.is_some(),
            Network::Modulation => self.modulation.is_some(),
            Network::Denoiser => self.denoiser.is_some() || self.edit_denoiser.is_some(),
        }
    }

    fn free(&mut self, n: Network) {
        match n {
            Network::TextEncoder => (self.encoder, self.edit_encoder) = (None, None),
            Network::Modulation => self.modulation = None,
            Network::Denoiser => (self.denoiser, self.edit_denoiser) = (None, None),
        }
    }

    fn loaded(&self) -> Vec<Network> {
        EVICTION_ORDER
            .into_iter()
            .filter(|n| self.has(*n))
            .collect()
    }
}

/// A stage: loading a network (and running it), or the VAE decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Run(Network),
    Decode,
}

/// What to free, in order, before `stage` beside the `loaded` networks (and the VAE) within
/// `budget` bytes: the rule of the module doc.
pub fn to_free(sizes: &Sizes, loaded: &[Network], stage: Stage, budget: usize) -> Vec<Network> {
    let (keep, want) = match stage {
        Stage::Run(n) => (Some(n), sizes.weights(n) + sizes.work(n)),
        Stage::Decode => (None, sizes.decode_work),
    };
    let mut held: Vec<Network> = loaded.to_vec();
    let mut freed = vec![];
    for n in EVICTION_ORDER {
        let bytes = sizes.vae + sizes.loras + held.iter().map(|h| sizes.weights(*h)).sum::<usize>();
        if bytes + want <= budget {
            break;
        }
        if Some(n) != keep && held.contains(&n) {
            held.retain(|h| *h != n);
            freed.push(n);
        }
    }
    freed
}

/// How many bytes of tensors [`Checkpoint::staged`] may copy ahead while `need` loads beside
/// the `loaded` networks (and the VAE): what the budget leaves once `need` is in, less 1 GiB for
/// the layer being loaded (its tensors and their GPU copies), between 64 MiB and 2 GiB. Copies
/// made ahead are MLX memory too: 2 GiB of them, while the modulation network (13.65 GB)
/// loaded beside the text encoder (14.14 GB) at 1024² in bf16, took a 30 GB run to 30.57 GB.
pub fn staging_room(sizes: &Sizes, loaded: &[Network], need: Network, budget: usize) -> usize {
    let held = sizes.vae
        + sizes.loras
        + sizes.weights(need)
        + loaded
            .iter()
            .filter(|n| **n != need)
            .map(|n| sizes.weights(*n))
            .sum::<usize>();
    budget
        .saturating_sub(held + (1 << 30))
        .clamp(64 << 20, 2 << 30)
}

/// Whether a transformer call of `pairs` pairs of CFG halves' rows
/// ([`Pipeline::pairs_per_call`]) runs with a second block in flight ([`BlockEval::Pipelined`])
/// beside the `loaded` networks, the VAE and the LoRA pairs within `budget` bytes (the working
/// memory estimates are for one pair).
pub fn pipeline_fits(sizes: &Sizes, loaded: &[Network], pairs: usize, budget: usize) -> bool {
    let held: usize = loaded.iter().map(|n| sizes.weights(*n)).sum();
    let work = (sizes.denoise_work + sizes.pipeline_work) * pairs.max(1);
    sizes.vae + sizes.loras + held + work <= budget
}

/// The networks [`Pipeline::open`] loads: all of them when everything fits the budget,
/// else none (each stage loads its own).
pub fn load_at_open(sizes: &Sizes, budget: usize) -> bool {
    sizes.all() <= budget
}

impl Pipeline {
    /// The sizes the rule works with.
    pub fn memory_sizes(&self) -> Sizes {
        self.sizes.get()
    }

    /// An edit's reference images hold `tokens` tokens of the image stream: the step's
    /// working-memory estimates from now on are for them.
    pub(super) fn set_edit_references(&self, tokens: usize) {
        // a packed token is 16×16 pixels
        let s = self
            .sizes
            .get()
            .with_references(self.variant, self.dtype, tokens * 256);
        self.sizes.set(s);
    }

    /// The networks loaded now, in the order they would be freed.
    pub fn loaded_networks(&self) -> Vec<Network> {
        self.loaded.borrow().loaded()
    }

    /// Where [`Pipeline::open`]'s time went.
    pub fn open_timings(&self) -> super::OpenTimings {
        self.open_timings
    }

    /// Frees what `stage` does not leave room for (see the module doc). Before the decode,
    /// the kept modulation table goes too when the modulation network is loaded (making it
    /// again takes milliseconds; its 0.2 GB would add to the decode's peak).
    pub(super) fn make_room(&self, stage: Stage) -> Result<()> {
        let mut l = self.loaded.borrow_mut();
        if stage == Stage::Decode && l.modulation.is_some() {
            l.table = None;
        }
        let free = to_free(&self.sizes.get(), &l.loaded(), stage, self.budget);
        for n in &free {
            l.free(*n);
        }
        if !free.is_empty() {
            // give the freed buffers back (MLX keeps them cached otherwise)
            memory::clear_cache().map_err(mlx("freeing memory"))?;
        }
        Ok(())
    }

    /// The rows of one transformer call for `images` images of one text, in pairs of CFG
    /// halves (the unit of the working-memory estimates): a joint-CFG module runs both halves
    /// of every image in one call (`images` pairs); a module of one text per call one half of
    /// each (`⌈images / 2⌉`).
    pub(super) fn pairs_per_call(&self, images: usize) -> usize {
        if self.variant.joint_cfg() {
            images
        } else {
            images.div_ceil(2)
        }
    }

    /// Whether `count` images denoised as one batch fit beside what is loaded now: the
    /// denoiser and the working memory of their call ([`Pipeline::pairs_per_call`]) beside the
    /// loaded networks, the VAE and the LoRA pairs.
    pub(super) fn batch_fits(&self, count: usize) -> bool {
        let l = self.loaded.borrow();
        let mut held: Vec<Network> = l.loaded();
        if !held.contains(&Network::Denoiser) {
            held.push(Network::Denoiser);
        }
        let sizes = self.sizes.get();
        let weights: usize = held.iter().map(|n| sizes.weights(*n)).sum();
        let work = sizes.denoise_work * self.pairs_per_call(count).max(1);
        sizes.vae + sizes.loras + weights + work <= self.budget
    }

    /// How the denoiser's blocks are evaluated while `images` images denoise as one batch:
    /// [`qwen_runtime::kernels::block_eval`]'s mode, except that [`BlockEval::Pipelined`]
    /// becomes [`BlockEval::OneAtATime`] where the second block in flight would not fit
    /// beside what is loaded (bf16 at 1024² in 30 GB: 27.4 GB of weights, 3.1 GB pipelined).
    pub(super) fn denoise_block_eval(&self, images: usize) -> BlockEval {
        let mode = qwen_runtime::kernels::block_eval();
        if mode != BlockEval::Pipelined {
            return mode;
        }
        if pipeline_fits(
            &self.sizes.get(),
            &self.loaded.borrow().loaded(),
            self.pairs_per_call(images),
            self.budget,
        ) {
            BlockEval::Pipelined
        } else {
            BlockEval::OneAtATime
        }
    }

    /// Whether the untiled VAE decode's working memory fits beside what is loaded now
    /// (after [`Pipeline::make_room`] for the decode: `Options::vae_tiling`'s `Auto`).
    pub(super) fn decode_fits(&self) -> bool {
        let l = self.loaded.borrow();
        let sizes = self.sizes.get();
        let held: usize = l.loaded().iter().map(|n| sizes.weights(*n)).sum();
        sizes.vae + sizes.loras + held + sizes.decode_work <= self.budget
    }

    /// Frees what `need` does not leave room for (see the module doc), then loads `need`
    /// if it is not loaded.
    pub(super) fn ensure(&self, need: Network) -> Result<()> {
        if self.loaded.borrow().has(need) {
            return Ok(());
        }
        self.make_room(Stage::Run(need))?;
        let mut l = self.loaded.borrow_mut();
        let stored = self
            .stored_quantization
            .as_ref()
            .map(|q| (&self.checkpoints.transformer, q.group_size));
        let (te, tr) = plans(self.quantize.as_ref(), stored);
        let (v, d) = (self.variant, self.dtype);
        let cks = &self.checkpoints;
        let staging = Staging {
            ahead_bytes: staging_room(&self.sizes.get(), &l.loaded(), need, self.budget),
            ..Staging::default()
        };
        let (te_ck, tr_ck) = (&cks.text_encoder, &cks.transformer);
        match (need, self.purpose) {
            (Network::TextEncoder, Purpose::Generate) => {
                l.encoder = Some(v.load_text_encoder(te_ck, staging, d, &te)?)
            }
            (Network::TextEncoder, Purpose::Edit { .. }) => {
                l.edit_encoder = Some(v.load_edit_encoder(te_ck, staging, d, &te)?)
            }
            (Network::Modulation, _) => {
                let m = v.load_modulation(tr_ck, staging, d, tr.as_ref(), &self.loras)?;
                l.modulation = Some(m)
            }
            (Network::Denoiser, Purpose::Generate) => {
                let t = v.load_transformer(tr_ck, staging, d, tr.as_ref(), &self.loras)?;
                l.denoiser = Some(t)
            }
            (Network::Denoiser, Purpose::Edit { zero_cond }) => {
                let t =
                    v.load_edit_denoiser(tr_ck, staging, d, tr.as_ref(), &self.loras, zero_cond)?;
                l.edit_denoiser = Some(t)
            }
        }
        Ok(())
    }

    /// The modulation of a schedule's timesteps (`t/1000`), kept for the next generation.
    pub(super) fn modulation_table(&self, timesteps: &[f32]) -> Result<ModulationTable> {
        let key: Vec<u32> = timesteps.iter().map(|t| t.to_bits()).collect();
        if let Some((k, t)) = &self.loaded.borrow().table {
            if *k == key {
                return Ok(t.clone());
            }
        }
        self.loaded.borrow_mut().table = None;
        self.ensure(Network::Modulation)?;
        let l = self.loaded.borrow();
        let m = l.modulation.as_ref().expect("ensured");
        let t = Array::from_slice(timesteps, &[timesteps.len() as i32]);
        let table = m
            .table(&t)
            .map_err(mlx("running the timestep modulation"))?;
        drop(l);
        self.loaded.borrow_mut().table = Some((key, table.clone()));
        Ok(table)
    }
}

/// The loaded state of a pipeline.
pub(super) type LoadedCell = RefCell<Loaded>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        // bf16 1024²-like, in GiB
        Sizes {
            text_encoder: 15 * GIB,
            modulation: 13 * GIB,
            denoiser: 27 * GIB,
            vae: GIB / 4,
            loras: 0,
            denoise_work: 2 * GIB,
            pipeline_work: GIB,
            decode_work: 7 * GIB,
            encode_work: GIB,
        }
    }

    fn frees(loaded: &[Network], need: Network, budget_gib: usize) -> Vec<Network> {
        to_free(&sizes(), loaded, Stage::Run(need), budget_gib * GIB)
    }

    /// The real model's sizes in bf16 at 1024² (what the rule decides with on a 30 GB budget).
    #[test]
    fn real_sizes_at_1024() {
        let v = crate::pipeline::find_variant(
            "1024".parse().unwrap(),
            crate::pipeline::ModelConfig::Real,
        )
        .unwrap();
        let s = Sizes::of(v, Purpose::Generate, Dtype::Bfloat16, None, None);
        let gb = |b: usize| b as f64 / 1e9;
        println!(
            "bf16 1024²: text encoder {:.2} GB, modulation {:.2}, denoiser {:.2}, vae {:.2}, all {:.2}",
            gb(s.text_encoder),
            gb(s.modulation),
            gb(s.denoiser),
            gb(s.vae),
            gb(s.all())
        );
        // the 6.8 B timestep-only parameters
        assert!(
            (13.0e9..14.5e9).contains(&(s.modulation as f64)),
            "{}",
            s.modulation
        );
        let q8 = Sizes::of(
            v,
            Purpose::Generate,
            Dtype::Bfloat16,
            Some(&Quantization::new(8).unwrap()),
            None,
        );
        println!(
            "q8: modulation {:.2} GB, denoiser {:.2}",
            gb(q8.modulation),
            gb(q8.denoiser)
        );
        let q4 = Sizes::of(
            v,
            Purpose::Generate,
            Dtype::Bfloat16,
            Some(&Quantization::new(4).unwrap()),
            None,
        );
        println!(
            "q4: modulation {:.2} GB, denoiser {:.2}",
            gb(q4.modulation),
            gb(q4.denoiser)
        );
        assert!(q8.denoiser < s.denoiser * 6 / 10);
        // 30 GB: the denoise runs alone with the VAE, the decode without the denoiser
        let budget = 30_000_000_000;
        use Network::*;
        assert_eq!(
            to_free(&s, &[TextEncoder, Modulation], Stage::Run(Denoiser), budget),
            [Modulation, TextEncoder]
        );
        assert!(s.vae + s.denoiser + s.denoise_work <= budget);
        // there one block at a time: the second in flight took the peak to 30.97 GB
        assert!(!pipeline_fits(&s, &[Denoiser], 1, budget));
        assert!(pipeline_fits(&s, &[Denoiser], 1, 32_000_000_000));
        // everything loaded on an H200 (MLX's limit: 95 % of 141 GB)
        assert!(pipeline_fits(
            &s,
            &[TextEncoder, Modulation, Denoiser],
            4,
            133_000_000_000
        ));
        assert_eq!(to_free(&s, &[Denoiser], Stage::Decode, budget), [Denoiser]);
        // q8 in 24 GB: the decode keeps the denoiser (22.0 GB measured)
        assert!(to_free(&q8, &[Denoiser], Stage::Decode, 24_000_000_000).is_empty());
        // q4 in 24 GB: the text encoder (bf16) goes before the denoise (kept, the peak was
        // 24.21 GB with a working memory estimated 0.5 GB short)
        assert_eq!(
            to_free(&q4, &[TextEncoder], Stage::Run(Denoiser), 24_000_000_000),
            [TextEncoder]
        );
    }

    #[test]
    fn frees_only_what_does_not_fit_in_order() {
        use Network::*;
        // an H200: nothing to free
        assert!(load_at_open(&sizes(), 133 * GIB));
        assert!(frees(&[TextEncoder, Modulation], Denoiser, 133).is_empty());
        // 30 GiB: the encoder and the modulation fit together, the denoiser alone
        assert!(!load_at_open(&sizes(), 30 * GIB));
        assert!(frees(&[TextEncoder], Modulation, 30).is_empty());
        assert_eq!(
            frees(&[TextEncoder, Modulation], Denoiser, 30),
            [Modulation, TextEncoder]
        );
        assert_eq!(frees(&[Denoiser], TextEncoder, 30), [Denoiser]);
        // 24 GiB: one network at a time
        assert_eq!(frees(&[TextEncoder], Modulation, 24), [TextEncoder]);
        // the decode: the denoiser stays where it leaves room for the decode's activations
        let decode = |loaded: &[Network], gib| to_free(&sizes(), loaded, Stage::Decode, gib * GIB);
        assert!(decode(&[Denoiser], 35).is_empty());
        assert_eq!(decode(&[Denoiser], 30), [Denoiser]);
        assert_eq!(decode(&[Denoiser, Modulation], 45), [Modulation]);
        // 48 GB: the encoder and the denoiser stay together; the modulation goes first
        assert!(frees(&[TextEncoder], Denoiser, 48).is_empty());
        assert_eq!(
            frees(&[Denoiser, Modulation], TextEncoder, 48),
            [Modulation]
        );
        assert_eq!(
            frees(&[Denoiser, TextEncoder], Modulation, 48),
            [TextEncoder]
        );
    }

    /// The copies made ahead fit what the budget leaves: 2 GiB with room to spare, what is
    /// left when loading beside other networks, 64 MiB when nothing is.
    #[test]
    fn staging_room_is_what_the_budget_leaves() {
        let s = sizes();
        let room = |loaded: &[Network], need, budget_gib: usize| {
            staging_room(&s, loaded, need, budget_gib * GIB) as f64 / GIB as f64
        };
        assert_eq!(room(&[], Network::Denoiser, 141), 2.0);
        // the modulation network (13) loading beside the text encoder (15) and the VAE in 30,
        // less 1 for the layer loading
        assert_eq!(room(&[Network::TextEncoder], Network::Modulation, 30), 0.75);
        // a network already listed as loaded is counted once
        assert_eq!(room(&[Network::Denoiser], Network::Denoiser, 29), 0.75);
        assert_eq!(
            room(&[Network::TextEncoder], Network::Denoiser, 30),
            1.0 / 16.0
        );
    }
}
