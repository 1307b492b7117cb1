//! The fused ops' helpers, emitted once per shared module: each runs its CUDA kernel
//! (`codegen/kernels/*.cu`, compiled by MLX on first use) where
//! `qwen_runtime::kernels::enabled()` and the operands fit the kernel, and the same math
//! as plain mlx-rs ops everywhere else (CPU, Metal; also the reference the kernels are
//! checked against on a GPU).

use std::collections::BTreeSet;

use graph_dsl::{Dim, Graph, Op, Unary};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

const HEADER: &str = include_str!("../../kernels/common.cuh");
const NORM_MODULATE: &str = include_str!("../../kernels/ln_modulate.cu");
const GATE_RESIDUAL: &str = include_str!("../../kernels/gate_residual.cu");
const GATE_RESIDUAL_NORM_MODULATE: &str =
    include_str!("../../kernels/gate_residual_ln_modulate.cu");
const GELU_TANH: &str = include_str!("../../kernels/gelu_tanh.cu");
const JOINT_QKV_HEADS: &str = include_str!("../../kernels/joint_qkv_heads.cu");

/// The helper names a resolution module imports from its shared module.
pub(crate) fn names() -> Vec<Ident> {
    [
        "__norm_modulate",
        "__gate_residual",
        "__gate_residual_norm_modulate",
        "__gelu_tanh",
        "__joint_qkv_heads",
        "__rope_interleaved",
    ]
    .iter()
    .map(|n| format_ident!("{n}"))
    .collect()
}

/// The distinct kernel instantiations a module's graphs use (op, and the sizes that are
/// template arguments: `D` of the row ops, heads and head size of the joint heads).
fn instantiations<'a>(graphs: impl Iterator<Item = &'a Graph>) -> BTreeSet<(u8, i32, i32)> {
    let mut set = BTreeSet::new();
    for g in graphs {
        for n in &g.nodes {
            let dim = |i: usize, axis: usize| match g.ty(n.inputs[i]).shape.0.get(axis) {
                Some(Dim::Const(d)) => Some(*d as i32),
                _ => None,
            };
            let key = match &n.op {
                Op::NormModulate { .. } => dim(0, 2).map(|d| (0, d, 0)),
                Op::GateResidual => dim(0, 2).map(|d| (1, d, 0)),
                Op::GateResidualNormModulate { .. } => dim(0, 2).map(|d| (2, d, 0)),
                Op::Unary(Unary::GeluTanh) => Some((3, 0, 0)),
                Op::JointQkvHeads { heads, .. } => {
                    dim(6, 2).map(|w| (4, *heads as i32, w / (3 * *heads as i32)))
                }
                _ => None,
            };
            set.extend(key);
        }
    }
    set
}

/// `warm_up_kernels(dtype)`: one tiny call of every kernel instantiation the module's graphs
/// use, so that MLX compiles them (NVRTC, ~1.5 s each on an H200, once per process) before
/// the first step needs them, e.g. while the weights are read; plain ops where the kernels
/// do not run.
pub(crate) fn warm_up<'a>(graphs: impl Iterator<Item = &'a Graph>) -> TokenStream {
    let calls = instantiations(graphs).into_iter().map(|(op, a, b)| {
        let (a, b) = (Literal::i32_unsuffixed(a), Literal::i32_unsuffixed(b));
        match op {
            0 => quote!(outs.push(__norm_modulate(&row(#a)?, &row(#a)?, &row(#a)?, 1e-6)?);),
            1 => quote!(outs.push(__gate_residual(&row(#a)?, &row(#a)?, &row(#a)?)?);),
            2 => quote! {
                let (h, o) = __gate_residual_norm_modulate(
                    &row(#a)?, &row(#a)?, &row(#a)?, &row(#a)?, &row(#a)?, 1e-6,
                )?;
                outs.extend([h, o]);
            },
            3 => quote!(outs.push(__gelu_tanh(&row(64)?)?);),
            _ => quote! {
                let stream = || -> Result<[Array; 6], Exception> {
                    let table = ops::zeros::<f32>(&[1, #b / 2])?;
                    Ok([
                        row(3 * #a * #b)?,
                        ops::zeros_dtype(&[3 * #a * #b], dtype)?,
                        ops::ones_dtype(&[#b], dtype)?,
                        ops::ones_dtype(&[#b], dtype)?,
                        table.clone(),
                        table,
                    ])
                };
                let (t, i) = (stream()?, stream()?);
                let (q, k, v) = __joint_qkv_heads(
                    [&t[0], &t[1], &t[2], &t[3], &t[4], &t[5]],
                    [&i[0], &i[1], &i[2], &i[3], &i[4], &i[5]],
                    #a,
                    1e-6,
                )?;
                outs.extend([q, k, v]);
            },
        }
    });
    quote! {
        /// Runs every fused kernel this module uses once on one row of `dtype`, so that
        /// their compilation (MLX's NVRTC, once per process) is done before the first step;
        /// plain ops (and nothing to compile) where the kernels do not run.
        pub fn warm_up_kernels(dtype: Dtype) -> Result<(), Exception> {
            let row = |d: i32| ops::zeros_dtype(&[1, 1, d], dtype);
            let mut outs: Vec<Array> = vec![];
            #(#calls)*
            mlx::transforms::eval(&outs)
        }
    }
}

/// The kernel statics and the helper functions.
pub(crate) fn helpers() -> TokenStream {
    quote! {
        const __KERNEL_HEADER: &str = #HEADER;
        static __K_NORM_MODULATE: __kernels::CudaKernel = __kernels::CudaKernel::new(
            "qa_norm_modulate", &["x", "shift", "scale"], &["out"], #NORM_MODULATE, __KERNEL_HEADER,
        );
        static __K_GATE_RESIDUAL: __kernels::CudaKernel = __kernels::CudaKernel::new(
            "qa_gate_residual", &["x", "y", "gate"], &["out"], #GATE_RESIDUAL, __KERNEL_HEADER,
        );
        static __K_GATE_RESIDUAL_NORM_MODULATE: __kernels::CudaKernel = __kernels::CudaKernel::new(
            "qa_gate_residual_norm_modulate",
            &["x", "y", "gate", "shift", "scale"],
            &["h", "out"],
            #GATE_RESIDUAL_NORM_MODULATE,
            __KERNEL_HEADER,
        );
        static __K_GELU_TANH: __kernels::CudaKernel = __kernels::CudaKernel::new(
            "qa_gelu_tanh", &["x"], &["out"], #GELU_TANH, __KERNEL_HEADER,
        );
        static __K_JOINT_QKV_HEADS: __kernels::CudaKernel = __kernels::CudaKernel::new(
            "qa_joint_qkv_heads",
            &[
                "t_qkv", "t_bias", "t_wq", "t_wk", "t_cos", "t_sin",
                "i_qkv", "i_bias", "i_wq", "i_wk", "i_cos", "i_sin",
            ],
            &["q", "k", "v"],
            #JOINT_QKV_HEADS,
            __KERNEL_HEADER,
        );

        /// Values per 16-byte pack of a kernel dtype (`None`: no kernel for it).
        fn __pack(d: Dtype) -> Option<i32> {
            match d {
                Dtype::Float32 => Some(4),
                Dtype::Bfloat16 | Dtype::Float16 => Some(8),
                _ => None,
            }
        }

        /// `[B, L, D]` operands of one dtype whose rows fit one block of whole packs, the
        /// modulations `mods` all one row per sample or all one per row: the threads per row.
        fn __row_threads(x: &Array, y: Option<&Array>, mods: &[&Array]) -> Option<i32> {
            let p = __pack(x.dtype())?;
            let d = *x.shape().get(2)?;
            let fits = x.ndim() == 3 && d % p == 0 && d / p <= 1024;
            let same = y.iter().chain(mods).all(|a| a.dtype() == x.dtype());
            let rows = mods.iter().all(|m| m.shape() == mods[0].shape());
            (fits && same && rows).then(|| (d / p + 31) / 32 * 32)
        }

        /// A norm's eps as a template argument (its f32 bits): a constant in the kernel; an
        /// input array made on the host would be read from host memory by every block.
        fn __eps(eps: f32) -> __kernels::TemplateArg {
            __kernels::TemplateArg::Int("EPS_BITS", eps.to_bits() as i32)
        }

        /// One block of `threads` per row of `x` `[B, L, D]`, for a kernel normalizing with `eps`.
        fn __row_launch(x: &Array, threads: i32, outputs: usize, eps: f32) -> __kernels::Launch {
            let s = x.shape();
            __kernels::Launch {
                outputs: vec![(s.to_vec(), x.dtype()); outputs],
                grid: [s[0] * s[1] * threads, 1, 1],
                block: [threads, 1, 1],
                template: vec![
                    __kernels::TemplateArg::Dtype("T", x.dtype()),
                    __kernels::TemplateArg::Int("D", s[2]),
                    __eps(eps),
                ],
            }
        }

        fn __flat_launch(x: &Array, packs: usize, template: Vec<__kernels::TemplateArg>) -> __kernels::Launch {
            __kernels::Launch {
                outputs: vec![(x.shape().to_vec(), x.dtype())],
                grid: [__kernels::round_up(packs, 256), 1, 1],
                block: [256, 1, 1],
                template,
            }
        }

        /// `LayerNorm(x)·(1 + scale) + shift` (no affine); x `[B, L, D]`, shift, scale
        /// `[B, 1, D]` (per sample) or `[B, L, D]` (per row).
        #[doc(hidden)]
        pub fn __norm_modulate(x: &Array, shift: &Array, scale: &Array, eps: f32) -> Result<Array, Exception> {
            if let (Some(k), Some(t)) = (__K_NORM_MODULATE.ready(), __row_threads(x, None, &[shift, scale])) {
                let mut o = k.apply(&[x, shift, scale], &__row_launch(x, t, 1, eps))?;
                return Ok(o.remove(0));
            }
            let y = fast::layer_norm(x, None, None, eps)?;
            ops::add(&ops::multiply(&y, &ops::add(scale, &__scalar(1.0, scale)?)?)?, shift)
        }

        /// `x + gate·y`; x, y `[B, L, D]`, gate `[B, 1, D]` or `[B, L, D]`.
        #[doc(hidden)]
        pub fn __gate_residual(x: &Array, y: &Array, gate: &Array) -> Result<Array, Exception> {
            if let (Some(k), Some(_)) = (__K_GATE_RESIDUAL.ready(), __row_threads(x, Some(y), &[gate])) {
                let p = __pack(x.dtype()).unwrap_or(1) as usize;
                let template = vec![
                    __kernels::TemplateArg::Dtype("T", x.dtype()),
                    __kernels::TemplateArg::Int("D", x.shape()[2]),
                ];
                let mut o = k.apply(&[x, y, gate], &__flat_launch(x, x.size() / p, template))?;
                return Ok(o.remove(0));
            }
            ops::add(x, &ops::multiply(gate, y)?)
        }

        /// `h = x + gate·y` and `LayerNorm(h)·(1 + scale) + shift`: `(h, modulated)`.
        #[doc(hidden)]
        pub fn __gate_residual_norm_modulate(
            x: &Array,
            y: &Array,
            gate: &Array,
            shift: &Array,
            scale: &Array,
            eps: f32,
        ) -> Result<(Array, Array), Exception> {
            let k = __K_GATE_RESIDUAL_NORM_MODULATE.ready();
            if let (Some(k), Some(t)) = (k, __row_threads(x, Some(y), &[gate, shift, scale])) {
                let mut o = k.apply(&[x, y, gate, shift, scale], &__row_launch(x, t, 2, eps))?;
                let out = o.remove(1);
                return Ok((o.remove(0), out));
            }
            let h = __gate_residual(x, y, gate)?;
            let out = __norm_modulate(&h, shift, scale, eps)?;
            Ok((h, out))
        }

        /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
        #[doc(hidden)]
        pub fn __gelu_tanh(x: &Array) -> Result<Array, Exception> {
            if let (Some(k), Some(p)) = (__K_GELU_TANH.ready(), __pack(x.dtype())) {
                let last = x.shape().last().copied().unwrap_or(0);
                if x.ndim() == 3 && last % p == 0 {
                    let template = vec![__kernels::TemplateArg::Dtype("T", x.dtype())];
                    // two packs per thread
                    let launch = __flat_launch(x, (x.size() / p as usize).div_ceil(2), template);
                    return Ok(k.apply(&[x], &launch)?.remove(0));
                }
            }
            let x3 = ops::multiply(&ops::square(x)?, x)?;
            let inner = ops::add(x, &ops::multiply(&x3, &__scalar(0.044715, x)?)?)?;
            let inner = ops::multiply(&inner, &__scalar(0.7978845608028654, x)?)?;
            let half = ops::multiply(x, &__scalar(0.5, x)?)?;
            ops::multiply(&half, &ops::add(&ops::tanh(&inner)?, &__scalar(1.0, x)?)?)
        }

        /// Interleaved RoPE of x `[B, L, H, Dh]`: pairs `(2j, 2j+1)` rotate by cos, sin
        /// `[L, Dh/2]` (computed in the tables' dtype, returned in x's).
        #[doc(hidden)]
        pub fn __rope_interleaved(x: &Array, cos: &Array, sin: &Array) -> Result<Array, Exception> {
            let s = x.shape().to_vec();
            let (l, half) = (s[1], s[3] / 2);
            let xr = ops::reshape(x, &[s[0], l, s[2], half, 2])?;
            let p = ops::split_at_indices(&xr, &[1], -1)?;
            let c = ops::reshape(cos, &[l, 1, half, 1])?;
            let sn = ops::reshape(sin, &[l, 1, half, 1])?;
            let re = ops::subtract(&ops::multiply(&p[0], &c)?, &ops::multiply(&p[1], &sn)?)?;
            let im = ops::add(&ops::multiply(&p[0], &sn)?, &ops::multiply(&p[1], &c)?)?;
            let r = ops::concatenate(&[re, im], -1)?;
            ops::reshape(&r, &s)?.as_dtype(x.dtype())
        }

        /// One stream of [`__joint_qkv_heads`] with plain ops: `[B, H, L, Dh]` q, k, v.
        fn __stream_heads(
            [qkv, bias, wq, wk, cos, sin]: [&Array; 6],
            heads: i32,
            eps: f32,
        ) -> Result<[Array; 3], Exception> {
            let s = qkv.shape().to_vec();
            let (b, l, dh) = (s[0], s[1], s[2] / (3 * heads));
            let parts = ops::add(qkv, bias)?.split_equal(3, -1)?;
            let head = |t: &Array| ops::reshape(t, &[b, l, heads, dh]);
            let q = __rope_interleaved(&fast::rms_norm(&head(&parts[0])?, Some(wq), eps)?, cos, sin)?;
            let k = __rope_interleaved(&fast::rms_norm(&head(&parts[1])?, Some(wk), eps)?, cos, sin)?;
            let v = head(&parts[2])?;
            let t = |a: &Array| ops::transpose_axes(a, &[0, 2, 1, 3]);
            Ok([t(&q)?, t(&k)?, t(&v)?])
        }

        /// Joint-attention heads `[B, H, L_txt + L_img, Dh]` (q, k, v) of a text and an image
        /// stream, each given as its QKV projection without bias `[B, L, 3·H·Dh]`, the bias,
        /// the q and k norm weights `[Dh]` and RoPE cos, sin `[L, Dh/2]`: q and k RMS-normed
        /// and rotated (interleaved pairs), text rows first.
        #[doc(hidden)]
        pub fn __joint_qkv_heads(
            txt: [&Array; 6],
            img: [&Array; 6],
            heads: i32,
            eps: f32,
        ) -> Result<(Array, Array, Array), Exception> {
            let (ts, is) = (txt[0].shape().to_vec(), img[0].shape().to_vec());
            let (b, dh) = (is[0], is[2] / (3 * heads));
            let tph = (dh / 2).min(32);
            let dtype = img[0].dtype();
            let kernel_fits = __pack(dtype).is_some()
                && tph > 0
                && 32 % tph == 0
                && dh % (2 * tph) == 0
                && txt[..4].iter().chain(&img[..4]).all(|a| a.dtype() == dtype)
                && txt[4..].iter().chain(&img[4..]).all(|a| a.dtype() == Dtype::Float32);
            if let (Some(k), true) = (__K_JOINT_QKV_HEADS.ready(), kernel_fits) {
                let l = ts[1] + is[1];
                let launch = __kernels::Launch {
                    outputs: vec![(vec![b, heads, l, dh], dtype); 3],
                    grid: [__kernels::round_up((b * l * heads * tph) as usize, 256), 1, 1],
                    block: [256, 1, 1],
                    template: vec![
                        __kernels::TemplateArg::Dtype("T", dtype),
                        __kernels::TemplateArg::Int("H", heads),
                        __kernels::TemplateArg::Int("DH", dh),
                        __eps(eps),
                    ],
                };
                let ins: Vec<&Array> = txt.iter().chain(img.iter()).copied().collect();
                let mut o = k.apply(&ins, &launch)?;
                let v = o.remove(2);
                let kk = o.remove(1);
                return Ok((o.remove(0), kk, v));
            }
            let [tq, tk, tv] = __stream_heads(txt, heads, eps)?;
            let [iq, ik, iv] = __stream_heads(img, heads, eps)?;
            let cat = |a: Array, b: Array| ops::concatenate(&[a, b], 2);
            Ok((cat(tq, iq)?, cat(tk, ik)?, cat(tv, iv)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim, GraphBuilder};

    use super::instantiations;

    /// Each kernel instantiation once, keyed by the sizes that are template arguments.
    #[test]
    fn warm_up_lists_each_kernel_instantiation_once() {
        let mut b = GraphBuilder::new("t");
        let row = |b: &mut GraphBuilder, n: &str, d: usize| {
            b.input(n, [Dim::sym("B"), Dim::sym("L"), Dim::Const(d)], DType::F32)
                .unwrap()
        };
        let (x, m) = (row(&mut b, "x", 8), row(&mut b, "m", 8));
        let y = b.norm_modulate(x, m, m, 1e-6).unwrap();
        let y = b.norm_modulate(y, m, m, 1e-6).unwrap();
        let y = b.gate_residual(y, x, m).unwrap();
        let w = row(&mut b, "w", 16);
        let w = b.gelu_tanh(w).unwrap();
        b.output("y", y).unwrap();
        b.output("w", w).unwrap();
        let g = b.finish();
        let set: Vec<_> = instantiations(std::iter::once(&g)).into_iter().collect();
        assert_eq!(set, [(0, 8, 0), (1, 8, 0), (3, 0, 0)]);
    }
}
