//! The generated modules behind the [`Variant`] face: one `mod` with a `V: Variant` per
//! resolution module of `specializations.rs`, and `ALL`, both made from the list that
//! `specializations!` hands to `variants!` (so there is no list to keep in step here).
//!
//! Every generated module has the same item names (`TextEncoderWeights`, `text_encoder`,
//! `TransformerWeights`, `transformer`, `rope`, `VaeDecoderWeights`, `vae_decoder`, consts),
//! so one macro wraps any of them. Only the transformer's signature differs: a module made
//! with `cfg = split` takes both CFG texts in one call, the others one text per call.

use qwen_runtime::__private::mlx_rs::{error::Exception, ops, Array, Dtype};
use qwen_runtime::lora::Loras;
use qwen_runtime::quant::{Dense, Plan};
use qwen_runtime::weights::{in_gpu_memory, Checkpoint, Staging, TensorSpec};

use super::{
    Decoder, Denoiser, EditDenoiser, EditEncoder, EditModulation, EditText, ImageEncoder,
    ModelConfig, ModulationTable, Modulator, PipelineError, Resolution, Result, Step, TextEncoder,
    Variant,
};

fn load_error(component: &'static str, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Load {
        component,
        message: e.to_string(),
    }
}

/// A stored tensor in GPU memory by the time its layer is loaded: a stored dtype other
/// than `dtype` is converted by the GPU anyway (the loader's `as_dtype`), the same one is
/// copied ([`in_gpu_memory`]).
fn resident(a: Array, dtype: Dtype) -> Result<Array, Exception> {
    if a.dtype() == dtype {
        in_gpu_memory(a)
    } else {
        Ok(a)
    }
}

/// What a generated loader asks its `get` for, in the order it asks: the tensors of `specs`
/// the checkpoint stores as floats (packed quantized weights are read where the
/// quantization plan reads them), for [`Checkpoint::staged`] to copy ahead.
fn staging_order(ck: &Checkpoint, specs: &[TensorSpec]) -> Vec<String> {
    specs
        .iter()
        .filter(|s| ck.spec(&s.name).is_some_and(|c| c.dtype.is_float()))
        .map(|s| s.name.clone())
        .collect()
}

/// A generated weights struct loaded by `load` and evaluated (dtype conversion, joined
/// projections, the copy to the device), so that loading is done when it returns and no
/// step pays for it.
fn loaded<W, E: std::fmt::Display>(
    component: &'static str,
    load: impl FnOnce() -> std::result::Result<W, E>,
    arrays: impl Fn(&W) -> Vec<Array>,
) -> Result<W> {
    let w = load().map_err(|e| load_error(component, e))?;
    qwen_runtime::__private::mlx_rs::transforms::eval(&arrays(&w))
        .map_err(|e| load_error(component, e))?;
    Ok(w)
}

/// The generated weights struct `$w` loaded from `$ck` as the pipeline loads every network:
/// its float tensors copied ahead on other threads ([`Checkpoint::staged_with`]), each made
/// resident in `$dtype` (and, given `loras`, the adapters fused into it) before `$plan`
/// quantizes it, everything evaluated by [`loaded`] (its errors name `$component`).
macro_rules! staged {
    ($component:literal, $w:ty, $ck:expr, $staging:expr, $dtype:expr, $plan:expr) => {
        staged!(@load $component, $w, $ck, $staging, $dtype, $plan, |get, k| resident(get(k)?, $dtype)?)
    };
    ($component:literal, $w:ty, $ck:expr, $staging:expr, $dtype:expr, $plan:expr, loras: $loras:expr) => {
        staged!(@load $component, $w, $ck, $staging, $dtype, &$loras.plan($plan),
            |get, k| $loras.load(k, resident(get(k)?, $dtype)?, $plan)?)
    };
    (@load $component:literal, $w:ty, $ck:expr, $staging:expr, $dtype:expr, $plan:expr,
        |$get:ident, $k:ident| $tensor:expr) => {{
        let ck: &Checkpoint = $ck;
        let order = staging_order(ck, &<$w>::specs(""));
        loaded(
            $component,
            || ck.staged_with($staging, &order, |$get| <$w>::load_from(&mut |$k| Ok($tensor), $plan, "", $dtype)),
            <$w>::arrays,
        )
    }};
}

/// `a` `[1, ..]` repeated to `n` rows (itself for one): one text for each of `n` images.
pub(super) fn repeat_rows(a: &Array, n: i32) -> Result<Array, Exception> {
    if n == 1 {
        return Ok(a.clone());
    }
    let mut shape = a.shape().to_vec();
    shape[0] = n;
    ops::broadcast_to(a, &shape)
}

/// A joint-CFG call's output split after its first `n` rows: the conditional half, the
/// unconditional one.
fn halves(y: &Array, n: i32) -> Result<(Array, Array), Exception> {
    let mut parts = ops::split_at_indices(y, &[n], 0)?.into_iter();
    match (parts.next(), parts.next()) {
        (Some(cond), Some(uncond)) => Ok((cond, uncond)),
        _ => Err(Exception::custom("a joint-CFG call gave no two halves")),
    }
}

/// Every resolution module, in the order of `specializations.rs`, as
/// `for_each_resolution!` lists them: `module: config, cfg, width, height;` (the size is
/// read back from the module's consts).
macro_rules! variants {
    ($($m:ident: $config:ident, $cfg:ident, $w:literal, $h:literal;)*) => {
        $(variant!($m, $config, $cfg);)*

        /// Every generated module the pipeline can run, in the order of
        /// `specializations.rs`.
        pub(super) static ALL: &[&dyn Variant] = &[$(&$m::V),*];
    };
}

/// `mod $m { struct V }`, `V` implementing [`Variant`] over the generated module
/// `specializations::$m`; the `cfg` option picks the transformer wrapper `Tr`: `batched` →
/// `one_text!`, `split` → `joint!`, `sequence` (`sp = N`) → `sequence!`.
macro_rules! variant {
    ($m:ident, real, $cfg:ident) => {
        variant!(@config $m, ModelConfig::Real, $cfg);
    };
    ($m:ident, tiny, $cfg:ident) => {
        variant!(@config $m, ModelConfig::Tiny, $cfg);
    };
    (@config $m:ident, $config:expr, batched) => {
        variant!(@impl $m, $config, one_text, false, 1);
    };
    (@config $m:ident, $config:expr, split) => {
        variant!(@impl $m, $config, joint, true, 1);
    };
    (@config $m:ident, $config:expr, sequence) => {
        variant!(@impl $m, $config, sequence, false, m::SEQ_PARTS);
    };
    (@impl $m:ident, $config:expr, $transformer:ident, $joint:literal, $parts:expr) => {
        mod $m {
            use super::*;
            use crate::specializations::$m as m;

            pub(super) struct V;

            struct Te(m::TextEncoderWeights);
            impl TextEncoder for Te {
                fn encode(&self, ids: &Array) -> Result<Array, Exception> {
                    m::text_encoder(&self.0, ids)
                }
            }

            struct Md(m::TimestepModulationWeights);
            impl Modulator for Md {
                fn table(&self, timesteps: &Array) -> Result<ModulationTable, Exception> {
                    let (img, txt, out) = m::timestep_modulation(&self.0, timesteps)?;
                    qwen_runtime::__private::mlx_rs::transforms::eval([&img, &txt, &out])?;
                    Ok(ModulationTable { img, txt, out })
                }
            }

            struct EditEnc {
                tower: m::VisionTowerWeights,
                lm: m::TextEncoderWithImagesWeights,
            }
            impl EditEncoder for EditEnc {
                fn vision(&self, i: &[Array; 5]) -> Result<Array, Exception> {
                    m::vision_tower(&self.tower, &i[0], &i[1], &i[2], &i[3], &i[4])
                }
                fn encode(
                    &self,
                    ids: &Array,
                    images: &Array,
                    [rows, mask]: [&Array; 2],
                    [cos, sin]: [&Array; 2],
                ) -> Result<Array, Exception> {
                    m::text_encoder_with_images(&self.lm, ids, images, rows, mask, cos, sin)
                }
            }

            /// The edit transformer of one text per call.
            enum EditOne {
                Plain(m::EditTransformerWeights),
                ZeroCond(m::EditTransformerZeroCondWeights),
            }
            /// The edit transformer of both CFG halves per call.
            enum EditJoint {
                Plain(m::EditTransformerCfgWeights),
                ZeroCond(m::EditTransformerZeroCondCfgWeights),
            }
            enum EditTr {
                One(EditOne),
                Joint(EditJoint),
            }
            /// The references' image rows (timestep 0's, row `refs` of `table`) for a batch.
            fn refs_rows(table: &ModulationTable, refs: Option<usize>, batch: i32) -> Result<Array, Exception> {
                let row = refs.ok_or_else(|| {
                    Exception::custom("Edit-2511's transformer needs the references' modulation at timestep 0")
                })?;
                let [img, _, _] = table.step(row, batch)?;
                Ok(img)
            }
            impl EditDenoiser for EditTr {
                fn joint_cfg(&self) -> bool {
                    matches!(self, EditTr::Joint(_))
                }
                fn velocities(
                    &self,
                    x: &Array,
                    (c, rc): EditText<'_>,
                    uncond: Option<EditText<'_>>,
                    EditModulation { table, step: i, refs_row: refs }: EditModulation<'_>,
                    (out, refs_len): (i32, i32),
                ) -> Result<(Array, Option<Array>), Exception> {
                    // n edits of one text: the text repeated for each
                    let n = x.shape()[0];
                    match self {
                        EditTr::One(w) => {
                            let [mi, mt, mo] = table.step(i, n)?;
                            let call = |text: &Array, r: &qwen_runtime::rope::RopeTables| {
                                let text = repeat_rows(text, n)?;
                                match w {
                                    EditOne::Plain(w) => m::edit_transformer(
                                        w, x, &text, &mi, &mt, &mo, &r.img_cos, &r.img_sin, &r.txt_cos, &r.txt_sin, out, refs_len,
                                    ),
                                    EditOne::ZeroCond(w) => m::edit_transformer_zero_cond(
                                        w, x, &text, &mi, &mt, &mo, &refs_rows(table, refs, n)?, &r.img_cos, &r.img_sin, &r.txt_cos, &r.txt_sin, out, refs_len,
                                    ),
                                }
                            };
                            let v = call(c, rc)?;
                            let u = uncond.map(|(t, r)| call(t, r)).transpose()?;
                            Ok((v, u))
                        }
                        EditTr::Joint(w) => {
                            // the image stream twice, the texts packed; without a negative
                            // prompt the second half repeats the first and is dropped
                            let (u, ru) = uncond.unwrap_or((c, rc));
                            // the conditional half's n edits, then the unconditional half's
                            let x2 = ops::concatenate(&[x, x], 0)?;
                            let texts = repeat_rows(&ops::concatenate(&[c, u], 1)?, n)?;
                            let [mi, mt, mo] = table.step(i, 2 * n)?;
                            let y = match w {
                                EditJoint::Plain(w) => m::edit_transformer_cfg(
                                    w, &x2, &texts, &mi, &mt, &mo, &rc.img_cos, &rc.img_sin, &rc.txt_cos, &ru.txt_cos, &rc.txt_sin, &ru.txt_sin, out, refs_len,
                                ),
                                EditJoint::ZeroCond(w) => m::edit_transformer_zero_cond_cfg(
                                    w, &x2, &texts, &mi, &mt, &mo, &refs_rows(table, refs, 2 * n)?, &rc.img_cos, &rc.img_sin, &rc.txt_cos, &ru.txt_cos, &rc.txt_sin, &ru.txt_sin, out, refs_len,
                                ),
                            }?;
                            let (v, vu) = halves(&y, n)?;
                            Ok((v, uncond.is_some().then_some(vu)))
                        }
                    }
                }
            }

            struct VaeEncoder(m::VaeEncoderWeights);
            impl ImageEncoder for VaeEncoder {
                fn encode(&self, image: &Array) -> Result<Array, Exception> {
                    let s = image.shape();
                    // the mid-block attention's length: the latent pixels
                    m::vae_encoder(&self.0, image, (s[1] / 8) * (s[2] / 8))
                }
            }

            struct Vae(m::VaeDecoderWeights);
            impl Decoder for Vae {
                fn decode(&self, z: &Array) -> Result<Array, Exception> {
                    m::vae_decoder(&self.0, z)
                }
                fn decode_tile(&self, z: &Array) -> Result<Option<Array>, Exception> {
                    m::vae_decode_tile(&self.0, z)
                }
            }

            $transformer!(m);

            impl Variant for V {
                fn name(&self) -> &'static str {
                    stringify!($m)
                }
                fn resolution(&self) -> Resolution {
                    Resolution {
                        width: m::WIDTH,
                        height: m::HEIGHT,
                    }
                }
                fn config(&self) -> ModelConfig {
                    $config
                }
                fn joint_cfg(&self) -> bool {
                    $joint
                }
                fn sequence_parts(&self) -> usize {
                    $parts
                }
                fn text_encoder_specs(&self) -> Vec<TensorSpec> {
                    m::TextEncoderWeights::specs("")
                }
                fn modulation_specs(&self) -> Vec<TensorSpec> {
                    m::TimestepModulationWeights::specs("")
                }
                fn transformer_specs(&self) -> Vec<TensorSpec> {
                    m::TransformerWeights::specs("")
                }
                fn vae_specs(&self) -> Vec<TensorSpec> {
                    m::VaeDecoderWeights::specs("")
                }
                fn load_text_encoder(
                    &self,
                    ck: &Checkpoint,
                    staging: Staging,
                    dtype: Dtype,
                    plan: &dyn Plan,
                ) -> Result<Box<dyn TextEncoder>> {
                    let w = staged!("text_encoder", m::TextEncoderWeights, ck, staging, dtype, plan)?;
                    Ok(Box::new(Te(w)))
                }
                fn load_modulation(
                    &self,
                    ck: &Checkpoint,
                    staging: Staging,
                    dtype: Dtype,
                    plan: &dyn Plan,
                    loras: &Loras,
                ) -> Result<Box<dyn Modulator>> {
                    let w = staged!("transformer", m::TimestepModulationWeights, ck, staging, dtype, plan, loras: loras)?;
                    Ok(Box::new(Md(w)))
                }
                fn load_transformer(
                    &self,
                    ck: &Checkpoint,
                    staging: Staging,
                    dtype: Dtype,
                    plan: &dyn Plan,
                    loras: &Loras,
                ) -> Result<Box<dyn Denoiser>> {
                    let w = staged!("transformer", m::TransformerWeights, ck, staging, dtype, plan, loras: loras)?;
                    Ok(Box::new(Tr(w)))
                }
                fn warm_up_kernels(&self, dtype: Dtype) -> Result<(), Exception> {
                    m::warm_up_kernels(dtype)
                }
                fn vae_tiling(&self) -> qwen_runtime::tiles::Tiling {
                    qwen_runtime::tiles::Tiling {
                        tile: m::VAE_TILE_LATENT as i32,
                        stride: m::VAE_TILE_STRIDE_LATENT as i32,
                        scale: 8,
                    }
                }
                fn load_vae(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn Decoder>> {
                    let w = loaded("vae", || m::VaeDecoderWeights::load(ck, "", dtype), m::VaeDecoderWeights::arrays)?;
                    Ok(Box::new(Vae(w)))
                }
                fn edit_encoder_specs(&self) -> Vec<TensorSpec> {
                    let mut v = m::VisionTowerWeights::specs("");
                    v.extend(m::TextEncoderWithImagesWeights::specs(""));
                    v
                }
                fn edit_denoiser_specs(&self, zero_cond: bool) -> Vec<TensorSpec> {
                    // the joint kind reads the same tensors
                    if zero_cond {
                        m::EditTransformerZeroCondWeights::specs("")
                    } else {
                        m::EditTransformerWeights::specs("")
                    }
                }
                fn load_edit_encoder(
                    &self,
                    ck: &Checkpoint,
                    staging: Staging,
                    dtype: Dtype,
                    plan: &dyn Plan,
                ) -> Result<Box<dyn EditEncoder>> {
                    // the vision tower stays dense
                    let tower = staged!("text_encoder", m::VisionTowerWeights, ck, staging, dtype, &Dense)?;
                    let lm = staged!("text_encoder", m::TextEncoderWithImagesWeights, ck, staging, dtype, plan)?;
                    Ok(Box::new(EditEnc { tower, lm }))
                }
                fn load_edit_denoiser(
                    &self,
                    ck: &Checkpoint,
                    staging: Staging,
                    dtype: Dtype,
                    plan: &dyn Plan,
                    loras: &Loras,
                    zero_cond: bool,
                ) -> Result<Box<dyn EditDenoiser>> {
                    macro_rules! load {
                        ($w:ty) => {
                            staged!("transformer", $w, ck, staging, dtype, plan, loras: loras)?
                        };
                    }
                    Ok(Box::new(match (self.joint_cfg(), zero_cond) {
                        (false, false) => EditTr::One(EditOne::Plain(load!(m::EditTransformerWeights))),
                        (false, true) => EditTr::One(EditOne::ZeroCond(load!(m::EditTransformerZeroCondWeights))),
                        (true, false) => EditTr::Joint(EditJoint::Plain(load!(m::EditTransformerCfgWeights))),
                        (true, true) => EditTr::Joint(EditJoint::ZeroCond(load!(m::EditTransformerZeroCondCfgWeights))),
                    }))
                }
                fn vae_encoder_specs(&self) -> Vec<TensorSpec> {
                    m::VaeEncoderWeights::specs("")
                }
                fn load_vae_encoder(&self, ck: &Checkpoint, dtype: Dtype) -> Result<Box<dyn ImageEncoder>> {
                    let w = loaded("vae", || m::VaeEncoderWeights::load(ck, "", dtype), m::VaeEncoderWeights::arrays)?;
                    Ok(Box::new(VaeEncoder(w)))
                }
            }
        }
    };
}

/// A transformer that takes one text: CFG is two calls per step. With `$parts` above 1 (a
/// module made with `sp = N`: sequence parallelism) it runs on this rank's share of the image
/// tokens: the ranks of the group the pipeline scoped on this thread
/// ([`qwen_runtime::distributed::Group::sequence_scope`]) each take `IMG_TOKENS / N` of them
/// (rank `r` the share `r % N`) with the RoPE rows of its share, and the generated code
/// gathers the attention's keys and values and the velocity over them, so that every rank
/// gets the whole velocity.
macro_rules! one_text {
    ($m:ident) => {
        one_text!($m, 1);
    };
    ($m:ident, $parts:expr) => {
        struct Tr($m::TransformerWeights);

        struct Bound<'a> {
            w: &'a $m::TransformerWeights,
            modulation: &'a ModulationTable,
            /// the image RoPE rows (cos, sin) of this rank's share
            img: (Array, Array),
            cond: (Array, Array, Array),
            uncond: Option<(Array, Array, Array)>,
            /// this rank's share of the image tokens, `start..end` (all of them for one part)
            tokens: (i32, i32),
        }

        impl Denoiser for Tr {
            fn bind<'a>(
                &'a self,
                cond: Array,
                uncond: Option<Array>,
                modulation: &'a ModulationTable,
            ) -> Result<Box<dyn Step + 'a>, Exception> {
                let parts: usize = $parts;
                let (share, _) = qwen_runtime::distributed::sequence_share(parts)?;
                let n = ($m::IMG_TOKENS / parts) as i32;
                let tokens = (share as i32 * n, (share as i32 + 1) * n);
                let (ic, is, tc, ts) = $m::rope(cond.shape()[1])?;
                let uncond = match uncond {
                    Some(u) => {
                        let (_, _, uc, us) = $m::rope(u.shape()[1])?;
                        Some((u, uc, us))
                    }
                    None => None,
                };
                Ok(Box::new(Bound {
                    w: &self.0,
                    modulation,
                    img: (rows(&ic, 0, tokens)?, rows(&is, 0, tokens)?),
                    cond: (cond, tc, ts),
                    uncond,
                    tokens,
                }))
            }
        }

        impl Step for Bound<'_> {
            fn velocity(&self, x: &Array, i: usize) -> Result<(Array, Option<Array>), Exception> {
                let (ic, is) = &self.img;
                let x = &rows(x, 1, self.tokens)?;
                // a batch of images of one text: the text and the step's modulation repeated
                let n = x.shape()[0];
                let [mi, mt, mo] = self.modulation.step(i, n)?;
                let call = |(c, tc, ts): &(Array, Array, Array)| {
                    $m::transformer(
                        self.w,
                        x,
                        &repeat_rows(c, n)?,
                        &mi,
                        &mt,
                        &mo,
                        ic,
                        is,
                        tc,
                        ts,
                    )
                };
                let cond = call(&self.cond)?;
                let uncond = self.uncond.as_ref().map(call).transpose()?;
                Ok((cond, uncond))
            }
        }
    };
}

/// [`one_text!`] on this rank's share of the image tokens (`sp = N`).
macro_rules! sequence {
    ($m:ident) => {
        one_text!($m, $m::SEQ_PARTS);
    };
}

/// Rows `start..end` of `a` along `axis` (a view; `a` itself when they are all of its rows).
fn rows(a: &Array, axis: i32, (start, end): (i32, i32)) -> Result<Array, Exception> {
    if start == 0 && a.shape().get(axis as usize) == Some(&end) {
        return Ok(a.clone());
    }
    let parts = ops::split_at_indices(a, &[start, end], axis)?;
    parts
        .into_iter()
        .nth(1)
        .ok_or_else(|| Exception::custom("no rows to take"))
}

/// A transformer made with `cfg = split`: both CFG halves (latents repeated, each half with
/// its own unpadded text, the two texts packed into one sequence) in one call.
macro_rules! joint {
    ($m:ident) => {
        struct Tr($m::TransformerWeights);

        struct Bound<'a> {
            w: &'a $m::TransformerWeights,
            modulation: &'a ModulationTable,
            /// img cos, img sin, txt cos (cond, uncond), txt sin (cond, uncond)
            ropes: [Array; 6],
            /// both texts' rows, cond then uncond: `[1, L_cond + L_uncond, hidden]`
            texts: Array,
            guided: bool,
        }

        impl Denoiser for Tr {
            fn bind<'a>(
                &'a self,
                cond: Array,
                uncond: Option<Array>,
                modulation: &'a ModulationTable,
            ) -> Result<Box<dyn Step + 'a>, Exception> {
                // Without a negative prompt the second half repeats the first (the module
                // always runs two halves) and is thrown away.
                let guided = uncond.is_some();
                let uncond = uncond.unwrap_or_else(|| cond.clone());
                let (ic, is, tc0, ts0) = $m::rope(cond.shape()[1])?;
                let (_, _, tc1, ts1) = $m::rope(uncond.shape()[1])?;
                Ok(Box::new(Bound {
                    w: &self.0,
                    modulation,
                    ropes: [ic, is, tc0, tc1, ts0, ts1],
                    texts: ops::concatenate(&[cond, uncond], 1)?,
                    guided,
                }))
            }
        }

        impl Step for Bound<'_> {
            fn velocity(&self, x: &Array, i: usize) -> Result<(Array, Option<Array>), Exception> {
                let [ic, is, tc0, tc1, ts0, ts1] = &self.ropes;
                // N images of one text: the conditional half's N, then the unconditional's,
                // and the packed texts repeated for each image
                let n = x.shape()[0];
                let x2 = ops::concatenate(&[x, x], 0)?;
                let [mi, mt, mo] = self.modulation.step(i, 2 * n)?;
                let texts = repeat_rows(&self.texts, n)?;
                let y = $m::transformer(
                    self.w, &x2, &texts, &mi, &mt, &mo, ic, is, tc0, tc1, ts0, ts1,
                )?;
                let (cond, uncond) = halves(&y, n)?;
                Ok((cond, self.guided.then_some(uncond)))
            }
        }
    };
}

crate::specializations::for_each_resolution!(variants);
