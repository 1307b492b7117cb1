//! Layout: the VAE runs NHWC, one frame at a time. For T = 1 a causal 3×3×3 conv sees two
//! zero frames in front and the frame itself, so it equals a 2-D conv with the last
//! temporal tap `weight[:, :, kt-1]` (spec §4.2); a 1×1×1 conv becomes a 1×1 conv.
//!
//! This pass drops the T axis of every 5-D value (which must have T = 1), turns each
//! `CausalConv3d` into a `Conv2d` and records the weight change in the graph
//! (`TakeAxis{axis: 2, index: kt-1}` then `Permute[0, 2, 3, 1]`, OIHW → OHWI) for the
//! loader to apply.

use crate::error::{DslError, Result};
use crate::ir::{Graph, Op, WeightXform};
use crate::passes::{map_all, rewrite};
use crate::shape::{Dim, Shape};

fn err(node: &str, why: String) -> DslError {
    DslError::Pass {
        pass: "layout",
        node: node.to_string(),
        why,
    }
}

fn fold_graph(g: &Graph) -> Result<Graph> {
    let mut g = g.clone();
    for i in &mut g.inputs {
        if i.ty.shape.rank() == 5 {
            if i.ty.shape.0[1] != Dim::Const(1) {
                return Err(err(
                    &i.name,
                    format!("input {} must have a single frame", i.ty.shape),
                ));
            }
            i.ty.shape.0.remove(1);
        }
    }
    // record the weight changes first, so the weights already have their new shape
    for n in &g.nodes {
        if let Op::CausalConv3d { .. } = n.op {
            let wnode = &g.nodes[n.inputs[1].node];
            let Op::Weight(idx) = wnode.op else {
                return Err(err(&n.name, "the kernel must be a weight".into()));
            };
            let decl = &mut g.weights[idx];
            let kt = decl.shape.get(2).copied().unwrap_or(1);
            if decl.xforms.is_empty() {
                decl.xforms = vec![
                    WeightXform::TakeAxis {
                        axis: 2,
                        index: kt - 1,
                    },
                    WeightXform::Permute(vec![0, 2, 3, 1]),
                ];
            }
        }
    }
    rewrite(&g, |b, node, ins| {
        let rank5 = ins.iter().any(|t| b.shape(*t).rank() == 5)
            || node.outputs.iter().any(|t| t.shape.rank() == 5);
        // a per-frame reshape ([B, 1, H, W, C] <-> [B, H, W, C], as PyTorch's b·t folding)
        // becomes the identity once the frame axis is gone
        if let Op::Reshape(dims) = &node.op {
            let mut to = dims.clone();
            if to.len() == 5 {
                if to[1] != Dim::Const(1) {
                    return Err(err(
                        &node.name,
                        format!(
                            "reshape to {} keeps more than one frame",
                            Shape(dims.clone())
                        ),
                    ));
                }
                to.remove(1);
            }
            if *b.shape(ins[0]) == Shape(to.clone()) {
                return Ok(Some(vec![ins[0]]));
            }
            return Ok(Some(b.node_named(&node.name, Op::Reshape(to), ins)?));
        }
        let op = match &node.op {
            Op::CausalConv3d { pad, bias } => Op::Conv2d {
                stride: [1, 1],
                padding: [(*pad, *pad); 2],
                bias: *bias,
            },
            Op::Unary(_)
            | Op::Binary(_)
            | Op::ChannelL2Norm { .. }
            | Op::Clamp { .. }
            | Op::Cast(_)
            | Op::CastLike => return Ok(None),
            Op::Input(_) | Op::Weight(_) | Op::Scalar(_) | Op::ConstTensor { .. } => {
                return Ok(None)
            }
            Op::Call { .. } | Op::Repeat { .. } => return Ok(None),
            _ if rank5 => {
                return Err(err(
                    &node.name,
                    format!(
                        "{} on a 5-D tensor is not supported by the single-frame fold",
                        node.op.name()
                    ),
                ))
            }
            _ => return Ok(None),
        };
        Ok(Some(b.node_named(&node.name, op, ins)?))
    })
}

/// Fold single-frame 3-D convs in `g` and its blocks.
pub fn run(g: &Graph) -> Result<Graph> {
    map_all(g, fold_graph)
}

/// `[B, 1, H, W, C]` → `[B, H, W, C]` (for callers describing inputs).
pub fn drop_frame(s: &Shape) -> Shape {
    let mut s = s.clone();
    if s.rank() == 5 {
        s.0.remove(1);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder};

    fn conv_graph(t: usize) -> Graph {
        let mut b = GraphBuilder::new("c");
        let x = b
            .input(
                "x",
                [
                    Dim::sym("B"),
                    Dim::Const(t),
                    Dim::sym("h"),
                    Dim::sym("w"),
                    Dim::Const(4),
                ],
                DType::F32,
            )
            .unwrap();
        let y = b.causal_conv3d("conv1", x, 4, 8, 3, true).unwrap();
        let y = b.silu(y).unwrap();
        let s = b.causal_conv3d("conv_shortcut", x, 4, 8, 1, true).unwrap();
        let y = b.add(y, s).unwrap();
        b.output("y", y).unwrap();
        b.finish()
    }

    #[test]
    fn causal_conv3d_becomes_conv2d_with_recorded_weight_change() {
        let g = run(&conv_graph(1)).unwrap();
        assert_eq!(g.count_op("causal_conv3d"), 0);
        assert_eq!(g.count_op("conv2d"), 2);
        assert_eq!(g.inputs[0].ty.shape.to_string(), "[B, h, w, 4]");
        assert_eq!(g.ty(g.outputs[0].1).shape.to_string(), "[B, h, w, 8]");
        let w = g.weights.iter().find(|w| w.key == "conv1.weight").unwrap();
        assert_eq!(w.shape, vec![8, 4, 3, 3, 3]);
        assert_eq!(w.xforms[0], WeightXform::TakeAxis { axis: 2, index: 2 });
        assert_eq!(w.loaded_shape(), Some(vec![8, 3, 3, 4]));
        let s = g
            .weights
            .iter()
            .find(|w| w.key == "conv_shortcut.weight")
            .unwrap();
        assert_eq!(s.xforms[0], WeightXform::TakeAxis { axis: 2, index: 0 });
        assert_eq!(s.loaded_shape(), Some(vec![8, 1, 1, 4]));
    }

    #[test]
    fn per_frame_reshapes_vanish() {
        let mut b = GraphBuilder::new("f");
        let x = b
            .input(
                "x",
                [
                    Dim::sym("B"),
                    Dim::Const(1),
                    Dim::Const(4),
                    Dim::Const(4),
                    Dim::Const(2),
                ],
                DType::F32,
            )
            .unwrap();
        let f = b
            .reshape(
                x,
                [Dim::sym("B"), Dim::Const(4), Dim::Const(4), Dim::Const(2)],
            )
            .unwrap();
        let u = b.upsample2x(f).unwrap();
        let y = b
            .reshape(
                u,
                [
                    Dim::sym("B"),
                    Dim::Const(1),
                    Dim::Const(8),
                    Dim::Const(8),
                    Dim::Const(2),
                ],
            )
            .unwrap();
        b.output("y", y).unwrap();
        let g = run(&b.finish()).unwrap();
        assert_eq!(g.count_op("reshape"), 0);
        assert_eq!(g.ty(g.outputs[0].1).shape.to_string(), "[B, 8, 8, 2]");
    }

    #[test]
    fn more_than_one_frame_is_rejected() {
        let e = run(&conv_graph(4)).unwrap_err();
        assert!(e.to_string().contains("must have a single frame"), "{e}");
    }
}
