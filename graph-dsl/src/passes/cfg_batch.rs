//! CFG batching: decide at compile time how the conditional and unconditional halves of a
//! CFG batch meet in attention. MLX's masked attention is several times slower than
//! unmasked (design.md, "Keep masks out of the hot loop"), so no strategy here keeps a
//! key-padding mask: each half is run with its own, unpadded text.
//!
//! * [`CfgJoin::Batched`]: one batch-2 unmasked call (both halves have the same text
//!   length); a key-padding mask is rejected.
//! * [`CfgJoin::SplitHalves`]: every attention over a batch of 2 becomes two unmasked
//!   batch-1 calls whose results are concatenated (same cost as one batch-2 call on H100,
//!   gpu.md), the form that lets the halves differ.

use crate::error::{DslError, Result};
use crate::ir::{Graph, MaskKind, Op};
use crate::passes::{map_all, rewrite};
use crate::shape::Dim;

/// How CFG halves share attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CfgJoin {
    /// Leave attention as written, but reject key-padding masks.
    #[default]
    Batched,
    /// Split every batch-2 attention into two batch-1 unmasked calls.
    SplitHalves,
}

/// Apply the CFG strategy to `g` and its blocks.
pub fn run(g: &Graph, join: CfgJoin) -> Result<Graph> {
    map_all(g, |g| {
        rewrite(g, |b, node, ins| {
            let Op::Sdpa { scale, mask } = node.op else {
                return Ok(None);
            };
            if mask == MaskKind::KeyPadding {
                return Err(DslError::Pass {
                    pass: "cfg_batch",
                    node: node.name.clone(),
                    why: "a key-padding mask in the hot loop; pass each CFG half unpadded".into(),
                });
            }
            if join == CfgJoin::Batched {
                return Ok(None);
            }
            let batch = b.shape(ins[0]).0[0].clone();
            if batch != Dim::Const(2) {
                return Err(DslError::Pass {
                    pass: "cfg_batch",
                    node: node.name.clone(),
                    why: format!("split halves needs the batch bound to 2, got {batch}"),
                });
            }
            let mut halves = vec![];
            for i in 0..2usize {
                let q = b.slice(ins[0], 0, i, i + 1)?;
                let k = b.slice(ins[1], 0, i, i + 1)?;
                let v = b.slice(ins[2], 0, i, i + 1)?;
                let name = format!("{}_half{i}", node.name);
                halves.push(b.node_named(&name, Op::Sdpa { scale, mask }, &[q, k, v])?[0]);
            }
            Ok(Some(vec![b.concat(&halves, 0)?]))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder, Shape};

    fn attn(batch: Dim, mask: MaskKind) -> Graph {
        let mut b = GraphBuilder::new("a");
        let s = Shape::from([batch.clone(), Dim::Const(2), Dim::sym("L"), Dim::Const(4)]);
        let q = b.input("q", s.clone(), DType::F32).unwrap();
        let k = b.input("k", s.clone(), DType::F32).unwrap();
        let m = (mask == MaskKind::KeyPadding)
            .then(|| b.input("m", [batch, Dim::sym("L")], DType::Bool).unwrap());
        let o = b.sdpa(q, k, k, 0.5, mask, m).unwrap();
        b.output("o", o).unwrap();
        b.finish()
    }

    #[test]
    fn split_halves_makes_two_unmasked_batch1_calls() {
        let g = run(&attn(Dim::Const(2), MaskKind::None), CfgJoin::SplitHalves).unwrap();
        assert_eq!(g.count_op("sdpa"), 2);
        for n in g.nodes.iter().filter(|n| n.op.name() == "sdpa") {
            assert_eq!(n.outputs[0].shape.0[0], Dim::Const(1));
            assert_eq!(
                n.op,
                Op::Sdpa {
                    scale: 0.5,
                    mask: MaskKind::None
                }
            );
        }
        assert_eq!(g.ty(g.outputs[0].1).shape.to_string(), "[2, 2, L, 4]");
    }

    #[test]
    fn batched_leaves_attention_alone() {
        let g = run(&attn(Dim::Const(2), MaskKind::None), CfgJoin::Batched).unwrap();
        assert_eq!(g.count_op("sdpa"), 1);
    }

    #[test]
    fn masks_are_rejected() {
        let e = run(&attn(Dim::Const(2), MaskKind::KeyPadding), CfgJoin::Batched).unwrap_err();
        assert!(
            e.to_string().contains("key-padding mask in the hot loop"),
            "{e}"
        );
    }

    #[test]
    fn split_needs_a_bound_batch() {
        let e = run(&attn(Dim::sym("B"), MaskKind::None), CfgJoin::SplitHalves).unwrap_err();
        assert!(e.to_string().contains("got B"), "{e}");
    }
}
