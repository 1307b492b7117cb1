//! Shape rules of the norms over the last axis.

use super::{one, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::Dim;

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::RmsNorm { affine, .. } => {
            cx.arity(if *affine { 2 } else { 1 })?;
            if *affine && cx.s(1).0 != vec![cx.s(0).last().cloned().unwrap_or(Dim::Const(0))] {
                return Err(cx.mismatch(cx.s(0), cx.s(1), "weight must be [last dim of x]"));
            }
            one(cx.inputs[0].clone())
        }
        Op::LayerNorm { .. } => {
            cx.arity(1)?;
            if cx.s(0).rank() == 0 {
                return Err(cx.bad(cx.s(0), "needs rank >= 1"));
            }
            one(cx.inputs[0].clone())
        }
        Op::ChannelL2Norm { .. } => {
            cx.arity(2)?;
            if cx.s(1).0 != vec![cx.s(0).last().cloned().unwrap_or(Dim::Const(0))] {
                return Err(cx.mismatch(cx.s(0), cx.s(1), "gamma must be [channels of x]"));
            }
            one(cx.inputs[0].clone())
        }
        op => unreachable!("{} is not a norm", op.name()),
    }
}
