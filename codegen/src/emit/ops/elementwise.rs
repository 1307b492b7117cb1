//! Lowerings of the elementwise ops, softmax, single-axis reductions, casts and clamp.

use graph_dsl::{Binary, Op, Reduce, Unary};
use proc_macro2::{Literal, TokenStream};
use quote::quote;

use super::{arg, mlx_dtype, out, NodeCx};
use crate::emit::{lit_f32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Unary(u) => {
            let x = n.a(0);
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
                // x·Φ(x) = x·(1 + erf(x/√2))/2
                // (scalars in x's dtype)
                Unary::Gelu => quote!({
                    let e = ops::erf(&ops::multiply(#x, &__scalar(std::f32::consts::FRAC_1_SQRT_2, #x)?)?)?;
                    let y = ops::multiply(#x, &ops::add(&e, &__scalar(1.0, #x)?)?)?;
                    ops::multiply(&y, &__scalar(0.5, #x)?)?
                }),
            };
            let o = out(cx, k, 0, name);
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
            let o = out(cx, k, 0, name);
            quote!(let #o = #f(#x, #y)?;)
        }
        Op::Softmax { axis } => {
            let x = n.a(0);
            let ax = Literal::i32_unsuffixed(*axis as i32);
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::softmax_axis(#x, #ax, true)?;)
        }
        Op::Reduce {
            kind,
            axis,
            keep_dims,
        } => {
            let x = n.a(0);
            let ax = Literal::i32_unsuffixed(*axis as i32);
            let f = match kind {
                Reduce::Sum => quote!(ops::sum_axis),
                Reduce::Mean => quote!(ops::mean_axis),
                Reduce::Max => quote!(ops::max_axis),
            };
            let o = out(cx, k, 0, name);
            quote!(let #o = #f(#x, #ax, #keep_dims)?;)
        }
        Op::Cast(d) => {
            let x = n.a(0);
            let d = mlx_dtype(*d);
            let o = out(cx, k, 0, name);
            quote!(let #o = (#x).as_dtype(#d)?;)
        }
        Op::CastLike => {
            let (x, like) = (n.a(0), n.a(1));
            let o = out(cx, k, 0, name);
            quote!(let #o = (#x).as_dtype((#like).dtype())?;)
        }
        Op::Clamp { min, max } => {
            let x = n.a(0);
            let (lo, hi) = (lit_f32(*min), lit_f32(*max));
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::minimum(&ops::maximum(#x, &__scalar(#lo, #x)?)?, &__scalar(#hi, #x)?)?;)
        }
        op => unreachable!("{} is not elementwise", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim};
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

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
}
