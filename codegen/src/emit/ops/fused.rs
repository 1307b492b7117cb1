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
        Op::QkvHeads { heads, eps } => {
            let (qkv, wq, wk, cos, sin) = (n.a(0), n.a(1), n.a(2), n.a(3), n.a(4));
            let (h, e) = (lit_i32(*heads), lit_f32(*eps));
            let q = out(cx, k, 0, &format!("{name}_q"));
            let kk = out(cx, k, 1, &format!("{name}_k"));
            let v = out(cx, k, 2, &format!("{name}_v"));
            quote!(let (#q, #kk, #v) = __qkv_heads(#qkv, #wq, #wk, #cos, #sin, #h, #e)?;)
        }
        op => unreachable!("{} is not a fused op", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim};
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
    fn qkv_heads() {
        let code = render(|b| {
            let l = Dim::sym("L");
            let qkv = x(b, &[Dim::Const(2), l.clone(), Dim::Const(24)]);
            let half = [l, Dim::Const(2)];
            let cos = b.input("cos", half.clone(), DType::F32).unwrap();
            let sin = b.input("sin", half, DType::F32).unwrap();
            let [q, k, v] = b
                .qkv_heads(qkv, 2, 4, ["norm_q", "norm_k"], [cos, sin], 1e-6)
                .unwrap();
            let qk = b.add(q, k).unwrap();
            b.add(qk, v).unwrap()
        });
        assert_snapshot!(code, @r"
            /// Forward of `t`.
            ///
            /// - in `x`: [2, L, 24]:f32
            /// - in `cos`: [L, 2]:f32
            /// - in `sin`: [L, 2]:f32
            /// - out `y`: [2, 2, L, 4]:f32
            pub fn t(w: &TWeights, x: &Array, cos: &Array, sin: &Array) -> Result<Array, Exception> {
                let dim_l = x.shape()[1];
                let (qkv_heads_q, qkv_heads_k, qkv_heads_v) = __qkv_heads(
                    x,
                    &w.norm_q_weight,
                    &w.norm_k_weight,
                    cos,
                    sin,
                    2,
                    0.000001f32,
                )?;
                let add = ops::add(&qkv_heads_q, &qkv_heads_k)?;
                let add_1 = ops::add(&add, &qkv_heads_v)?;
                Ok(add_1)
            }
            ");
    }
}
