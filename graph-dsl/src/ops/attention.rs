//! Shape rules of attention: scaled-dot-product attention, RoPE and its tables.

use super::{one, ty, Cx};
use crate::error::Result;
use crate::ir::{MaskKind, Op, TensorTy};
use crate::shape::{DType, Dim, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Sdpa { mask, .. } => {
            let masked = matches!(mask, MaskKind::KeyPadding | MaskKind::Additive);
            cx.arity(if masked { 4 } else { 3 })?;
            let (q, k, v) = (cx.s(0), cx.s(1), cx.s(2));
            for x in [q, k, v] {
                if x.rank() != 4 {
                    return Err(cx.bad(x, "q, k, v must be [B, H, L, D]"));
                }
            }
            if k != v && (k.0[..3] != v.0[..3]) {
                return Err(cx.mismatch(k, v, "k and v must agree on [B, H, L]"));
            }
            if q.0[0] != k.0[0] || q.0[3] != k.0[3] {
                return Err(cx.mismatch(q, k, "q and k must agree on B and D"));
            }
            if let (Some(hq), Some(hk)) = (q.0[1].as_const(), k.0[1].as_const()) {
                if hk == 0 || hq % hk != 0 {
                    return Err(cx.mismatch(q, k, "query heads must be a multiple of kv heads"));
                }
            }
            if *mask == MaskKind::KeyPadding && cx.s(3).0 != vec![k.0[0].clone(), k.0[2].clone()] {
                return Err(cx.mismatch(k, cx.s(3), "key-padding mask must be [B, Lk]"));
            }
            if *mask == MaskKind::Additive && cx.s(3).0 != vec![q.0[2].clone(), k.0[2].clone()] {
                return Err(cx.mismatch(q, cx.s(3), "additive mask must be [Lq, Lk]"));
            }
            let mut out = q.0.clone();
            out[3] = v.0[3].clone();
            one(ty(Shape(out), cx.dt(0)))
        }
        Op::Rope { .. } => {
            cx.arity(3)?;
            let x = cx.s(0);
            if x.rank() != 4 {
                return Err(cx.bad(x, "x must be [B, L, H, D]"));
            }
            let half = x.0[3]
                .as_const()
                .filter(|d| d % 2 == 0)
                .ok_or_else(|| cx.bad(x, "head dim must be an even constant"))?;
            let want = Shape(vec![x.0[1].clone(), Dim::Const(half / 2)]);
            for i in [1, 2] {
                if *cx.s(i) != want {
                    return Err(cx.mismatch(x, cx.s(i), format!("tables must be {want}")));
                }
            }
            one(cx.inputs[0].clone())
        }
        Op::RopeTables(spec) => {
            cx.arity(0)?;
            if let (Some(a), Some(b), Some(l)) = (
                spec.grid[0].as_const(),
                spec.grid[1].as_const(),
                spec.img_len.as_const(),
            ) {
                if a * b != l {
                    return Err(cx.attr(format!("grid {a}x{b} does not have {l} tokens")));
                }
            }
            if spec.axes_dims.iter().any(|d| d % 2 != 0) {
                return Err(cx.attr("axis dims must be even"));
            }
            let half: usize = spec.axes_dims.iter().sum::<usize>() / 2;
            let img = ty(
                Shape(vec![spec.img_len.clone(), Dim::Const(half)]),
                DType::F32,
            );
            let txt = ty(
                Shape(vec![spec.txt_len.clone(), Dim::Const(half)]),
                DType::F32,
            );
            Ok(vec![img.clone(), img, txt.clone(), txt])
        }
        op => unreachable!("{} is not attention", op.name()),
    }
}
