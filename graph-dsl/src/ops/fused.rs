//! Shape rules of the fused ops: modulated LayerNorm, gated residual, and the QKV-to-heads
//! projection tail.

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

/// Input `i` must be a per-sample row `[B, 1, D]` for an activation `x`.
fn row(cx: &Cx, x: usize, i: usize) -> Result<()> {
    let (b, d) = activation(cx, x)?;
    if cx.s(i).0 != vec![b, Dim::Const(1), d] {
        return Err(cx.mismatch(cx.s(x), cx.s(i), "must be [B, 1, D] of x's B and D"));
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
        Op::QkvHeads { heads, .. } => {
            cx.arity(5)?;
            let s = cx.s(0);
            let (b, l, width) = match s.0.as_slice() {
                [b, l, Dim::Const(w)] => (b.clone(), l.clone(), *w),
                _ => return Err(cx.bad(s, "needs [B, L, 3·H·Dh] with a constant width")),
            };
            if *heads == 0 || width % (3 * heads) != 0 || (width / (3 * heads)) % 2 != 0 {
                return Err(cx.attr(format!(
                    "width {width} is not 3 × {heads} heads × an even head dim"
                )));
            }
            let dh = width / (3 * heads);
            for i in [1, 2] {
                if cx.s(i).0 != vec![Dim::Const(dh)] {
                    return Err(cx.mismatch(s, cx.s(i), format!("norm weight must be [{dh}]")));
                }
            }
            let table = Shape(vec![l.clone(), Dim::Const(dh / 2)]);
            for i in [3, 4] {
                if cx.s(i) != &table {
                    return Err(cx.mismatch(s, cx.s(i), format!("RoPE table must be {table}")));
                }
            }
            let out = ty(
                Shape(vec![b, Dim::Const(*heads), l, Dim::Const(dh)]),
                cx.dt(0),
            );
            Ok(vec![out.clone(), out.clone(), out])
        }
        op => unreachable!("{} is not a fused op", op.name()),
    }
}
