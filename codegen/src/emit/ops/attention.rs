//! Lowerings of attention: `fast::scaled_dot_product_attention` (no mask, causal, key
//! padding; without a mask, in query row blocks where the head size has no fused kernel:
//! `qwen_runtime::attention`) and the two RoPE layouts. RoPE tables must be folded to constants by the
//! `rope_fold` pass first.

use graph_dsl::{MaskKind, Op, RopeLayout};
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_f32, lit_i32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Sdpa { scale, mask } => {
            let (q, kk, v) = (n.a(0), n.a(1), n.a(2));
            let s = lit_f32(*scale);
            let o = out(cx, k, 0, name);
            // MLX has fused attention kernels for head sizes up to 256; above (the VAE's
            // single 384-channel head) it makes the whole score matrix, which past 2³¹
            // entries (the VAE at 2048²) it cannot index: the queries go in row blocks
            let head = n.ishape(0).0.get(3).and_then(|d| d.as_const());
            let unfused = head.is_some_and(|d| d > 256);
            match mask {
                MaskKind::None if unfused => quote! {
                    let #o = __attention::sdpa_in_query_chunks(#q, #kk, #v, #s, __attention::MAX_SCORES)?;
                },
                MaskKind::None => quote! {
                    let #o = fast::scaled_dot_product_attention(#q, #kk, #v, #s, None::<fast::ScaledDotProductAttentionMask>, None)?;
                },
                MaskKind::Causal => quote! {
                    let #o = fast::scaled_dot_product_attention(#q, #kk, #v, #s, fast::ScaledDotProductAttentionMask::Causal, None)?;
                },
                MaskKind::Additive => {
                    let m = n.a(3);
                    // in the scores' dtype (MLX takes no wider additive mask)
                    quote! {
                        let #o = {
                            let m = (#m).as_dtype((#q).dtype())?;
                            fast::scaled_dot_product_attention(#q, #kk, #v, #s, &m, None)?
                        };
                    }
                }
                MaskKind::KeyPadding => {
                    let m = n.a(3);
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
            let (x, c, s) = (n.a(0), n.a(1), n.a(2));
            let xs = n.ishape(0);
            let (b, l, h) = (cx.dim(&xs.0[0])?, cx.dim(&xs.0[1])?, cx.dim(&xs.0[2])?);
            let d = xs.0[3]
                .as_const()
                .ok_or_else(|| cx.unsupported(k, "head dim must be constant"))?;
            let (half, full) = (lit_i32(d / 2), lit_i32(d));
            let o = out(cx, k, 0, name);
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
        Op::RopeTables(_) => return Err(cx.unsupported(k, "run the `rope_fold` pass first")),
        op => unreachable!("{} is not attention", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim, MaskKind, RopeLayout};
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

    /// A head size without MLX's fused kernels (the VAE's 384) runs in query row blocks.
    #[test]
    fn unfused_head_sizes_attend_in_query_chunks() {
        let code = render(|b| {
            let i = x(
                b,
                &[Dim::Const(1), Dim::Const(1), Dim::sym("L"), Dim::Const(384)],
            );
            b.sdpa(i, i, i, 0.05, MaskKind::None, None).unwrap()
        });
        let call: String = code.split_whitespace().collect();
        assert!(
            call.contains(
                "__attention::sdpa_in_query_chunks(x,x,x,0.05f32,__attention::MAX_SCORES,)?"
            ),
            "{code}"
        );
        let code = render(|b| {
            let i = x(
                b,
                &[Dim::Const(1), Dim::Const(1), Dim::sym("L"), Dim::Const(256)],
            );
            b.sdpa(i, i, i, 0.05, MaskKind::None, None).unwrap()
        });
        assert!(!code.contains("sdpa_in_query_chunks"), "{code}");
    }

    /// An additive mask goes to MLX's attention in the scores' dtype.
    #[test]
    fn additive_masks_pass_through() {
        let code = render(|b| {
            let i = x(
                b,
                &[Dim::Const(1), Dim::Const(2), Dim::sym("L"), Dim::Const(8)],
            );
            let m = b
                .input("m", [Dim::sym("L"), Dim::sym("L")], DType::F32)
                .unwrap();
            b.sdpa(i, i, i, 0.25, MaskKind::Additive, Some(m)).unwrap()
        });
        let call: String = code.split_whitespace().collect();
        assert!(
            call.contains("(m).as_dtype((x).dtype())?;fast::scaled_dot_product_attention(x,x,x,0.25f32,&m,None)?"),
            "{code}"
        );
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
}
