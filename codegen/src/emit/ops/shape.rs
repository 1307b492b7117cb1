//! Lowerings of the ops that only move data: reshape, transpose, broadcast, concat, slice.

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_i32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Reshape(dims) => {
            let x = n.a(0);
            let d = cx.dims_slice(dims)?;
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::reshape(#x, #d)?;)
        }
        Op::Transpose(p) => {
            let x = n.a(0);
            let p = p.iter().map(|&i| lit_i32(i));
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::transpose_axes(#x, &[#(#p),*])?;)
        }
        Op::BroadcastTo(dims) => {
            let x = n.a(0);
            let d = cx.dims_slice(dims)?;
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::broadcast_to(#x, #d)?;)
        }
        Op::Concat { axis } => {
            let xs = n.args.clone();
            let ax = lit_i32(*axis);
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::concatenate(&[#(#xs),*], #ax)?;)
        }
        Op::Slice { axis, start, end } => {
            let x = n.a(0);
            let (s, e) = (cx.dim(start)?, cx.dim(end)?);
            let ax = lit_i32(*axis);
            let o = out(cx, k, 0, name);
            quote!(let #o = __slice(#x, #ax, #s, #e)?;)
        }
        op => unreachable!("{} is not a shape op", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim};
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

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
