//! Lowerings of the convolutions (NHWC, weights OHWI) and 2× upsampling. A causal 3-D conv
//! must first be made a 2-D conv by the `layout` pass.

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_i32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Conv2d {
            stride,
            padding,
            bias,
        } => {
            let (x, w) = (n.a(0), n.a(1));
            let (s0, s1) = (lit_i32(stride[0]), lit_i32(stride[1]));
            let symmetric = padding[0].0 == padding[0].1 && padding[1].0 == padding[1].1;
            let o = out(cx, k, 0, name);
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
                let b = n.a(2);
                quote!(let #o = ops::add(&#conv, #b)?;)
            } else {
                quote!(let #o = #conv;)
            }
        }
        Op::Upsample2x => {
            let x = n.a(0);
            let s = n.ishape(0);
            let (b, h, w, c) = (
                cx.dim(&s.0[0])?,
                cx.dim(&s.0[1])?,
                cx.dim(&s.0[2])?,
                cx.dim(&s.0[3])?,
            );
            let (h2, w2) = (cx.dim(&s.0[1].mul(2))?, cx.dim(&s.0[2].mul(2))?);
            let o = out(cx, k, 0, name);
            quote! {
                let #o = {
                    let t = ops::reshape(#x, &[#b, #h, 1, #w, 1, #c])?;
                    let t = ops::broadcast_to(&t, &[#b, #h, 2, #w, 2, #c])?;
                    ops::reshape(&t, &[#b, #h2, #w2, #c])?
                };
            }
        }
        Op::CausalConv3d { .. } => {
            return Err(cx.unsupported(k, "run the `layout` pass (single frame) first"))
        }
        op => unreachable!("{} is not a convolution", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::Dim;
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

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
}
