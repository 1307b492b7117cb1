//! Shape rules of the linear algebra: linear layers, matmul, embedding lookup.

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::{broadcast, DType, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Linear { bias } => {
            cx.arity(if *bias { 3 } else { 2 })?;
            let (x, w) = (cx.s(0), cx.s(1));
            if w.rank() != 2 {
                return Err(cx.bad(w, "weight must be [out, in]"));
            }
            if x.last() != Some(&w.0[1]) {
                return Err(cx.mismatch(x, w, "x's last dim must equal the weight's `in`"));
            }
            if *bias && cx.s(2).0 != vec![w.0[0].clone()] {
                return Err(cx.mismatch(w, cx.s(2), "bias must be [out]"));
            }
            let mut out = x.0.clone();
            *out.last_mut().expect("rank >= 1") = w.0[0].clone();
            one(ty(Shape(out), cx.dt(0)))
        }
        Op::MatMul => {
            cx.arity(2)?;
            let (a, b) = (cx.s(0), cx.s(1));
            if a.rank() < 2 || b.rank() < 2 {
                return Err(cx.mismatch(a, b, "both operands need rank >= 2"));
            }
            let (ra, rb) = (a.rank(), b.rank());
            if a.0[ra - 1] != b.0[rb - 2] {
                return Err(cx.mismatch(a, b, "inner dims differ"));
            }
            let lead = broadcast(
                &Shape(a.0[..ra - 2].to_vec()),
                &Shape(b.0[..rb - 2].to_vec()),
            )
            .ok_or_else(|| cx.mismatch(a, b, "batch dims do not broadcast"))?;
            let mut out = lead.0;
            out.push(a.0[ra - 2].clone());
            out.push(b.0[rb - 1].clone());
            one(ty(Shape(out), cx.dt(0)))
        }
        Op::Embedding => {
            cx.arity(2)?;
            let (t, ids) = (cx.s(0), cx.s(1));
            if t.rank() != 2 {
                return Err(cx.bad(t, "table must be [V, D]"));
            }
            if !matches!(cx.dt(1), DType::I32 | DType::U32) {
                return Err(cx.attr(format!("ids must be integers, got {}", cx.dt(1))));
            }
            let mut out = ids.0.clone();
            out.push(t.0[1].clone());
            one(ty(Shape(out), cx.dt(0)))
        }
        op => unreachable!("{} is not linear algebra", op.name()),
    }
}
