//! Shape rules of the elementwise ops, softmax, single-axis reductions, casts and clamp.

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::{broadcast, Dim, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Unary(_) | Op::Clamp { .. } => {
            cx.arity(1)?;
            one(cx.inputs[0].clone())
        }
        Op::Cast(d) => {
            cx.arity(1)?;
            one(ty(cx.s(0).clone(), *d))
        }
        Op::CastLike => {
            cx.arity(2)?;
            one(ty(cx.s(0).clone(), cx.dt(1)))
        }
        Op::Binary(_) => {
            cx.arity(2)?;
            let out = broadcast(cx.s(0), cx.s(1))
                .ok_or_else(|| cx.mismatch(cx.s(0), cx.s(1), "shapes do not broadcast"))?;
            // a scalar constant takes the other operand's dtype
            let d = if cx.s(0).rank() == 0 {
                cx.dt(1)
            } else {
                cx.dt(0)
            };
            one(ty(out, d))
        }
        Op::Softmax { axis } => {
            cx.arity(1)?;
            cx.s(0)
                .axis(*axis)
                .ok_or_else(|| cx.attr(format!("axis {axis} out of range for {}", cx.s(0))))?;
            one(cx.inputs[0].clone())
        }
        Op::Reduce {
            axis, keep_dims, ..
        } => {
            cx.arity(1)?;
            let a = cx
                .s(0)
                .axis(*axis)
                .ok_or_else(|| cx.attr(format!("axis {axis} out of range for {}", cx.s(0))))?;
            let mut out = cx.s(0).0.clone();
            if *keep_dims {
                out[a] = Dim::Const(1);
            } else {
                out.remove(a);
            }
            one(ty(Shape(out), cx.dt(0)))
        }
        op => unreachable!("{} is not elementwise", op.name()),
    }
}
