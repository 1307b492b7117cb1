//! Shape rules of the convolutions (channels last) and 2× upsampling.

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{Op, TensorTy};
use crate::shape::{Dim, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Conv2d {
            stride,
            padding,
            bias,
        } => {
            cx.arity(if *bias { 3 } else { 2 })?;
            let (x, w) = (cx.s(0), cx.s(1));
            if x.rank() != 4 || w.rank() != 4 {
                return Err(cx.mismatch(
                    x,
                    w,
                    "x must be [B, H, W, Cin] and w [Cout, kh, kw, Cin]",
                ));
            }
            if x.0[3] != w.0[3] {
                return Err(cx.mismatch(x, w, "input channels differ"));
            }
            if *bias && cx.s(2).0 != vec![w.0[0].clone()] {
                return Err(cx.mismatch(w, cx.s(2), "bias must be [Cout]"));
            }
            let mut out = vec![x.0[0].clone()];
            for i in 0..2 {
                let k = w.0[1 + i]
                    .as_const()
                    .ok_or_else(|| cx.bad(w, "kernel must be constant"))?;
                let (p0, p1) = padding[i];
                let span = x.0[1 + i]
                    .add(&Dim::Const(p0 + p1))
                    .sub(&Dim::Const(k))
                    .ok_or_else(|| cx.mismatch(x, w, "kernel larger than padded input"))?;
                let o = span
                    .div_exact(stride[i])
                    .ok_or_else(|| {
                        cx.bad(
                            x,
                            format!(
                                "(size + padding - kernel) must divide by stride {}",
                                stride[i]
                            ),
                        )
                    })?
                    .add(&Dim::Const(1));
                out.push(o);
            }
            out.push(w.0[0].clone());
            one(ty(Shape(out), cx.dt(0)))
        }
        Op::CausalConv3d { pad, bias } => {
            cx.arity(if *bias { 3 } else { 2 })?;
            let (x, w) = (cx.s(0), cx.s(1));
            if x.rank() != 5 || w.rank() != 5 {
                return Err(cx.mismatch(
                    x,
                    w,
                    "x must be [B, T, H, W, Cin] and w [Cout, Cin, kt, kh, kw]",
                ));
            }
            if x.0[4] != w.0[1] {
                return Err(cx.mismatch(x, w, "input channels differ"));
            }
            if *bias && cx.s(2).0 != vec![w.0[0].clone()] {
                return Err(cx.mismatch(w, cx.s(2), "bias must be [Cout]"));
            }
            let mut out = vec![x.0[0].clone(), x.0[1].clone()];
            for i in 0..2 {
                let k = w.0[3 + i]
                    .as_const()
                    .ok_or_else(|| cx.bad(w, "kernel must be constant"))?;
                let o = x.0[2 + i]
                    .add(&Dim::Const(2 * pad + 1))
                    .sub(&Dim::Const(k))
                    .ok_or_else(|| cx.mismatch(x, w, "kernel larger than padded input"))?;
                out.push(o);
            }
            out.push(w.0[0].clone());
            one(ty(Shape(out), cx.dt(0)))
        }
        Op::Upsample2x => {
            cx.arity(1)?;
            let x = cx.s(0);
            if x.rank() != 4 {
                return Err(cx.bad(x, "x must be [B, H, W, C]"));
            }
            let out = vec![x.0[0].clone(), x.0[1].mul(2), x.0[2].mul(2), x.0[3].clone()];
            one(ty(Shape(out), cx.dt(0)))
        }
        op => unreachable!("{} is not a convolution", op.name()),
    }
}
