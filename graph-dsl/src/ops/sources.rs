//! Shape rules of the sources: graph inputs, weights and constants (no inputs).

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::{DType, Dim, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Input(i) => {
            cx.arity(0)?;
            let d =
                cx.g.inputs
                    .get(*i)
                    .ok_or_else(|| cx.attr("no such input"))?;
            one(d.ty.clone())
        }
        Op::Weight(i) => {
            cx.arity(0)?;
            let w =
                cx.g.weights
                    .get(*i)
                    .ok_or_else(|| cx.attr("no such weight"))?;
            let shape = w.loaded_shape().ok_or_else(|| {
                cx.attr(format!(
                    "transforms {:?} do not apply to {:?}",
                    w.xforms, w.shape
                ))
            })?;
            one(ty(
                Shape(shape.into_iter().map(Dim::Const).collect()),
                w.dtype,
            ))
        }
        Op::Scalar(_) => {
            cx.arity(0)?;
            one(ty(Shape(vec![]), DType::F32))
        }
        Op::ConstTensor { shape, data } => {
            cx.arity(0)?;
            if shape.iter().product::<usize>() != data.len() {
                return Err(cx.attr(format!("{} values for shape {:?}", data.len(), shape)));
            }
            one(ty(
                Shape(shape.iter().copied().map(Dim::Const).collect()),
                DType::F32,
            ))
        }
        Op::Arange { len, .. } => {
            cx.arity(0)?;
            one(ty(Shape(vec![len.clone()]), DType::F32))
        }
        op => unreachable!("{} is not a source", op.name()),
    }
}
