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
            let mut map: BTreeMap<String, Dim> = BTreeMap::new();
            for (decl, actual) in b.inputs.iter().zip(cx.inputs) {
                let (want, got) = (&decl.ty.shape, &actual.shape);
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
            let outs: Vec<TensorTy> = b
                .outputs
                .iter()
                .map(|(_, v)| {
                    let t = b.ty(*v);
                    ty(
                        Shape(t.shape.0.iter().map(|d| subst(d, &map)).collect()),
                        t.dtype,
                    )
                })
                .collect();
            if let Op::Repeat { carry, .. } = cx.op {
                if *carry > outs.len() {
                    return Err(cx.attr("carry exceeds the block's outputs"));
                }
                for (i, o) in outs.iter().take(*carry).enumerate() {
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
