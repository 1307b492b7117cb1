//! Shape rules of block calls: a block called once (`Call`) or in a loop (`Repeat`).

use std::collections::BTreeMap;

use super::{subst, ty, Cx};
use crate::error::{DslError, Result};
use crate::ir::{Op, TensorTy};
use crate::shape::{Dim, Shape};

pub(super) fn infer(cx: &Cx) -> Result<Vec<TensorTy>> {
    match cx.op {
        Op::Call { block, .. } | Op::Repeat { block, .. } => {
            let b =
                cx.g.blocks
                    .get(block)
                    .ok_or_else(|| DslError::UnknownBlock {
                        node: cx.node.to_string(),
                        block: block.clone(),
                    })?;
            cx.arity(b.inputs.len())?;
            let (count, carry, sliced) = match cx.op {
                Op::Repeat {
                    count,
                    carry,
                    sliced,
                    ..
                } => (*count, *carry, *sliced),
                _ => (1, 0, 0),
            };
            if carry + sliced > b.inputs.len() {
                return Err(cx.attr("carried and sliced inputs exceed the block's inputs"));
            }
            let mut map: BTreeMap<String, Dim> = BTreeMap::new();
            for (j, (decl, actual)) in b.inputs.iter().zip(cx.inputs).enumerate() {
                let want = &decl.ty.shape;
                // a sliced input is `[count, ..]`; each call sees one row
                let row;
                let got = if (carry..carry + sliced).contains(&j) {
                    if actual.shape.0.first() != Some(&Dim::Const(count)) {
                        return Err(cx.mismatch(
                            want,
                            &actual.shape,
                            format!(
                                "sliced input `{}` needs a leading axis of {count} (one row per call)",
                                decl.name
                            ),
                        ));
                    }
                    row = Shape(actual.shape.0[1..].to_vec());
                    &row
                } else {
                    &actual.shape
                };
                if want.rank() != got.rank() {
                    return Err(cx.mismatch(
                        want,
                        got,
                        format!("block input `{}` has another rank", decl.name),
                    ));
                }
                for (w, a) in want.0.iter().zip(&got.0) {
                    match w {
                        Dim::Sym(sym) => match map.get(sym) {
                            Some(prev) if prev != a => {
                                return Err(cx.mismatch(
                                    want,
                                    got,
                                    format!("symbol {sym} is both {prev} and {a}"),
                                ))
                            }
                            _ => {
                                map.insert(sym.clone(), a.clone());
                            }
                        },
                        _ => {
                            if subst(w, &map) != *a {
                                return Err(cx.mismatch(
                                    want,
                                    got,
                                    format!("block input `{}` does not fit", decl.name),
                                ));
                            }
                        }
                    }
                }
            }
            let is_repeat = matches!(cx.op, Op::Repeat { .. });
            let outs: Vec<TensorTy> = b
                .outputs
                .iter()
                .enumerate()
                .map(|(j, (_, v))| {
                    let t = b.ty(*v);
                    let dims = t.shape.0.iter().map(|d| subst(d, &map));
                    // a repeat's outputs past the carried ones are stacked over the calls
                    let dims = if is_repeat && j >= carry {
                        std::iter::once(Dim::Const(count)).chain(dims).collect()
                    } else {
                        dims.collect()
                    };
                    ty(Shape(dims), t.dtype)
                })
                .collect();
            if is_repeat {
                if carry > outs.len() {
                    return Err(cx.attr("carry exceeds the block's outputs"));
                }
                for (i, o) in outs.iter().take(carry).enumerate() {
                    if o.shape != cx.inputs[i].shape {
                        return Err(cx.mismatch(
                            &cx.inputs[i].shape,
                            &o.shape,
                            format!("carried value {i} changes shape"),
                        ));
                    }
                }
            }
            Ok(outs)
        }
        op => unreachable!("{} is not a block call", op.name()),
    }
}
