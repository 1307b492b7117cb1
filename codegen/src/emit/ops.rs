//! One lowering per op family: a node becomes `let` statements of mlx-rs calls with
//! literal shapes. Each family has inline snapshots at the bottom of this file.

use graph_dsl::{Binary, DType, MaskKind, Op, Reduce, RopeLayout, Unary, Value};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::quote;

use super::{fn_name, lit_f32, lit_i32, FnCx, Val};
use crate::error::Result;
use crate::names::{ident, snake};

fn out(cx: &mut FnCx, k: usize, i: usize, name: &str) -> Ident {
    let id = cx.names.fresh(name);
    cx.vals
        .insert(Value { node: k, out: i }, Val::Local(id.clone()));
    id
}

fn mlx_dtype(d: DType) -> TokenStream {
    match d {
        DType::F32 => quote!(Dtype::Float32),
        DType::F16 => quote!(Dtype::Float16),
        DType::BF16 => quote!(Dtype::Bfloat16),
        DType::I32 => quote!(Dtype::Int32),
        DType::U32 => quote!(Dtype::Uint32),
        DType::Bool => quote!(Dtype::Bool),
    }
}

/// Tokens for `&Array` of input `i` of node `k`; a scalar becomes an array of the other
/// operand's dtype (`like`).
fn arg(cx: &FnCx, k: usize, i: usize, like: Option<usize>) -> Result<TokenStream> {
    let v = cx.g.nodes[k].inputs[i];
    match (cx.scalar(v), like) {
        (Some(s), Some(j)) => {
            let s = lit_f32(s);
            let other = cx.r(cx.g.nodes[k].inputs[j])?;
            Ok(quote!(&__scalar(#s, #other)?))
        }
        _ => cx.r(v),
    }
}

/// Emit node `k`.
pub(crate) fn emit(cx: &mut FnCx, k: usize) -> Result<TokenStream> {
    let g = cx.g;
    let node = &g.nodes[k];
    let name = node.name.clone();
    let ins: Vec<Value> = node.inputs.clone();
    let ishape = |i: usize| g.ty(ins[i]).shape.clone();
    let args = ins.iter().map(|v| cx.r(*v)).collect::<Result<Vec<_>>>()?;
    let a = |i: usize| -> Result<TokenStream> { Ok(args[i].clone()) };
    let op = node.op.clone();
    let ts = match &op {
        Op::Input(_) | Op::Weight(_) | Op::Scalar(_) => quote!(),
        Op::ConstTensor { shape, data } => {
            let local = snake(&name).to_uppercase();
            let tid = if local.starts_with(&cx.table_prefix) {
                ident(&local)
            } else {
                ident(&format!("{}_{}", cx.table_prefix, local))
            };
            let bytes: Vec<u8> = data.iter().flat_map(|f| f.to_le_bytes()).collect();
            cx.tables.push((tid.clone(), bytes));
            let s = shape.iter().map(|&d| lit_i32(d));
            let o = out(cx, k, 0, &name);
            quote!(let #o = Array::from_slice(&__f32s(#tid), &[#(#s),*]);)
        }
        Op::Arange { start, len } => {
            let s = cx.dim(start)?;
            let e = cx.dim(&start.add(len))?;
            let o = out(cx, k, 0, &name);
            quote!(let #o = Array::arange::<f32, f32>(#s as f32, #e as f32, None)?;)
        }
        Op::Linear { bias } => {
            let (x, w) = (a(0)?, a(1)?);
            let o = out(cx, k, 0, &name);
            if *bias {
                let b = a(2)?;
                quote!(let #o = ops::add(&ops::matmul(#x, &ops::transpose_axes(#w, &[1, 0])?)?, #b)?;)
            } else {
                quote!(let #o = ops::matmul(#x, &ops::transpose_axes(#w, &[1, 0])?)?;)
            }
        }
        Op::MatMul => {
            let (x, y) = (a(0)?, a(1)?);
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::matmul(#x, #y)?;)
        }
        Op::Embedding => {
            let (t, ids) = (a(0)?, a(1)?);
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::indexing::take_axis(#t, #ids, 0)?;)
        }
        Op::RmsNorm { eps, affine } => {
            let x = a(0)?;
            let e = lit_f32(*eps);
            let w = if *affine {
                let w = a(1)?;
                quote!(Some(#w))
            } else {
                quote!(None)
            };
            let o = out(cx, k, 0, &name);
            quote!(let #o = fast::rms_norm(#x, #w, #e)?;)
        }
        Op::LayerNorm { eps } => {
            let x = a(0)?;
            let e = lit_f32(*eps);
            let o = out(cx, k, 0, &name);
            quote!(let #o = fast::layer_norm(#x, None, None, #e)?;)
        }
        Op::ChannelL2Norm { eps } => {
            let (x, g) = (a(0)?, a(1)?);
            let e = lit_f32(*eps);
            let c = ishape(0)
                .last()
                .and_then(|d| d.as_const())
                .ok_or_else(|| cx.unsupported(k, "channels must be constant"))?;
            let sc = lit_f32((c as f64).sqrt());
            let o = out(cx, k, 0, &name);
            quote! {
                let #o = {
                    // in f32 whatever the input dtype (as diffusers does for bf16/f16)
                    let xf = (#x).as_dtype(Dtype::Float32)?;
                    let n = ops::sqrt(&ops::sum_axis(&ops::square(&xf)?, -1, true)?)?;
                    let n = ops::maximum(&n, &__scalar(#e, &n)?)?;
                    let g = ops::multiply(#g, &__scalar(#sc, #g)?)?;
                    ops::multiply(&ops::divide(&xf, &n)?, &g)?.as_dtype((#x).dtype())?
                };
            }
        }
        Op::Sdpa { scale, mask } => {
            let (q, kk, v) = (a(0)?, a(1)?, a(2)?);
            let s = lit_f32(*scale);
            let o = out(cx, k, 0, &name);
            match mask {
                MaskKind::None => quote! {
                    let #o = fast::scaled_dot_product_attention(#q, #kk, #v, #s, None::<fast::ScaledDotProductAttentionMask>, None)?;
                },
                MaskKind::Causal => quote! {
                    let #o = fast::scaled_dot_product_attention(#q, #kk, #v, #s, fast::ScaledDotProductAttentionMask::Causal, None)?;
                },
                MaskKind::KeyPadding => {
                    let m = a(3)?;
                    quote! {
                        let #o = {
                            let m = ops::expand_dims_axes(#m, &[1, 2])?; // [B, 1, 1, Lk]
                            fast::scaled_dot_product_attention(#q, #kk, #v, #s, &m, None)?
                        };
                    }
                }
            }
        }
        Op::Rope { layout } => {
            let (x, c, s) = (a(0)?, a(1)?, a(2)?);
            let xs = ishape(0);
            let (b, l, h) = (cx.dim(&xs.0[0])?, cx.dim(&xs.0[1])?, cx.dim(&xs.0[2])?);
            let d = xs.0[3]
                .as_const()
                .ok_or_else(|| cx.unsupported(k, "head dim must be constant"))?;
            let (half, full) = (lit_i32(d / 2), lit_i32(d));
            let o = out(cx, k, 0, &name);
            match layout {
                RopeLayout::Interleaved => quote! {
                    let #o = {
                        // pairs (x[2k], x[2k+1]) times (cos_k + i·sin_k)
                        let xr = ops::reshape(#x, &[#b, #l, #h, #half, 2])?;
                        let p = ops::split_at_indices(&xr, &[1], -1)?;
                        let c = ops::reshape(#c, &[#l, 1, #half, 1])?;
                        let s = ops::reshape(#s, &[#l, 1, #half, 1])?;
                        let re = ops::subtract(&ops::multiply(&p[0], &c)?, &ops::multiply(&p[1], &s)?)?;
                        let im = ops::add(&ops::multiply(&p[0], &s)?, &ops::multiply(&p[1], &c)?)?;
                        let r = ops::concatenate(&[re, im], -1)?;
                        ops::reshape(&r, &[#b, #l, #h, #full])?.as_dtype((#x).dtype())?
                    };
                },
                RopeLayout::RotateHalf => quote! {
                    let #o = {
                        // x[k] pairs with x[k + d/2]
                        let p = ops::split_at_indices(#x, &[#half], -1)?;
                        let c = ops::reshape(#c, &[#l, 1, #half])?;
                        let s = ops::reshape(#s, &[#l, 1, #half])?;
                        let lo = ops::subtract(&ops::multiply(&p[0], &c)?, &ops::multiply(&p[1], &s)?)?;
                        let hi = ops::add(&ops::multiply(&p[1], &c)?, &ops::multiply(&p[0], &s)?)?;
                        ops::concatenate(&[lo, hi], -1)?.as_dtype((#x).dtype())?
                    };
                },
            }
        }
        Op::Unary(u) => {
            let x = a(0)?;
            let call = match u {
                Unary::Neg => quote!(ops::negative(#x)?),
                Unary::Exp => quote!(ops::exp(#x)?),
                Unary::Sqrt => quote!(ops::sqrt(#x)?),
                Unary::Rsqrt => quote!(ops::rsqrt(#x)?),
                Unary::Square => quote!(ops::square(#x)?),
                Unary::Sin => quote!(ops::sin(#x)?),
                Unary::Cos => quote!(ops::cos(#x)?),
                Unary::Tanh => quote!(ops::tanh(#x)?),
                Unary::Sigmoid => quote!(ops::sigmoid(#x)?),
                Unary::Silu => quote!(__silu(#x)?),
                Unary::GeluTanh => quote!(__gelu_tanh(#x)?),
            };
            let o = out(cx, k, 0, &name);
            quote!(let #o = #call;)
        }
        Op::Binary(bop) => {
            let x = arg(cx, k, 0, Some(1))?;
            let y = arg(cx, k, 1, Some(0))?;
            let f = match bop {
                Binary::Add => quote!(ops::add),
                Binary::Sub => quote!(ops::subtract),
                Binary::Mul => quote!(ops::multiply),
                Binary::Div => quote!(ops::divide),
                Binary::Max => quote!(ops::maximum),
                Binary::Min => quote!(ops::minimum),
            };
            let o = out(cx, k, 0, &name);
            quote!(let #o = #f(#x, #y)?;)
        }
        Op::Softmax { axis } => {
            let x = a(0)?;
            let ax = Literal::i32_unsuffixed(*axis as i32);
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::softmax_axis(#x, #ax, true)?;)
        }
        Op::Reduce {
            kind,
            axis,
            keep_dims,
        } => {
            let x = a(0)?;
            let ax = Literal::i32_unsuffixed(*axis as i32);
            let f = match kind {
                Reduce::Sum => quote!(ops::sum_axis),
                Reduce::Mean => quote!(ops::mean_axis),
                Reduce::Max => quote!(ops::max_axis),
            };
            let o = out(cx, k, 0, &name);
            quote!(let #o = #f(#x, #ax, #keep_dims)?;)
        }
        Op::Cast(d) => {
            let x = a(0)?;
            let d = mlx_dtype(*d);
            let o = out(cx, k, 0, &name);
            quote!(let #o = (#x).as_dtype(#d)?;)
        }
        Op::CastLike => {
            let (x, like) = (a(0)?, a(1)?);
            let o = out(cx, k, 0, &name);
            quote!(let #o = (#x).as_dtype((#like).dtype())?;)
        }
        Op::Clamp { min, max } => {
            let x = a(0)?;
            let (lo, hi) = (lit_f32(*min), lit_f32(*max));
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::minimum(&ops::maximum(#x, &__scalar(#lo, #x)?)?, &__scalar(#hi, #x)?)?;)
        }
        Op::Conv2d {
            stride,
            padding,
            bias,
        } => {
            let (x, w) = (a(0)?, a(1)?);
            let (s0, s1) = (lit_i32(stride[0]), lit_i32(stride[1]));
            let symmetric = padding[0].0 == padding[0].1 && padding[1].0 == padding[1].1;
            let o = out(cx, k, 0, &name);
            let conv = if symmetric {
                let (p0, p1) = (lit_i32(padding[0].0), lit_i32(padding[1].0));
                quote!(ops::conv2d(#x, #w, (#s0, #s1), (#p0, #p1), None, None)?)
            } else {
                let [(t, bo), (l, r)] = padding.map(|(p, q)| (lit_i32(p), lit_i32(q)));
                quote! {{
                    let xp = ops::pad(#x, &[(0, 0), (#t, #bo), (#l, #r), (0, 0)], None, None)?;
                    ops::conv2d(&xp, #w, (#s0, #s1), (0, 0), None, None)?
                }}
            };
            if *bias {
                let b = a(2)?;
                quote!(let #o = ops::add(&#conv, #b)?;)
            } else {
                quote!(let #o = #conv;)
            }
        }
        Op::Upsample2x => {
            let x = a(0)?;
            let s = ishape(0);
            let (b, h, w, c) = (
                cx.dim(&s.0[0])?,
                cx.dim(&s.0[1])?,
                cx.dim(&s.0[2])?,
                cx.dim(&s.0[3])?,
            );
            let (h2, w2) = (cx.dim(&s.0[1].mul(2))?, cx.dim(&s.0[2].mul(2))?);
            let o = out(cx, k, 0, &name);
            quote! {
                let #o = {
                    let t = ops::reshape(#x, &[#b, #h, 1, #w, 1, #c])?;
                    let t = ops::broadcast_to(&t, &[#b, #h, 2, #w, 2, #c])?;
                    ops::reshape(&t, &[#b, #h2, #w2, #c])?
                };
            }
        }
        Op::Reshape(dims) => {
            let x = a(0)?;
            let d = cx.dims_slice(dims)?;
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::reshape(#x, #d)?;)
        }
        Op::Transpose(p) => {
            let x = a(0)?;
            let p = p.iter().map(|&i| lit_i32(i));
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::transpose_axes(#x, &[#(#p),*])?;)
        }
        Op::BroadcastTo(dims) => {
            let x = a(0)?;
            let d = cx.dims_slice(dims)?;
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::broadcast_to(#x, #d)?;)
        }
        Op::Concat { axis } => {
            let xs = (0..ins.len()).map(a).collect::<Result<Vec<_>>>()?;
            let ax = lit_i32(*axis);
            let o = out(cx, k, 0, &name);
            quote!(let #o = ops::concatenate(&[#(#xs),*], #ax)?;)
        }
        Op::Slice { axis, start, end } => {
            let x = a(0)?;
            let (s, e) = (cx.dim(start)?, cx.dim(end)?);
            let ax = lit_i32(*axis);
            let o = out(cx, k, 0, &name);
            quote!(let #o = __slice(#x, #ax, #s, #e)?;)
        }
        Op::Call { block, prefix } => {
            let f = fn_name(block);
            let field = ident(&snake(prefix));
            let xs = (0..ins.len()).map(a).collect::<Result<Vec<_>>>()?;
            let n = node.outputs.len();
            let outs: Vec<Ident> = (0..n)
                .map(|i| out(cx, k, i, &format!("{name}_{i}")))
                .collect();
            if n == 1 {
                let o = &outs[0];
                quote!(let #o = #f(&w.#field, #(#xs),*)?;)
            } else {
                quote!(let (#(#outs),*) = #f(&w.#field, #(#xs),*)?;)
            }
        }
        Op::Repeat {
            block,
            prefix,
            carry,
            ..
        } => {
            let f = fn_name(block);
            let field = ident(&snake(prefix));
            let carry = *carry;
            let n = node.outputs.len();
            let xs = (0..ins.len()).map(a).collect::<Result<Vec<_>>>()?;
            let state: Vec<Ident> = (0..carry)
                .map(|i| cx.names.fresh(&format!("{name}_state{i}")))
                .collect();
            let next: Vec<Ident> = (0..n)
                .map(|i| cx.names.fresh(&format!("{name}_next{i}")))
                .collect();
            let init = xs[..carry]
                .iter()
                .zip(&state)
                .map(|(x, s)| quote!(let mut #s = (#x).clone();));
            let args = state
                .iter()
                .map(|s| quote!(&#s))
                .chain(xs[carry..].iter().cloned());
            let assign = state.iter().zip(&next).map(|(s, nx)| quote!(#s = #nx;));
            let outs: Vec<Ident> = (0..n)
                .map(|i| out(cx, k, i, &format!("{name}_{i}")))
                .collect();
            let finals = outs.iter().zip(&state).map(|(o, s)| quote!(let #o = #s;));
            let pattern = if n == 1 {
                quote!(#(#next)*)
            } else {
                quote!((#(#next),*))
            };
            quote! {
                #(#init)*
                for layer in &w.#field {
                    let #pattern = #f(layer, #(#args),*)?;
                    #(#assign)*
                }
                #(#finals)*
            }
        }
        Op::CausalConv3d { .. } => {
            return Err(cx.unsupported(k, "run the `layout` pass (single frame) first"))
        }
        Op::RopeTables(_) => return Err(cx.unsupported(k, "run the `rope_fold` pass first")),
    };
    Ok(ts)
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim, GraphBuilder, MaskKind, RopeLayout, Tensor};
    use insta::assert_snapshot;

    use crate::emit::emit_fn;
    use crate::format;

    /// Render the forward function of a one-output graph built by `f`.
    fn render(f: impl FnOnce(&mut GraphBuilder) -> Tensor) -> String {
        let mut b = GraphBuilder::new("t");
        let y = f(&mut b);
        b.output("y", y).unwrap();
        let g = b.finish();
        let mut tables = vec![];
        format(emit_fn(&g, &mut tables).unwrap()).unwrap()
    }

    fn x(b: &mut GraphBuilder, dims: &[Dim]) -> Tensor {
        b.input("x", dims.to_vec(), DType::F32).unwrap()
    }

    #[test]
    fn linear_family() {
        let code = render(|b| {
            let i = x(b, &[Dim::sym("B"), Dim::Const(4), Dim::Const(8)]);
            let h = b.linear("net.0.proj", i, 8, 16, true).unwrap();
            b.linear("net.2", h, 16, 8, false).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [B, 4, 8]:f32
        /// - out `y`: [B, 4, 8]:f32
        pub fn t(w: &TWeights, x: &Array) -> Result<Array, Exception> {
            let dim_b = x.shape()[0];
            let net_0_proj = ops::add(
                &ops::matmul(x, &ops::transpose_axes(&w.net_0_proj_weight, &[1, 0])?)?,
                &w.net_0_proj_bias,
            )?;
            let net_2 = ops::matmul(
                &net_0_proj,
                &ops::transpose_axes(&w.net_2_weight, &[1, 0])?,
            )?;
            Ok(net_2)
        }
        ");
    }

    #[test]
    fn embedding_and_matmul() {
        let code = render(|b| {
            let ids = b
                .input("ids", [Dim::sym("B"), Dim::sym("S")], DType::I32)
                .unwrap();
            let e = b.embedding("embed_tokens", ids, 100, 8).unwrap();
            let t = b.transpose(e, &[0, 2, 1]).unwrap();
            b.matmul(e, t).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `ids`: [B, S]:i32
        /// - out `y`: [B, S, S]:bf16
        pub fn t(w: &TWeights, ids: &Array) -> Result<Array, Exception> {
            let dim_b = ids.shape()[0];
            let dim_s = ids.shape()[1];
            let embed_tokens = ops::indexing::take_axis(&w.embed_tokens_weight, ids, 0)?;
            let transpose = ops::transpose_axes(&embed_tokens, &[0, 2, 1])?;
            let matmul = ops::matmul(&embed_tokens, &transpose)?;
            Ok(matmul)
        }
        ");
    }

    #[test]
    fn norm_family() {
        let code = render(|b| {
            let i = x(
                b,
                &[Dim::sym("B"), Dim::sym("L"), Dim::Const(2), Dim::Const(8)],
            );
            let n = b.layer_norm(i, 1e-6).unwrap();
            let q = b.rms_norm("norm_q", n, 8, 1e-6).unwrap();
            b.channel_l2_norm("norm1", q, &[8, 1, 1, 1]).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [B, L, 2, 8]:f32
        /// - out `y`: [B, L, 2, 8]:f32
        pub fn t(w: &TWeights, x: &Array) -> Result<Array, Exception> {
            let dim_b = x.shape()[0];
            let dim_l = x.shape()[1];
            let layer_norm = fast::layer_norm(x, None, None, 0.000001f32)?;
            let norm_q = fast::rms_norm(&layer_norm, Some(&w.norm_q_weight), 0.000001f32)?;
            let norm1 = {
                let xf = (&norm_q).as_dtype(Dtype::Float32)?;
                let n = ops::sqrt(&ops::sum_axis(&ops::square(&xf)?, -1, true)?)?;
                let n = ops::maximum(&n, &__scalar(0.000000000001f32, &n)?)?;
                let g = ops::multiply(&w.norm1_gamma, &__scalar(2.828427f32, &w.norm1_gamma)?)?;
                ops::multiply(&ops::divide(&xf, &n)?, &g)?.as_dtype((&norm_q).dtype())?
            };
            Ok(norm1)
        }
        ");
    }

    #[test]
    fn attention_family() {
        let code = render(|b| {
            let s = [Dim::Const(2), Dim::sym("L"), Dim::Const(2), Dim::Const(8)];
            let i = x(b, &s);
            let c = b
                .input("cos", [Dim::sym("L"), Dim::Const(4)], DType::F32)
                .unwrap();
            let r = b.rope(i, c, c, RopeLayout::Interleaved).unwrap();
            let h = b.rope(r, c, c, RopeLayout::RotateHalf).unwrap();
            let t = b.transpose(h, &[0, 2, 1, 3]).unwrap();
            let o = b.sdpa(t, t, t, 0.125, MaskKind::None, None).unwrap();
            b.sdpa(o, t, t, 0.125, MaskKind::Causal, None).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [2, L, 2, 8]:f32
        /// - in `cos`: [L, 4]:f32
        /// - out `y`: [2, 2, L, 8]:f32
        pub fn t(x: &Array, cos: &Array) -> Result<Array, Exception> {
            let dim_l = x.shape()[1];
            let rope = {
                let xr = ops::reshape(x, &[2, dim_l, 2, 4, 2])?;
                let p = ops::split_at_indices(&xr, &[1], -1)?;
                let c = ops::reshape(cos, &[dim_l, 1, 4, 1])?;
                let s = ops::reshape(cos, &[dim_l, 1, 4, 1])?;
                let re = ops::subtract(&ops::multiply(&p[0], &c)?, &ops::multiply(&p[1], &s)?)?;
                let im = ops::add(&ops::multiply(&p[0], &s)?, &ops::multiply(&p[1], &c)?)?;
                let r = ops::concatenate(&[re, im], -1)?;
                ops::reshape(&r, &[2, dim_l, 2, 8])?.as_dtype((x).dtype())?
            };
            let rope_1 = {
                let p = ops::split_at_indices(&rope, &[4], -1)?;
                let c = ops::reshape(cos, &[dim_l, 1, 4])?;
                let s = ops::reshape(cos, &[dim_l, 1, 4])?;
                let lo = ops::subtract(&ops::multiply(&p[0], &c)?, &ops::multiply(&p[1], &s)?)?;
                let hi = ops::add(&ops::multiply(&p[1], &c)?, &ops::multiply(&p[0], &s)?)?;
                ops::concatenate(&[lo, hi], -1)?.as_dtype((&rope).dtype())?
            };
            let transpose = ops::transpose_axes(&rope_1, &[0, 2, 1, 3])?;
            let sdpa = fast::scaled_dot_product_attention(
                &transpose,
                &transpose,
                &transpose,
                0.125f32,
                None::<fast::ScaledDotProductAttentionMask>,
                None,
            )?;
            let sdpa_1 = fast::scaled_dot_product_attention(
                &sdpa,
                &transpose,
                &transpose,
                0.125f32,
                fast::ScaledDotProductAttentionMask::Causal,
                None,
            )?;
            Ok(sdpa_1)
        }
        ");
    }

    #[test]
    fn elementwise_family() {
        let code = render(|b| {
            let i = x(b, &[Dim::sym("B"), Dim::Const(8)]);
            let s = b.silu(i).unwrap();
            let g = b.gelu_tanh(s).unwrap();
            let p = b.add_scalar(g, 1.0).unwrap();
            let m = b.mul(p, i).unwrap();
            let c = b.clamp(m, -1.0, 1.0).unwrap();
            let r = b.reduce(graph_dsl::Reduce::Sum, c, -1, true).unwrap();
            let d = b.div(c, r).unwrap();
            let sm = b.softmax(d, -1).unwrap();
            b.cast(sm, DType::BF16).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [B, 8]:f32
        /// - out `y`: [B, 8]:bf16
        pub fn t(x: &Array) -> Result<Array, Exception> {
            let dim_b = x.shape()[0];
            let silu = __silu(x)?;
            let gelu = __gelu_tanh(&silu)?;
            let add = ops::add(&gelu, &__scalar(1f32, &gelu)?)?;
            let mul = ops::multiply(&add, x)?;
            let clamp = ops::minimum(
                &ops::maximum(&mul, &__scalar(-1f32, &mul)?)?,
                &__scalar(1f32, &mul)?,
            )?;
            let reduce = ops::sum_axis(&clamp, -1, true)?;
            let div = ops::divide(&clamp, &reduce)?;
            let softmax = ops::softmax_axis(&div, -1, true)?;
            let cast = (&softmax).as_dtype(Dtype::Bfloat16)?;
            Ok(cast)
        }
        ");
    }

    #[test]
    fn conv_family() {
        let code = render(|b| {
            let i = x(
                b,
                &[Dim::sym("B"), Dim::Const(16), Dim::Const(16), Dim::Const(4)],
            );
            let c = b.conv2d("conv", i, 4, 8, 3, 1, [(1, 1); 2], true).unwrap();
            let d = b
                .conv2d("down", c, 8, 8, 3, 2, [(0, 1), (0, 1)], false)
                .unwrap();
            b.upsample2x(d).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [B, 16, 16, 4]:f32
        /// - out `y`: [B, 16, 16, 8]:f32
        pub fn t(w: &TWeights, x: &Array) -> Result<Array, Exception> {
            let dim_b = x.shape()[0];
            let conv = ops::add(
                &ops::conv2d(x, &w.conv_weight, (1, 1), (1, 1), None, None)?,
                &w.conv_bias,
            )?;
            let down = {
                let xp = ops::pad(&conv, &[(0, 0), (0, 1), (0, 1), (0, 0)], None, None)?;
                ops::conv2d(&xp, &w.down_weight, (2, 2), (0, 0), None, None)?
            };
            let upsample2x = {
                let t = ops::reshape(&down, &[dim_b, 8, 1, 8, 1, 8])?;
                let t = ops::broadcast_to(&t, &[dim_b, 8, 2, 8, 2, 8])?;
                ops::reshape(&t, &[dim_b, 16, 16, 8])?
            };
            Ok(upsample2x)
        }
        ");
    }

    #[test]
    fn shape_family() {
        let code = render(|b| {
            let t = x(b, &[Dim::sym("B"), Dim::sym("L_txt"), Dim::Const(8)]);
            let i = b
                .input(
                    "img",
                    [Dim::sym("B"), Dim::Const(6), Dim::Const(8)],
                    DType::F32,
                )
                .unwrap();
            let j = b.concat(&[t, i], 1).unwrap();
            let r = b
                .reshape(
                    j,
                    [
                        Dim::sym("B"),
                        Dim::sym("L_txt").add(&Dim::Const(6)),
                        Dim::Const(2),
                        Dim::Const(4),
                    ],
                )
                .unwrap();
            let parts = b.split(r, 1, &[Dim::sym("L_txt"), Dim::Const(6)]).unwrap();
            b.broadcast_to(
                parts[1],
                [Dim::sym("B"), Dim::Const(6), Dim::Const(2), Dim::Const(4)],
            )
            .unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [B, L_txt, 8]:f32
        /// - in `img`: [B, 6, 8]:f32
        /// - out `y`: [B, 6, 2, 4]:f32
        pub fn t(x: &Array, img: &Array) -> Result<Array, Exception> {
            let dim_b = x.shape()[0];
            let dim_l_txt = x.shape()[1];
            let concat = ops::concatenate(&[x, img], 1)?;
            let reshape = ops::reshape(&concat, &[dim_b, (dim_l_txt + 6), 2, 4])?;
            let slice = __slice(&reshape, 1, 0, dim_l_txt)?;
            let slice_1 = __slice(&reshape, 1, dim_l_txt, (dim_l_txt + 6))?;
            let broadcast_to = ops::broadcast_to(&slice_1, &[dim_b, 6, 2, 4])?;
            Ok(broadcast_to)
        }
        ");
    }
}
