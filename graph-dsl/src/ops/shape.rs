//! Shape rules of the ops that only move data: reshape, transpose, broadcast, concat, slice.

use super::{one, ty, Cx};
use crate::error::{DslError, Result};
use crate::ir::{Op, TensorTy};
use crate::shape::{broadcast, Dim, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Reshape(dims) => {
            cx.arity(1)?;
            let to = Shape(dims.clone());
            if let (Some(a), Some(b)) = (cx.s(0).numel(), to.numel()) {
                if a != b {
                    return Err(cx.mismatch(
                        cx.s(0),
                        &to,
                        format!("{a} elements cannot become {b}"),
                    ));
                }
            }
            one(ty(to, cx.dt(0)))
        }
        Op::Transpose(perm) => {
            cx.arity(1)?;
            let mut sorted = perm.clone();
            sorted.sort();
            if sorted != (0..cx.s(0).rank()).collect::<Vec<_>>() {
                return Err(cx.attr(format!(
                    "{perm:?} is not a permutation of the axes of {}",
                    cx.s(0)
                )));
            }
            one(ty(
                Shape(perm.iter().map(|&i| cx.s(0).0[i].clone()).collect()),
                cx.dt(0),
            ))
        }
        Op::BroadcastTo(dims) => {
            cx.arity(1)?;
            let to = Shape(dims.clone());
            if broadcast(cx.s(0), &to).as_ref() != Some(&to) {
                return Err(cx.mismatch(cx.s(0), &to, "does not broadcast to the target"));
            }
            one(ty(to, cx.dt(0)))
        }
        Op::Concat { axis } => {
            if cx.inputs.is_empty() {
                return Err(DslError::Arity {
                    node: cx.node.to_string(),
                    op: cx.op.name(),
                    expected: 1,
                    got: 0,
                });
            }
            let first = cx.s(0);
            if *axis >= first.rank() {
                return Err(cx.attr(format!("axis {axis} out of range for {first}")));
            }
            let mut total = Dim::Const(0);
            for t in cx.inputs {
                let x = &t.shape;
                let same = x.rank() == first.rank()
                    && (0..x.rank()).all(|i| i == *axis || x.0[i] == first.0[i]);
                if !same {
                    return Err(cx.mismatch(
                        first,
                        x,
                        format!("all dims but axis {axis} must agree"),
                    ));
                }
                total = total.add(&x.0[*axis]);
            }
            let mut out = first.0.clone();
            out[*axis] = total;
            one(ty(Shape(out), cx.dt(0)))
        }
        Op::Slice { axis, start, end } => {
            cx.arity(1)?;
            let x = cx.s(0);
            let d =
                x.0.get(*axis)
                    .ok_or_else(|| cx.attr(format!("axis {axis} out of range for {x}")))?;
            let len = end
                .sub(start)
                .ok_or_else(|| cx.attr(format!("slice {start}..{end} is empty or reversed")))?;
            if d.sub(end).is_none() {
                return Err(cx.attr(format!("slice {start}..{end} exceeds dim {d} of {x}")));
            }
            let mut out = x.0.clone();
            out[*axis] = len;
            one(ty(Shape(out), cx.dt(0)))
        }
        op => unreachable!("{} is not a shape op", op.name()),
    }
}
