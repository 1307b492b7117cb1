//! Lowerings of the fused ops: one call each to the shared module's helper, which runs a
//! CUDA kernel where it can and plain ops elsewhere (`emit/fused.rs`).

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_f32, lit_i32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::NormModulate { eps } => {
            let (x, shift, scale) = (n.a(0), n.a(1), n.a(2));
            let e = lit_f32(*eps);
            let o = out(cx, k, 0, name);
            quote!(let #o = __norm_modulate(#x, #shift, #scale, #e)?;)
        }
        Op::GateResidual => {
            let (x, y, gate) = (n.a(0), n.a(1), n.a(2));
            let o = out(cx, k, 0, name);
            quote!(let #o = __gate_residual(#x, #y, #gate)?;)
        }
        Op::GateResidualNormModulate { eps } => {
            let (x, y, gate, shift, scale) = (n.a(0), n.a(1), n.a(2), n.a(3), n.a(4));
            let e = lit_f32(*eps);
            let h = out(cx, k, 0, &format!("{name}_sum"));
            let o = out(cx, k, 1, name);
            quote!(let (#h, #o) = __gate_residual_norm_modulate(#x, #y, #gate, #shift, #scale, #e)?;)
        }
        Op::JointQkvHeads { heads, eps } => {
            let (h, e) = (lit_i32(*heads), lit_f32(*eps));
            let (t, i) = ((0..6).map(|j| n.a(j)), (6..12).map(|j| n.a(j)));
            let q = out(cx, k, 0, &format!("{name}_q"));
            let kk = out(cx, k, 1, &format!("{name}_k"));
            let v = out(cx, k, 2, &format!("{name}_v"));
            quote!(let (#q, #kk, #v) = __joint_qkv_heads([#(#t),*], [#(#i),*], #h, #e)?;)
        }
        op => unreachable!("{} is not a fused op", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim, QkvStream};
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

    #[test]
    fn fused_family() {
        let code = render(|b| {
            let (bb, l) = (Dim::sym("B"), Dim::sym("L"));
            let i = x(b, &[bb.clone(), l.clone(), Dim::Const(8)]);
            let row = [bb, Dim::Const(1), Dim::Const(8)];
            let shift = b.input("shift", row.clone(), DType::F32).unwrap();
            let scale = b.input("scale", row.clone(), DType::F32).unwrap();
            let gate = b.input("gate", row, DType::F32).unwrap();
            let m = b.norm_modulate(i, shift, scale, 1e-6).unwrap();
            let (h, m) = b
                .gate_residual_norm_modulate(i, m, gate, [shift, scale], 1e-6)
                .unwrap();
            b.gate_residual(h, m, gate).unwrap()
        });
        assert_snapshot!(code, @r"
            /// Forward of `t`.
            ///
            /// - in `x`: [B, L, 8]:f32
            /// - in `shift`: [B, 1, 8]:f32
            /// - in `scale`: [B, 1, 8]:f32
            /// - in `gate`: [B, 1, 8]:f32
            /// - out `y`: [B, L, 8]:f32
            pub fn t(
                x: &Array,
                shift: &Array,
                scale: &Array,
                gate: &Array,
            ) -> Result<Array, Exception> {
                let dim_b = x.shape()[0];
                let dim_l = x.shape()[1];
                let norm_modulate = __norm_modulate(x, shift, scale, 0.000001f32)?;
                let (gate_residual_norm_modulate_sum, gate_residual_norm_modulate) = __gate_residual_norm_modulate(
                    x,
                    &norm_modulate,
                    gate,
                    shift,
                    scale,
                    0.000001f32,
                )?;
                let gate_residual = __gate_residual(
                    &gate_residual_norm_modulate_sum,
                    &gate_residual_norm_modulate,
                    gate,
                )?;
                Ok(gate_residual)
            }
            ");
    }

    #[test]
    fn joint_qkv_heads() {
        let code = render(|b| {
            let (l, lt) = (Dim::sym("L"), Dim::sym("L_txt"));
            let mut streams = vec![];
            for (name, len) in [("txt", lt), ("img", l)] {
                let qkv = b
                    .input(
                        &format!("{name}_qkv"),
                        [Dim::Const(2), len.clone(), Dim::Const(24)],
                        DType::F32,
                    )
                    .unwrap();
                let half = [len, Dim::Const(2)];
                let cos = b
                    .input(&format!("{name}_cos"), half.clone(), DType::F32)
                    .unwrap();
                let sin = b.input(&format!("{name}_sin"), half, DType::F32).unwrap();
                let (bias, norms) = b
                    .scope(name, |b| {
                        let bias = b.weight("bias", &[24])?;
                        Ok((bias, [b.weight("norm_q", &[4])?, b.weight("norm_k", &[4])?]))
                    })
                    .unwrap();
                streams.push(QkvStream {
                    qkv,
                    bias,
                    norms,
                    rope: [cos, sin],
                });
            }
            let [q, k, v] = b
                .joint_qkv_heads(2, [streams[0], streams[1]], 1e-6)
                .unwrap();
            let qk = b.add(q, k).unwrap();
            b.add(qk, v).unwrap()
        });
        assert_snapshot!(code, @r"
            /// Forward of `t`.
            ///
            /// - in `txt_qkv`: [2, L_txt, 24]:f32
            /// - in `txt_cos`: [L_txt, 2]:f32
            /// - in `txt_sin`: [L_txt, 2]:f32
            /// - in `img_qkv`: [2, L, 24]:f32
            /// - in `img_cos`: [L, 2]:f32
            /// - in `img_sin`: [L, 2]:f32
            /// - out `y`: [2, 2, L+L_txt, 4]:f32
            pub fn t(
                w: &TWeights,
                txt_qkv: &Array,
                txt_cos: &Array,
                txt_sin: &Array,
                img_qkv: &Array,
                img_cos: &Array,
                img_sin: &Array,
            ) -> Result<Array, Exception> {
                let dim_l = img_qkv.shape()[1];
                let dim_l_txt = txt_qkv.shape()[1];
                let (joint_qkv_heads_q, joint_qkv_heads_k, joint_qkv_heads_v) = __joint_qkv_heads(
                    [txt_qkv, &w.txt_bias, &w.txt_norm_q, &w.txt_norm_k, txt_cos, txt_sin],
                    [img_qkv, &w.img_bias, &w.img_norm_q, &w.img_norm_k, img_cos, img_sin],
                    2,
                    0.000001f32,
                )?;
                let add = ops::add(&joint_qkv_heads_q, &joint_qkv_heads_k)?;
                let add_1 = ops::add(&add, &joint_qkv_heads_v)?;
                Ok(add_1)
            }
            ");
    }
}
