//! Lowerings of the linear algebra: linear layers, matmul, embedding lookup.

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{out, NodeCx};
use crate::emit::weights::{field_name, linear_weights};
use crate::emit::FnCx;
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Linear { bias } => {
            let (x, w) = (n.a(0), n.a(1));
            let o = out(cx, k, 0, name);
            let b = if *bias {
                let b = n.a(2);
                quote!(Some(#b))
            } else {
                quote!(None)
            };
            // a weight of this graph may be quantized at load (its `_q` field); one call:
            // `b + x @ w^T` through addmm (the transpose a view), or MLX's quantized matmul
            // (only the weights the struct gives a `_q` field: `linear_weights`)
            match &n.g.nodes[n.node.inputs[1].node].op {
                Op::Weight(i) if linear_weights(n.g).contains(i) => {
                    let fq = format_ident!("{}_q", field_name(&n.g.weights[*i].key));
                    quote!(let #o = ::qwen_runtime::quant::linear(#x, #w, w.#fq.as_ref(), #b)?;)
                }
                _ => quote!(let #o = ::qwen_runtime::quant::linear(#x, #w, None, #b)?;),
            }
        }
        Op::MatMul => {
            let (x, y) = (n.a(0), n.a(1));
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::matmul(#x, #y)?;)
        }
        Op::Embedding => {
            let (t, ids) = (n.a(0), n.a(1));
            let o = out(cx, k, 0, name);
            quote!(let #o = ops::indexing::take_axis(#t, #ids, 0)?;)
        }
        op => unreachable!("{} is not linear algebra", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim};
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

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
                let net_0_proj = ::qwen_runtime::quant::linear(
                    x,
                    &w.net_0_proj_weight,
                    w.net_0_proj_weight_q.as_ref(),
                    Some(&w.net_0_proj_bias),
                )?;
                let net_2 = ::qwen_runtime::quant::linear(
                    &net_0_proj,
                    &w.net_2_weight,
                    w.net_2_weight_q.as_ref(),
                    None,
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
}
