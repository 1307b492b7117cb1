//! Lowerings of the norms over the last axis: `fast::rms_norm`, `fast::layer_norm` and the
//! VAE's channel L2 norm.

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_f32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::RmsNorm { eps, affine } => {
            let x = n.a(0);
            let e = lit_f32(*eps);
            let w = if *affine {
                let w = n.a(1);
                quote!(Some(#w))
            } else {
                quote!(None)
            };
            let o = out(cx, k, 0, name);
            quote!(let #o = fast::rms_norm(#x, #w, #e)?;)
        }
        Op::LayerNorm { eps } => {
            let x = n.a(0);
            let e = lit_f32(*eps);
            let o = out(cx, k, 0, name);
            quote!(let #o = fast::layer_norm(#x, None, None, #e)?;)
        }
        Op::ChannelL2Norm { eps } => {
            let (x, g) = (n.a(0), n.a(1));
            let e = lit_f32(*eps);
            let c = n
                .ishape(0)
                .last()
                .and_then(|d| d.as_const())
                .ok_or_else(|| cx.unsupported(k, "channels must be constant"))?;
            let sc = lit_f32((c as f64).sqrt());
            let o = out(cx, k, 0, name);
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
        op => unreachable!("{} is not a norm", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::Dim;
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

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
}
