//! Specialization: bind symbolic dims to numbers. [`image_bindings`] turns a resolution
//! into every image-side size (and rejects one that is not a multiple of 16); [`run`]
//! substitutes the bindings everywhere and infers every shape again.

use std::collections::BTreeMap;

use crate::error::{DslError, Result};
use crate::ir::{Graph, Op, RopeSpec};
use crate::ops::subst;
use crate::passes::{map_all, rewrite};
use crate::shape::{Dim, Shape};

/// The symbols an image of `height`×`width` pixels fixes: `H`, `W`, latent `h = H/8`,
/// `w`, `L_lat = h·w`, packed grid `gh = h/2`, `gw`, and `L_img = gh·gw`.
pub fn image_bindings(height: usize, width: usize) -> Result<BTreeMap<String, usize>> {
    for (what, v) in [("height", height), ("width", width)] {
        if v == 0 || v % 16 != 0 {
            return Err(DslError::NotDivisible {
                what: format!("{what} (VAE ×8, patch ×2)"),
                value: v,
                by: 16,
            });
        }
    }
    let (h, w) = (height / 8, width / 8);
    let (gh, gw) = (h / 2, w / 2);
    Ok(BTreeMap::from([
        ("H".to_string(), height),
        ("W".to_string(), width),
        ("h".to_string(), h),
        ("w".to_string(), w),
        ("L_lat".to_string(), h * w),
        ("gh".to_string(), gh),
        ("gw".to_string(), gw),
        ("L_img".to_string(), gh * gw),
    ]))
}

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

    #[test]
    fn resolution_binds_every_image_size() {
        let b = image_bindings(1024, 1024).unwrap();
        assert_eq!(b["h"], 128);
        assert_eq!(b["gh"], 64);
        assert_eq!(b["L_img"], 4096);
        let b = image_bindings(928, 1664).unwrap();
        assert_eq!((b["gh"], b["gw"], b["L_img"]), (58, 104, 6032));
    }

    #[test]
    fn resolution_not_multiple_of_16_is_rejected() {
        let e = image_bindings(1000, 1024).unwrap_err();
        assert_eq!(
            e.to_string(),
            "height (VAE ×8, patch ×2) must be a multiple of 16; got 1000"
        );
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
        let s = run(&g, &image_bindings(64, 32).unwrap()).unwrap();
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
        let e = run(&b.finish(), &image_bindings(64, 64).unwrap()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node `reshape` (reshape): shapes [16, 8] and [4, 4, 4] do not fit: 128 elements cannot become 64"
        );
    }
}
