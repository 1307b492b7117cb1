//! CFG batching: decide at compile time how the conditional and unconditional halves of a
//! CFG batch are joined. MLX's masked attention is several times slower than unmasked
//! (design.md, "Keep masks out of the hot loop"), and the two prompts have different text
//! lengths, so no strategy here keeps a key-padding mask.
//!
//! * [`CfgJoin::Batched`]: leave the graph as written (batch `B`, one text length); a
//!   key-padding mask is rejected. The caller runs each half unpadded, or both at once
//!   when their lengths agree.
//! * [`CfgJoin::SplitHalves`]: one call for both halves, each with its own text length
//!   (`L_txt0`, `L_txt1`), no padding, no mask. (`B` and `L_txt` stand here for the
//!   model's batch and text-length symbols, given as [`CfgSymbols`].)
//!   - each half is `N` images of one text (`N` a run-time symbol, [`CfgSymbols::images`]:
//!     several images of one prompt);
//!   - the image stream (batched values, `B` → `2N`: the conditional half's `N` images,
//!     then the unconditional half's) runs at batch `2N`;
//!   - the text stream (values `[B, L_txt, ..]`) is *packed*: both halves' rows one after
//!     the other in one `[N, L_txt0 + L_txt1, ..]` value, so its linears, norms and MLPs
//!     run once for both halves (a matmul reads its weights once, not twice). A
//!     per-sample row `[B, 1, ..]` that meets packed text (the timestep's modulation) is
//!     expanded to the packed rows: half 0's rows for the first `L_txt0` rows, half 1's
//!     for the rest (so the halves may even have different timesteps);
//!   - every op that mixes rows (attention, the joint heads, slices and reshapes along the
//!     sequence) runs per half on that half's rows; other text-length values (the RoPE
//!     tables `[L_txt, ..]`) are per half (`name_0`, `name_1`); a per-half result without
//!     the text length is joined back into the batch, one with it is packed again.
//!
//!   So every attention call is an unmasked batch-`N` call over `L_txt_i + L_img` tokens.

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

/// The model's names for the symbols the CFG split works on: the batch (`B` → 2 halves of
/// `images` each), the text length (one per half: `{text}0`, `{text}1`) and the images per
/// half, a new run-time symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CfgSymbols {
    pub batch: String,
    pub text: String,
    pub images: String,
}

impl CfgSymbols {
    /// Images per half.
    fn n(&self) -> Dim {
        Dim::sym(&self.images)
    }

    /// The text length of half `i`.
    fn half_text(&self, i: usize) -> Dim {
        Dim::sym(&format!("{}{i}", self.text))
    }
}

fn err(node: &str, why: String) -> DslError {
    DslError::Pass {
        pass: "cfg_batch",
        node: node.to_string(),
        why,
    }
}

/// Whether any input or node output of `g` mentions `symbol`.
fn uses_symbol(g: &Graph, symbol: &str) -> bool {
    let s = symbol.to_string();
    g.inputs.iter().any(|i| i.ty.shape.symbols().contains(&s))
        || g.nodes
            .iter()
            .any(|n| n.outputs.iter().any(|o| o.shape.symbols().contains(&s)))
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
fn symbols(sy: &CfgSymbols, half: Option<usize>) -> BTreeMap<String, Dim> {
    match half {
        None => BTreeMap::from([(sy.batch.clone(), sy.n().mul(2))]),
        Some(i) => BTreeMap::from([
            (sy.batch.clone(), sy.n()),
            (sy.text.clone(), sy.half_text(i)),
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
            txt_offset: subst(&s.txt_offset, m),
            ..s.clone()
        }),
        _ => op.clone(),
    }
}

fn mentions_text(sy: &CfgSymbols, s: &Shape) -> bool {
    s.symbols().contains(&sy.text)
}

fn batched(sy: &CfgSymbols, s: &Shape) -> bool {
    s.0.first() == Some(&Dim::sym(&sy.batch))
}

#[derive(Clone)]
enum M {
    One(Tensor),
    /// Per half (batch `N`, that half's text length).
    Halves([Tensor; 2]),
    /// Both halves' text rows in one `[N, L_txt0 + L_txt1, ..]` value.
    Packed(Tensor),
}

/// `[B, L_txt, ..]`: a text-stream value that can be packed.
fn packable(sy: &CfgSymbols, s: &Shape) -> bool {
    batched(sy, s) && s.0.get(1) == Some(&Dim::sym(&sy.text))
}

/// Ops that treat the rows of a `[B, L, ..]` value independently, so they can run on the
/// packed text stream.
fn row_wise(op: &Op) -> bool {
    matches!(
        op,
        Op::Linear { .. }
            | Op::NormModulate { .. }
            | Op::GateResidual
            | Op::GateResidualNormModulate { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Cast(_)
            | Op::CastLike
            | Op::Clamp { .. }
    )
}

/// Symbols of the packed text stream: batch `N`, both halves' rows.
fn packed_symbols(sy: &CfgSymbols) -> BTreeMap<String, Dim> {
    BTreeMap::from([
        (sy.batch.clone(), sy.n()),
        (sy.text.clone(), sy.half_text(0).add(&sy.half_text(1))),
    ])
}

/// Memoized conversions between the forms of one value.
struct Views<'a> {
    sy: &'a CfgSymbols,
    /// (batched value, half) → its `N` rows on axis 0.
    batch_half: BTreeMap<(Tensor, usize), Tensor>,
    /// (packed value, half) → that half's rows.
    rows: BTreeMap<(Tensor, usize), Tensor>,
    /// halves → packed.
    packed: BTreeMap<[Tensor; 2], Tensor>,
    /// per-sample row → expanded to the packed text rows.
    expanded: BTreeMap<Tensor, Tensor>,
}

impl Views<'_> {
    fn batch_half(&mut self, b: &mut GraphBuilder, t: Tensor, half: usize) -> Result<Tensor> {
        if let Some(s) = self.batch_half.get(&(t, half)) {
            return Ok(*s);
        }
        let name = format!("{}.half{half}", b.name_of(t));
        let n = self.sy.n();
        let s = b.slice(t, 0, n.mul(half), n.mul(half + 1))?;
        let s = b.name(s, &name);
        self.batch_half.insert((t, half), s);
        Ok(s)
    }

    fn rows(&mut self, b: &mut GraphBuilder, t: Tensor, half: usize) -> Result<Tensor> {
        if let Some(s) = self.rows.get(&(t, half)) {
            return Ok(*s);
        }
        let (l0, l1) = (self.sy.half_text(0), self.sy.half_text(1));
        let name = format!("{}.half{half}", b.name_of(t));
        let s = match half {
            0 => b.slice(t, 1, 0, l0)?,
            _ => b.slice(t, 1, l0.clone(), l0.add(&l1))?,
        };
        let s = b.name(s, &name);
        self.rows.insert((t, half), s);
        Ok(s)
    }

    /// A per-sample row `[B, 1, ..]` as `[N, L_txt0 + L_txt1, ..]`: each half's rows
    /// repeated over that half's packed text rows.
    fn row_expanded(
        &mut self,
        b: &mut GraphBuilder,
        t: Tensor,
        shape: &Shape,
        node: &str,
    ) -> Result<Tensor> {
        if let Some(e) = self.expanded.get(&t) {
            return Ok(*e);
        }
        if shape.0.get(1) != Some(&Dim::Const(1)) {
            return Err(err(
                node,
                format!(
                    "a batched value {shape} meets the packed text but is not one row per sample"
                ),
            ));
        }
        let mut parts = vec![];
        for half in 0..2 {
            let row = self.batch_half(b, t, half)?;
            let mut dims = shape.0.clone();
            dims[0] = self.sy.n();
            dims[1] = self.sy.half_text(half);
            parts.push(b.broadcast_to(row, dims)?);
        }
        let name = format!("{}.rows", b.name_of(t));
        let e = b.concat(&parts, 1)?;
        let e = b.name(e, &name);
        self.expanded.insert(t, e);
        Ok(e)
    }

    fn packed(&mut self, b: &mut GraphBuilder, h: [Tensor; 2]) -> Result<Tensor> {
        if let Some(p) = self.packed.get(&h) {
            return Ok(*p);
        }
        let name = format!("{}.packed", b.name_of(h[0]).trim_end_matches(".half0"));
        let p = b.concat(&h, 1)?;
        let p = b.name(p, &name);
        self.packed.insert(h, p);
        Ok(p)
    }
}

fn split_halves(g: &Graph, sy: &CfgSymbols) -> Result<Graph> {
    let mut b = GraphBuilder::new(&g.name);
    b.adopt_weights_and_blocks(g);
    let mut map: BTreeMap<Value, M> = BTreeMap::new();
    let mut views = Views {
        sy,
        batch_half: BTreeMap::new(),
        rows: BTreeMap::new(),
        packed: BTreeMap::new(),
        expanded: BTreeMap::new(),
    };
    for (k, node) in g.nodes.iter().enumerate() {
        let outs: Vec<M> = match &node.op {
            Op::Input(i) => {
                let decl = &g.inputs[*i];
                if packable(sy, &decl.ty.shape) {
                    let s = subst_shape(&decl.ty.shape, &packed_symbols(sy));
                    vec![M::Packed(b.input(&decl.name, s, decl.ty.dtype)?)]
                } else if mentions_text(sy, &decl.ty.shape) {
                    let mut h = vec![];
                    for half in 0..2 {
                        let s = subst_shape(&decl.ty.shape, &symbols(sy, Some(half)));
                        h.push(b.input(&format!("{}_{half}", decl.name), s, decl.ty.dtype)?);
                    }
                    vec![M::Halves([h[0], h[1]])]
                } else {
                    let s = subst_shape(&decl.ty.shape, &symbols(sy, None));
                    vec![M::One(b.input(&decl.name, s, decl.ty.dtype)?)]
                }
            }
            Op::Call { block, .. } | Op::Repeat { block, .. } => {
                if b.block(block).is_none() {
                    return Err(err(&node.name, format!("unknown block {block}")));
                }
                // a scan's sliced inputs and stacked outputs are split per half by their row
                // (without the layer axis), which this pass does not do: none may carry text
                if let Op::Repeat { carry, sliced, .. } = node.op {
                    let sliced_in = node.inputs[carry..carry + sliced].iter().map(|v| g.ty(*v));
                    let stacked_out = node.outputs[carry..].iter();
                    if let Some(t) = sliced_in
                        .chain(stacked_out)
                        .find(|t| mentions_text(sy, &t.shape))
                    {
                        return Err(err(
                            &node.name,
                            format!(
                                "a sliced input or stacked output {} has the text length",
                                t.shape
                            ),
                        ));
                    }
                }
                let mut ins = vec![];
                let (mut carry_new, mut sliced_new) = (0, 0);
                for (j, v) in node.inputs.iter().enumerate() {
                    let n = match &map[v] {
                        M::One(t) | M::Packed(t) => {
                            ins.push(*t);
                            1
                        }
                        M::Halves(h) => {
                            ins.extend(h);
                            2
                        }
                    };
                    if let Op::Repeat { carry, sliced, .. } = node.op {
                        if j < carry {
                            carry_new += n;
                        } else if j < carry + sliced {
                            sliced_new += n;
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
                        sliced: sliced_new,
                    },
                    other => other.clone(),
                };
                // the body was transformed the same way: a packable text output comes back
                // packed, another one that mentions the text length as two
                let res = b.node_named(&node.name, op, &ins)?;
                let mut r = res.into_iter();
                let mut outs = vec![];
                for o in &node.outputs {
                    let mut next = || {
                        r.next()
                            .ok_or_else(|| err(&node.name, "block outputs do not match".into()))
                    };
                    if packable(sy, &o.shape) {
                        outs.push(M::Packed(next()?));
                    } else if mentions_text(sy, &o.shape) {
                        let (a, c) = (next()?, next()?);
                        outs.push(M::Halves([a, c]));
                    } else {
                        outs.push(M::One(next()?));
                    }
                }
                outs
            }
            _ => {
                let texty = |v: &Value| matches!(map[v], M::Halves(_) | M::Packed(_));
                if !node.inputs.iter().any(texty) {
                    let ins: Vec<Tensor> = node
                        .inputs
                        .iter()
                        .map(|v| match &map[v] {
                            M::One(t) => *t,
                            M::Halves(h) => h[0],
                            M::Packed(t) => *t,
                        })
                        .collect();
                    let op = subst_op(&node.op, &symbols(sy, None));
                    b.node_named(&node.name, op, &ins)?
                        .into_iter()
                        .map(M::One)
                        .collect()
                } else if row_wise(&node.op)
                    && node
                        .inputs
                        .iter()
                        .all(|v| !texty(v) || packable(sy, &g.ty(*v).shape))
                    && node.outputs.iter().all(|o| packable(sy, &o.shape))
                {
                    // once, on both halves' rows
                    let mut ins = vec![];
                    for v in &node.inputs {
                        ins.push(match &map[v] {
                            M::Packed(t) => *t,
                            M::Halves(h) => views.packed(&mut b, *h)?,
                            M::One(t) if batched(sy, &g.ty(*v).shape) => {
                                views.row_expanded(&mut b, *t, &g.ty(*v).shape, &node.name)?
                            }
                            M::One(t) => *t,
                        });
                    }
                    let op = subst_op(&node.op, &packed_symbols(sy));
                    b.node_named(&node.name, op, &ins)?
                        .into_iter()
                        .map(M::Packed)
                        .collect()
                } else {
                    let mut per: Vec<Vec<Tensor>> = vec![];
                    for half in 0..2 {
                        let mut ins = vec![];
                        for v in &node.inputs {
                            ins.push(match &map[v] {
                                M::Halves(h) => h[half],
                                M::Packed(t) => views.rows(&mut b, *t, half)?,
                                M::One(t) if batched(sy, &g.ty(*v).shape) => {
                                    views.batch_half(&mut b, *t, half)?
                                }
                                M::One(t) => *t,
                            });
                        }
                        let op = subst_op(&node.op, &symbols(sy, Some(half)));
                        per.push(b.node_named(&format!("{}.half{half}", node.name), op, &ins)?);
                    }
                    let mut outs = vec![];
                    for (j, o) in node.outputs.iter().enumerate() {
                        let (p0, p1) = (per[0][j], per[1][j]);
                        outs.push(if mentions_text(sy, &o.shape) {
                            M::Halves([p0, p1])
                        } else if batched(sy, &o.shape) {
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
        let o = &g.ty(*v).shape;
        match &map[v] {
            M::One(t) => b.output(name, *t)?,
            M::Packed(t) => b.output(name, *t)?,
            M::Halves(h) if packable(sy, o) => {
                let p = views.packed(&mut b, *h)?;
                b.output(name, p)?
            }
            M::Halves(h) => {
                b.output(&format!("{name}_0"), h[0])?;
                b.output(&format!("{name}_1"), h[1])?;
            }
        }
    }
    Ok(b.finish())
}

/// Apply the CFG strategy to `g` and its blocks; `SplitHalves` needs the model's batch,
/// text-length and images-per-half symbols (the last one new to the graph).
pub fn run(g: &Graph, join: CfgJoin, sy: &CfgSymbols) -> Result<Graph> {
    if join == CfgJoin::SplitHalves
        && (sy.batch.is_empty() || sy.text.is_empty() || sy.images.is_empty())
    {
        return Err(err(
            &g.name,
            "split halves needs the batch, text-length and images-per-half symbols".into(),
        ));
    }
    map_all(g, |g| {
        reject_masks(g)?;
        if join == CfgJoin::SplitHalves && uses_symbol(g, &sy.images) {
            return Err(err(
                &g.name,
                format!(
                    "the graph already uses `{}`, the images-per-half symbol the split makes",
                    sy.images
                ),
            ));
        }
        match join {
            CfgJoin::Batched => Ok(g.clone()),
            CfgJoin::SplitHalves => split_halves(g, sy),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, GraphBuilder};

    fn syms() -> CfgSymbols {
        CfgSymbols {
            batch: "B".into(),
            text: "L_txt".into(),
            images: "N".into(),
        }
    }

    /// A miniature joint-attention block: text first, then image.
    fn joint(mask: MaskKind) -> Graph {
        let mut b = GraphBuilder::new("a");
        let (bb, lt) = (Dim::sym("B"), Dim::sym("L_txt"));
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
        let g = run(&joint(MaskKind::None), CfgJoin::SplitHalves, &syms()).unwrap();
        let ins: Vec<String> = g
            .inputs
            .iter()
            .map(|i| format!("{} {}", i.name, i.ty.shape))
            .collect();
        assert_eq!(
            ins,
            [
                "img [2*N, 1, 6, 4]",
                "txt_0 [N, 1, L_txt0, 4]",
                "txt_1 [N, 1, L_txt1, 4]",
                "scale [2*N, 1, 1, 4]"
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
            assert_eq!(n.outputs[0].shape.0[0], Dim::sym("N"));
        }
        let outs: Vec<String> = g
            .outputs
            .iter()
            .map(|(n, v)| format!("{n} {}", g.ty(*v).shape))
            .collect();
        assert_eq!(
            outs,
            [
                "img [2*N, 1, 6, 4]",
                "txt_0 [N, 1, L_txt0, 4]",
                "txt_1 [N, 1, L_txt1, 4]"
            ]
        );
    }

    #[test]
    fn split_halves_packs_the_text_stream_and_expands_per_sample_rows() {
        let mut b = GraphBuilder::new("p");
        let (bb, lt) = (Dim::sym("B"), Dim::sym("L_txt"));
        let txt = b
            .input("txt", [bb.clone(), lt.clone(), Dim::Const(4)], DType::F32)
            .unwrap();
        let img = b
            .input(
                "img",
                [bb.clone(), Dim::Const(6), Dim::Const(4)],
                DType::F32,
            )
            .unwrap();
        let m = b
            .input("mod", [bb, Dim::Const(1), Dim::Const(4)], DType::F32)
            .unwrap();
        let t = b.add(txt, m).unwrap(); // row-wise: once, packed
        let j = b.concat(&[t, img], 1).unwrap(); // mixes rows: per half
        let tj = b.slice(j, 1, 0, lt).unwrap();
        let t = b.mul(tj, m).unwrap(); // packed again
        b.output("txt", t).unwrap();
        let g = run(&b.finish(), CfgJoin::SplitHalves, &syms()).unwrap();
        let shape = |n: &str| {
            let i = g.inputs.iter().find(|i| i.name == n).unwrap();
            i.ty.shape.to_string()
        };
        assert_eq!(shape("txt"), "[N, L_txt0+L_txt1, 4]");
        assert_eq!(shape("img"), "[2*N, 6, 4]");
        assert_eq!(g.count_op("binary"), 2); // each row-wise op once for both halves
        assert_eq!(g.count_op("broadcast_to"), 2); // `mod`, one row per half, expanded once
        let (name, out) = &g.outputs[0];
        assert_eq!(
            (name.as_str(), g.ty(*out).shape.to_string().as_str()),
            ("txt", "[N, L_txt0+L_txt1, 4]")
        );
    }

    #[test]
    fn batched_leaves_the_graph_alone() {
        let g = joint(MaskKind::None);
        assert_eq!(run(&g, CfgJoin::Batched, &syms()).unwrap(), g);
    }

    #[test]
    fn masks_are_rejected() {
        for join in [CfgJoin::Batched, CfgJoin::SplitHalves] {
            let e = run(&joint(MaskKind::KeyPadding), join, &syms()).unwrap_err();
            assert!(
                e.to_string().contains("key-padding mask in the hot loop"),
                "{e}"
            );
        }
    }
}
