//! Specialization: bind symbolic dims to numbers (the model decides which: e.g. every
//! image-side size of one resolution); [`run`] substitutes the bindings everywhere and
//! infers every shape again.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::ir::{Graph, Op, RopeSpec};
use crate::ops::subst;
use crate::passes::{map_all, rewrite};
use crate::shape::{Dim, Shape};

fn bind_dims(dims: &[Dim], b: &BTreeMap<String, Dim>) -> Vec<Dim> {
    dims.iter().map(|d| subst(d, b)).collect()
}

/// Bind `bindings` in `g` and its block bodies.
pub fn run(g: &Graph, bindings: &BTreeMap<String, usize>) -> Result<Graph> {
    let b: BTreeMap<String, Dim> = bindings
        .iter()
        .map(|(k, v)| (k.clone(), Dim::Const(*v)))
        .collect();
    map_all(g, |g| {
        let mut g = g.clone();
        for i in &mut g.inputs {
            i.ty.shape = Shape(bind_dims(&i.ty.shape.0, &b));
        }
        rewrite(&g, |bld, node, ins| {
            let op = match &node.op {
                Op::Reshape(d) => Op::Reshape(bind_dims(d, &b)),
                Op::BroadcastTo(d) => Op::BroadcastTo(bind_dims(d, &b)),
                Op::Slice { axis, start, end } => Op::Slice {
                    axis: *axis,
                    start: subst(start, &b),
                    end: subst(end, &b),
                },
                Op::Arange { start, len } => Op::Arange {
                    start: subst(start, &b),
                    len: subst(len, &b),
                },
                Op::RopeTables(s) => Op::RopeTables(RopeSpec {
                    grid: [subst(&s.grid[0], &b), subst(&s.grid[1], &b)],
                    img_len: subst(&s.img_len, &b),
                    txt_len: subst(&s.txt_len, &b),
                    txt_offset: subst(&s.txt_offset, &b),
                    ..s.clone()
                }),
                _ => return Ok(None),
            };
            Ok(Some(bld.node_named(&node.name, op, ins)?))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder};

    fn bindings(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn bound_symbols_become_literal_everywhere() {
        let mut b = GraphBuilder::new("t");
        let x = b
            .input(
                "x",
                [Dim::sym("B"), Dim::sym("L_img"), Dim::Const(8)],
                DType::F32,
            )
            .unwrap();
        let y = b
            .reshape(
                x,
                [Dim::sym("B"), Dim::sym("gh"), Dim::sym("gw"), Dim::Const(8)],
            )
            .unwrap();
        b.output("y", y).unwrap();
        let g = b.finish();
        let s = run(&g, &bindings(&[("L_img", 8), ("gh", 4), ("gw", 2)])).unwrap();
        assert_eq!(s.inputs[0].ty.shape.to_string(), "[B, 8, 8]");
        assert_eq!(s.ty(s.outputs[0].1).shape.to_string(), "[B, 4, 2, 8]");
    }

    #[test]
    fn a_binding_that_breaks_a_reshape_is_caught() {
        let mut b = GraphBuilder::new("t");
        let x = b
            .input("x", [Dim::sym("L_img"), Dim::Const(8)], DType::F32)
            .unwrap();
        let y = b
            .reshape(x, [Dim::sym("gh"), Dim::sym("gw"), Dim::Const(4)])
            .unwrap();
        b.output("y", y).unwrap();
        let e = run(
            &b.finish(),
            &bindings(&[("L_img", 16), ("gh", 4), ("gw", 4)]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node `reshape` (reshape): shapes [16, 8] and [4, 4, 4] do not fit: 128 elements cannot become 64"
        );
    }
}
