//! CFG batching: decide at compile time how the conditional and unconditional halves of a
//! CFG batch are joined. MLX's masked attention is several times slower than unmasked
//! (design.md, "Keep masks out of the hot loop"), and the two prompts have different text
//! lengths, so no strategy here keeps a key-padding mask.
//!
//! * [`CfgJoin::Batched`]: leave the graph as written (batch `B`, one text length); a
//!   key-padding mask is rejected. The caller runs each half unpadded, or both at once
//!   when their lengths agree.
//! * [`CfgJoin::SplitHalves`]: one call for both halves, each with its own text length.
//!   Every input whose shape mentions the text length (`L_txt`) becomes two inputs
//!   (`name_0` `[1, L_txt0, ..]`, `name_1` `[1, L_txt1, ..]`); everything computed from
//!   them is computed per half (weights shared); batched values (`B` → 2: the image
//!   stream, the timestep) are sliced per half where they meet a text value, and a per-half
//!   result whose shape no longer mentions the text is joined back into the batch. So the
//!   image stream's linears and MLPs run at batch 2, and every attention call is an
//!   unmasked batch-1 call over `L_txt_i + L_img` tokens.

use std::collections::BTreeMap;

use crate::builder::{GraphBuilder, Tensor};
use crate::error::{DslError, Result};
use crate::ir::{Graph, MaskKind, Op, RopeSpec, Value};
use crate::ops::subst;
use crate::passes::map_all;
use crate::shape::{Dim, Shape};

/// How CFG halves are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CfgJoin {
    /// Leave attention as written, but reject key-padding masks.
    #[default]
    Batched,
    /// Both halves in one call, each with its own unpadded text (see the module doc).
    SplitHalves,
}

/// The batch symbol.
pub const BATCH: &str = "B";
/// The text-length symbol.
pub const TEXT: &str = "L_txt";

fn err(node: &str, why: String) -> DslError {
    DslError::Pass {
        pass: "cfg_batch",
        node: node.to_string(),
        why,
    }
}

fn reject_masks(g: &Graph) -> Result<()> {
    for n in &g.nodes {
        if let Op::Sdpa {
            mask: MaskKind::KeyPadding,
            ..
        } = n.op
        {
            return Err(err(
                &n.name,
                "a key-padding mask in the hot loop; pass each CFG half unpadded".into(),
            ));
        }
    }
    Ok(())
}

/// Symbol map for the joined batch (`half = None`) or one half.
fn symbols(half: Option<usize>) -> BTreeMap<String, Dim> {
    match half {
        None => BTreeMap::from([(BATCH.to_string(), Dim::Const(2))]),
        Some(i) => BTreeMap::from([
            (BATCH.to_string(), Dim::Const(1)),
            (TEXT.to_string(), Dim::sym(&format!("{TEXT}{i}"))),
        ]),
    }
}

fn subst_shape(s: &Shape, m: &BTreeMap<String, Dim>) -> Shape {
    Shape(s.0.iter().map(|d| subst(d, m)).collect())
}

fn subst_op(op: &Op, m: &BTreeMap<String, Dim>) -> Op {
    let ds = |d: &[Dim]| d.iter().map(|x| subst(x, m)).collect::<Vec<_>>();
    match op {
        Op::Reshape(d) => Op::Reshape(ds(d)),
        Op::BroadcastTo(d) => Op::BroadcastTo(ds(d)),
        Op::Slice { axis, start, end } => Op::Slice {
            axis: *axis,
            start: subst(start, m),
            end: subst(end, m),
        },
        Op::Arange { start, len } => Op::Arange {
            start: subst(start, m),
            len: subst(len, m),
        },
        Op::RopeTables(s) => Op::RopeTables(RopeSpec {
            txt_len: subst(&s.txt_len, m),
            img_len: subst(&s.img_len, m),
            ..s.clone()
        }),
        _ => op.clone(),
    }
}

fn mentions_text(s: &Shape) -> bool {
    s.symbols().iter().any(|x| x == TEXT)
}

fn batched(s: &Shape) -> bool {
    s.0.first() == Some(&Dim::sym(BATCH))
}

#[derive(Clone)]
enum M {
    One(Tensor),
    Halves([Tensor; 2]),
}

fn split_halves(g: &Graph) -> Result<Graph> {
    let mut b = GraphBuilder::new(&g.name);
    b.adopt_weights_and_blocks(g);
    let mut map: BTreeMap<Value, M> = BTreeMap::new();
    let mut slices: BTreeMap<(Tensor, usize), Tensor> = BTreeMap::new();
    for (k, node) in g.nodes.iter().enumerate() {
        let outs: Vec<M> = match &node.op {
            Op::Input(i) => {
                let decl = &g.inputs[*i];
                if mentions_text(&decl.ty.shape) {
                    let mut h = vec![];
                    for half in 0..2 {
                        let s = subst_shape(&decl.ty.shape, &symbols(Some(half)));
                        h.push(b.input(&format!("{}_{half}", decl.name), s, decl.ty.dtype)?);
                    }
                    vec![M::Halves([h[0], h[1]])]
                } else {
                    let s = subst_shape(&decl.ty.shape, &symbols(None));
                    vec![M::One(b.input(&decl.name, s, decl.ty.dtype)?)]
                }
            }
            Op::Call { block, .. } | Op::Repeat { block, .. } => {
                if b.block(block).is_none() {
                    return Err(err(&node.name, format!("unknown block {block}")));
                }
                let mut ins = vec![];
                let mut carry_new = 0;
                for (j, v) in node.inputs.iter().enumerate() {
                    let n = match &map[v] {
                        M::One(t) => {
                            ins.push(*t);
                            1
                        }
                        M::Halves(h) => {
                            ins.extend(h);
                            2
                        }
                    };
                    if let Op::Repeat { carry, .. } = node.op {
                        if j < carry {
                            carry_new += n;
                        }
                    }
                }
                let op = match &node.op {
                    Op::Repeat {
                        block,
                        prefix,
                        count,
                        ..
                    } => Op::Repeat {
                        block: block.clone(),
                        prefix: prefix.clone(),
                        count: *count,
                        carry: carry_new,
                    },
                    other => other.clone(),
                };
                // the body was split the same way: an output that mentions the text
                // length comes back as two
                let res = b.node_named(&node.name, op, &ins)?;
                let mut r = res.into_iter();
                let mut outs = vec![];
                for o in &node.outputs {
                    let missing = || err(&node.name, "block outputs do not match".into());
                    if mentions_text(&o.shape) {
                        let (a, c) = (r.next().ok_or_else(missing)?, r.next().ok_or_else(missing)?);
                        outs.push(M::Halves([a, c]));
                    } else {
                        outs.push(M::One(r.next().ok_or_else(missing)?));
                    }
                }
                outs
            }
            _ => {
                let any_half = node.inputs.iter().any(|v| matches!(map[v], M::Halves(_)));
                if !any_half {
                    let ins: Vec<Tensor> = node
                        .inputs
                        .iter()
                        .map(|v| match &map[v] {
                            M::One(t) => *t,
                            M::Halves(h) => h[0],
                        })
                        .collect();
                    let op = subst_op(&node.op, &symbols(None));
                    b.node_named(&node.name, op, &ins)?
                        .into_iter()
                        .map(M::One)
                        .collect()
                } else {
                    let mut per: Vec<Vec<Tensor>> = vec![];
                    for half in 0..2 {
                        let mut ins = vec![];
                        for v in &node.inputs {
                            let t = match &map[v] {
                                M::Halves(h) => h[half],
                                M::One(t) if batched(&g.ty(*v).shape) => {
                                    match slices.get(&(*t, half)) {
                                        Some(s) => *s,
                                        None => {
                                            let s = b.slice(*t, 0, half, half + 1)?;
                                            slices.insert((*t, half), s);
                                            s
                                        }
                                    }
                                }
                                M::One(t) => *t,
                            };
                            ins.push(t);
                        }
                        let op = subst_op(&node.op, &symbols(Some(half)));
                        per.push(b.node_named(&format!("{}.half{half}", node.name), op, &ins)?);
                    }
                    let mut outs = vec![];
                    for (j, o) in node.outputs.iter().enumerate() {
                        let (p0, p1) = (per[0][j], per[1][j]);
                        outs.push(if mentions_text(&o.shape) {
                            M::Halves([p0, p1])
                        } else if batched(&o.shape) {
                            M::One(b.concat(&[p0, p1], 0)?)
                        } else {
                            return Err(err(
                                &node.name,
                                format!(
                                    "per-half result {} has neither the text length nor the batch",
                                    o.shape
                                ),
                            ));
                        });
                    }
                    outs
                }
            }
        };
        for (i, m) in outs.into_iter().enumerate() {
            map.insert(Value { node: k, out: i }, m);
        }
    }
    for (name, v) in &g.outputs {
        match &map[v] {
            M::One(t) => b.output(name, *t)?,
            M::Halves(h) => {
                b.output(&format!("{name}_0"), h[0])?;
                b.output(&format!("{name}_1"), h[1])?;
            }
        }
    }
    Ok(b.finish())
}

/// Apply the CFG strategy to `g` and its blocks.
pub fn run(g: &Graph, join: CfgJoin) -> Result<Graph> {
    map_all(g, |g| {
        reject_masks(g)?;
        match join {
            CfgJoin::Batched => Ok(g.clone()),
            CfgJoin::SplitHalves => split_halves(g),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder};

    /// A miniature joint-attention block: text first, then image.
    fn joint(mask: MaskKind) -> Graph {
        let mut b = GraphBuilder::new("a");
        let (bb, lt) = (Dim::sym(BATCH), Dim::sym(TEXT));
        let x = b
            .input(
                "img",
                [bb.clone(), Dim::Const(1), Dim::Const(6), Dim::Const(4)],
                DType::F32,
            )
            .unwrap();
        let t = b
            .input(
                "txt",
                [bb.clone(), Dim::Const(1), lt.clone(), Dim::Const(4)],
                DType::F32,
            )
            .unwrap();
        let s = b
            .input(
                "scale",
                [bb.clone(), Dim::Const(1), Dim::Const(1), Dim::Const(4)],
                DType::F32,
            )
            .unwrap();
        let t = b.mul(t, s).unwrap();
        let j = b.concat(&[t, x], 2).unwrap();
        let m = (mask == MaskKind::KeyPadding).then(|| {
            b.input("m", [bb, lt.add(&Dim::Const(6))], DType::Bool)
                .unwrap()
        });
        let o = b.sdpa(j, j, j, 0.5, mask, m).unwrap();
        let ot = b.slice(o, 2, 0, lt.clone()).unwrap();
        let oi = b.slice(o, 2, lt.clone(), lt.add(&Dim::Const(6))).unwrap();
        b.output("img", oi).unwrap();
        b.output("txt", ot).unwrap();
        b.finish()
    }

    #[test]
    fn split_halves_gives_each_half_its_own_text_and_unmasked_attention() {
        let g = run(&joint(MaskKind::None), CfgJoin::SplitHalves).unwrap();
        let ins: Vec<String> = g
            .inputs
            .iter()
            .map(|i| format!("{} {}", i.name, i.ty.shape))
            .collect();
        assert_eq!(
            ins,
            [
                "img [2, 1, 6, 4]",
                "txt_0 [1, 1, L_txt0, 4]",
                "txt_1 [1, 1, L_txt1, 4]",
                "scale [2, 1, 1, 4]"
            ]
        );
        assert_eq!(g.count_op("sdpa"), 2);
        for n in g.nodes.iter().filter(|n| n.op.name() == "sdpa") {
            assert_eq!(
                n.op,
                Op::Sdpa {
                    scale: 0.5,
                    mask: MaskKind::None
                }
            );
            assert_eq!(n.outputs[0].shape.0[0], Dim::Const(1));
        }
        let outs: Vec<String> = g
            .outputs
            .iter()
            .map(|(n, v)| format!("{n} {}", g.ty(*v).shape))
            .collect();
        assert_eq!(
            outs,
            [
                "img [2, 1, 6, 4]",
                "txt_0 [1, 1, L_txt0, 4]",
                "txt_1 [1, 1, L_txt1, 4]"
            ]
        );
    }

    #[test]
    fn batched_leaves_the_graph_alone() {
        let g = joint(MaskKind::None);
        assert_eq!(run(&g, CfgJoin::Batched).unwrap(), g);
    }

    #[test]
    fn masks_are_rejected() {
        for join in [CfgJoin::Batched, CfgJoin::SplitHalves] {
            let e = run(&joint(MaskKind::KeyPadding), join).unwrap_err();
            assert!(
                e.to_string().contains("key-padding mask in the hot loop"),
                "{e}"
            );
        }
    }
}
