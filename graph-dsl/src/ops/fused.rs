//! Shape rules of the fused ops: modulated LayerNorm, gated residual, and the joint
//! attention heads made from two streams' QKV projections.

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::{Dim, Shape};

/// `[B, L, D]` activation input `i`; its `(B, D)`.
fn activation(cx: &Cx, i: usize) -> Result<(Dim, Dim)> {
    let s = cx.s(i);
    if s.rank() != 3 {
        return Err(cx.bad(s, "needs [B, L, D]"));
    }
    Ok((s.0[0].clone(), s.0[2].clone()))
}

/// Input `i` must be a modulation for an activation `x` `[B, L, D]`: one row per sample
/// `[B, 1, D]`, or one per row `[B, L, D]`.
fn row(cx: &Cx, x: usize, i: usize) -> Result<()> {
    let (b, d) = activation(cx, x)?;
    if cx.s(i).0 != vec![b, Dim::Const(1), d] && cx.s(i) != cx.s(x) {
        return Err(cx.mismatch(
            cx.s(x),
            cx.s(i),
            "must be [B, 1, D] or [B, L, D] of x's B, L, D",
        ));
    }
    Ok(())
}

/// Inputs `a` and `b` must have the same shape.
fn same(cx: &Cx, a: usize, b: usize) -> Result<()> {
    if cx.s(a) != cx.s(b) {
        return Err(cx.mismatch(cx.s(a), cx.s(b), "must have the same shape"));
    }
    Ok(())
}

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::NormModulate { .. } => {
            cx.arity(3)?;
            row(cx, 0, 1)?;
            row(cx, 0, 2)?;
            one(cx.inputs[0].clone())
        }
        Op::GateResidual => {
            cx.arity(3)?;
            same(cx, 0, 1)?;
            row(cx, 0, 2)?;
            one(cx.inputs[0].clone())
        }
        Op::GateResidualNormModulate { .. } => {
            cx.arity(5)?;
            same(cx, 0, 1)?;
            for i in 2..5 {
                row(cx, 0, i)?;
            }
            Ok(vec![cx.inputs[0].clone(), cx.inputs[0].clone()])
        }
        Op::JointQkvHeads { heads, .. } => {
            cx.arity(12)?;
            let (t, i) = (cx.s(0), cx.s(6));
            let (b, lt, width) = match t.0.as_slice() {
                [b, l, Dim::Const(w)] => (b.clone(), l.clone(), *w),
                _ => return Err(cx.bad(t, "text qkv needs [B, L, 3·H·Dh] with a constant width")),
            };
            let li = match i.0.as_slice() {
                [bi, l, Dim::Const(w)] if *bi == b && *w == width => l.clone(),
                _ => {
                    return Err(cx.mismatch(t, i, "image qkv must be [B, L_image, width of text]"))
                }
            };
            if *heads == 0 || width % (3 * heads) != 0 || (width / (3 * heads)) % 2 != 0 {
                return Err(cx.attr(format!(
                    "width {width} is not 3 × {heads} heads × an even head dim"
                )));
            }
            let dh = width / (3 * heads);
            for (base, len) in [(0, &lt), (6, &li)] {
                let want = [
                    Shape(vec![Dim::Const(width)]),
                    Shape(vec![Dim::Const(dh)]),
                    Shape(vec![Dim::Const(dh)]),
                    Shape(vec![len.clone(), Dim::Const(dh / 2)]),
                    Shape(vec![len.clone(), Dim::Const(dh / 2)]),
                ];
                for (j, w) in want.iter().enumerate() {
                    if cx.s(base + 1 + j) != w {
                        let what = ["bias", "q norm", "k norm", "RoPE cos", "RoPE sin"][j];
                        return Err(cx.mismatch(
                            cx.s(base),
                            cx.s(base + 1 + j),
                            format!("{what} must be {w}"),
                        ));
                    }
                }
            }
            let out = ty(
                Shape(vec![b, Dim::Const(*heads), lt.add(&li), Dim::Const(dh)]),
                cx.dt(0),
            );
            Ok(vec![out.clone(), out.clone(), out])
        }
        op => unreachable!("{} is not a fused op", op.name()),
    }
}
