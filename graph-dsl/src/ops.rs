//! Shape inference: one rule per op. Used by the builder as nodes are added and again by
//! passes after they change shapes, so a bad graph is rejected with the node, the op and
//! the shapes involved.

use std::collections::BTreeMap;

use crate::error::{DslError, Result};
use crate::ir::{Graph, MaskKind, Op, TensorTy};
use crate::shape::{broadcast, DType, Dim, Shape};

fn mismatch(node: &str, op: &Op, lhs: &Shape, rhs: &Shape, why: impl Into<String>) -> DslError {
    DslError::ShapeMismatch {
        node: node.to_string(),
        op: op.name(),
        lhs: lhs.clone(),
        rhs: rhs.clone(),
        why: why.into(),
    }
}

fn bad(node: &str, op: &Op, shape: &Shape, why: impl Into<String>) -> DslError {
    DslError::BadShape {
        node: node.to_string(),
        op: op.name(),
        shape: shape.clone(),
        why: why.into(),
    }
}

fn attr(node: &str, op: &Op, why: impl Into<String>) -> DslError {
    DslError::BadAttr {
        node: node.to_string(),
        op: op.name(),
        why: why.into(),
    }
}

fn ty(shape: Shape, dtype: DType) -> TensorTy {
    TensorTy { shape, dtype }
}

/// Substitute symbols by dims (for block calls).
pub fn subst(d: &Dim, map: &BTreeMap<String, Dim>) -> Dim {
    match d {
        Dim::Const(_) => d.clone(),
        Dim::Sym(s) => map.get(s).cloned().unwrap_or_else(|| d.clone()),
        Dim::Affine { terms, konst } => {
            let mut pos = Dim::Const((*konst).max(0) as usize);
            let mut neg = Dim::Const((-*konst).max(0) as usize);
            for (s, c) in terms {
                let v = map.get(s).cloned().unwrap_or_else(|| Dim::sym(s));
                if *c > 0 {
                    pos = pos.add(&v.mul(*c as usize));
                } else {
                    neg = neg.add(&v.mul((-*c) as usize));
                }
            }
            pos.sub(&neg).unwrap_or_else(|| d.clone())
        }
    }
}

/// Output types of `op` named `node` applied to `inputs`, in graph `g` (for inputs,
/// weights and blocks).
pub fn infer(g: &Graph, node: &str, op: &Op, inputs: &[TensorTy]) -> Result<Vec<TensorTy>> {
    let arity = |n: usize| -> Result<()> {
        if inputs.len() == n {
            Ok(())
        } else {
            Err(DslError::Arity {
                node: node.to_string(),
                op: op.name(),
                expected: n,
                got: inputs.len(),
            })
        }
    };
    let s = |i: usize| &inputs[i].shape;
    let dt = |i: usize| inputs[i].dtype;
    let one = |t: TensorTy| Ok(vec![t]);
    match op {
        Op::Input(i) => {
            arity(0)?;
            let d = g
                .inputs
                .get(*i)
                .ok_or_else(|| attr(node, op, "no such input"))?;
            one(d.ty.clone())
        }
        Op::Weight(i) => {
            arity(0)?;
            let w = g
                .weights
                .get(*i)
                .ok_or_else(|| attr(node, op, "no such weight"))?;
            let shape = w.loaded_shape().ok_or_else(|| {
                attr(
                    node,
                    op,
                    format!("transforms {:?} do not apply to {:?}", w.xforms, w.shape),
                )
            })?;
            one(ty(
                Shape(shape.into_iter().map(Dim::Const).collect()),
                w.dtype,
            ))
        }
        Op::Scalar(_) => {
            arity(0)?;
            one(ty(Shape(vec![]), DType::F32))
        }
        Op::ConstTensor { shape, data } => {
            arity(0)?;
            if shape.iter().product::<usize>() != data.len() {
                return Err(attr(
                    node,
                    op,
                    format!("{} values for shape {:?}", data.len(), shape),
                ));
            }
            one(ty(
                Shape(shape.iter().copied().map(Dim::Const).collect()),
                DType::F32,
            ))
        }
        Op::Arange { len, .. } => {
            arity(0)?;
            one(ty(Shape(vec![len.clone()]), DType::F32))
        }
        Op::Linear { bias } => {
            arity(if *bias { 3 } else { 2 })?;
            let (x, w) = (s(0), s(1));
            if w.rank() != 2 {
                return Err(bad(node, op, w, "weight must be [out, in]"));
            }
            if x.last() != Some(&w.0[1]) {
                return Err(mismatch(
                    node,
                    op,
                    x,
                    w,
                    "x's last dim must equal the weight's `in`",
                ));
            }
            if *bias && s(2).0 != vec![w.0[0].clone()] {
                return Err(mismatch(node, op, w, s(2), "bias must be [out]"));
            }
            let mut out = x.0.clone();
            *out.last_mut().expect("rank >= 1") = w.0[0].clone();
            one(ty(Shape(out), dt(0)))
        }
        Op::MatMul => {
            arity(2)?;
            let (a, b) = (s(0), s(1));
            if a.rank() < 2 || b.rank() < 2 {
                return Err(mismatch(node, op, a, b, "both operands need rank >= 2"));
            }
            let (ra, rb) = (a.rank(), b.rank());
            if a.0[ra - 1] != b.0[rb - 2] {
                return Err(mismatch(node, op, a, b, "inner dims differ"));
            }
            let lead = broadcast(
                &Shape(a.0[..ra - 2].to_vec()),
                &Shape(b.0[..rb - 2].to_vec()),
            )
            .ok_or_else(|| mismatch(node, op, a, b, "batch dims do not broadcast"))?;
            let mut out = lead.0;
            out.push(a.0[ra - 2].clone());
            out.push(b.0[rb - 1].clone());
            one(ty(Shape(out), dt(0)))
        }
        Op::Embedding => {
            arity(2)?;
            let (t, ids) = (s(0), s(1));
            if t.rank() != 2 {
                return Err(bad(node, op, t, "table must be [V, D]"));
            }
            if !matches!(dt(1), DType::I32 | DType::U32) {
                return Err(attr(
                    node,
                    op,
                    format!("ids must be integers, got {}", dt(1)),
                ));
            }
            let mut out = ids.0.clone();
            out.push(t.0[1].clone());
            one(ty(Shape(out), dt(0)))
        }
        Op::RmsNorm { affine, .. } => {
            arity(if *affine { 2 } else { 1 })?;
            if *affine && s(1).0 != vec![s(0).last().cloned().unwrap_or(Dim::Const(0))] {
                return Err(mismatch(
                    node,
                    op,
                    s(0),
                    s(1),
                    "weight must be [last dim of x]",
                ));
            }
            one(inputs[0].clone())
        }
        Op::LayerNorm { .. } => {
            arity(1)?;
            if s(0).rank() == 0 {
                return Err(bad(node, op, s(0), "needs rank >= 1"));
            }
            one(inputs[0].clone())
        }
        Op::ChannelL2Norm { .. } => {
            arity(2)?;
            if s(1).0 != vec![s(0).last().cloned().unwrap_or(Dim::Const(0))] {
                return Err(mismatch(
                    node,
                    op,
                    s(0),
                    s(1),
                    "gamma must be [channels of x]",
                ));
            }
            one(inputs[0].clone())
        }
        Op::Sdpa { mask, .. } => {
            arity(if *mask == MaskKind::KeyPadding { 4 } else { 3 })?;
            let (q, k, v) = (s(0), s(1), s(2));
            for x in [q, k, v] {
                if x.rank() != 4 {
                    return Err(bad(node, op, x, "q, k, v must be [B, H, L, D]"));
                }
            }
            if k != v && (k.0[..3] != v.0[..3]) {
                return Err(mismatch(node, op, k, v, "k and v must agree on [B, H, L]"));
            }
            if q.0[0] != k.0[0] || q.0[3] != k.0[3] {
                return Err(mismatch(node, op, q, k, "q and k must agree on B and D"));
            }
            if let (Some(hq), Some(hk)) = (q.0[1].as_const(), k.0[1].as_const()) {
                if hk == 0 || hq % hk != 0 {
                    return Err(mismatch(
                        node,
                        op,
                        q,
                        k,
                        "query heads must be a multiple of kv heads",
                    ));
                }
            }
            if *mask == MaskKind::KeyPadding && s(3).0 != vec![k.0[0].clone(), k.0[2].clone()] {
                return Err(mismatch(
                    node,
                    op,
                    k,
                    s(3),
                    "key-padding mask must be [B, Lk]",
                ));
            }
            let mut out = q.0.clone();
            out[3] = v.0[3].clone();
            one(ty(Shape(out), dt(0)))
        }
        Op::Rope { .. } => {
            arity(3)?;
            let x = s(0);
            if x.rank() != 4 {
                return Err(bad(node, op, x, "x must be [B, L, H, D]"));
            }
            let half = x.0[3]
                .as_const()
                .filter(|d| d % 2 == 0)
                .ok_or_else(|| bad(node, op, x, "head dim must be an even constant"))?;
            let want = Shape(vec![x.0[1].clone(), Dim::Const(half / 2)]);
            for i in [1, 2] {
                if *s(i) != want {
                    return Err(mismatch(
                        node,
                        op,
                        x,
                        s(i),
                        format!("tables must be {want}"),
                    ));
                }
            }
            one(inputs[0].clone())
        }
        Op::Unary(_) | Op::Clamp { .. } => {
            arity(1)?;
            one(inputs[0].clone())
        }
        Op::Cast(d) => {
            arity(1)?;
            one(ty(s(0).clone(), *d))
        }
        Op::CastLike => {
            arity(2)?;
            one(ty(s(0).clone(), dt(1)))
        }
        Op::Binary(_) => {
            arity(2)?;
            let out = broadcast(s(0), s(1))
                .ok_or_else(|| mismatch(node, op, s(0), s(1), "shapes do not broadcast"))?;
            // a scalar constant takes the other operand's dtype
            let d = if s(0).rank() == 0 { dt(1) } else { dt(0) };
            one(ty(out, d))
        }
        Op::Softmax { axis } => {
            arity(1)?;
            s(0).axis(*axis)
                .ok_or_else(|| attr(node, op, format!("axis {axis} out of range for {}", s(0))))?;
            one(inputs[0].clone())
        }
        Op::Reduce {
            axis, keep_dims, ..
        } => {
            arity(1)?;
            let a = s(0)
                .axis(*axis)
                .ok_or_else(|| attr(node, op, format!("axis {axis} out of range for {}", s(0))))?;
            let mut out = s(0).0.clone();
            if *keep_dims {
                out[a] = Dim::Const(1);
            } else {
                out.remove(a);
            }
            one(ty(Shape(out), dt(0)))
        }
        Op::Conv2d {
            stride,
            padding,
            bias,
        } => {
            arity(if *bias { 3 } else { 2 })?;
            let (x, w) = (s(0), s(1));
            if x.rank() != 4 || w.rank() != 4 {
                return Err(mismatch(
                    node,
                    op,
                    x,
                    w,
                    "x must be [B, H, W, Cin] and w [Cout, kh, kw, Cin]",
                ));
            }
            if x.0[3] != w.0[3] {
                return Err(mismatch(node, op, x, w, "input channels differ"));
            }
            if *bias && s(2).0 != vec![w.0[0].clone()] {
                return Err(mismatch(node, op, w, s(2), "bias must be [Cout]"));
            }
            let mut out = vec![x.0[0].clone()];
            for i in 0..2 {
                let k = w.0[1 + i]
                    .as_const()
                    .ok_or_else(|| bad(node, op, w, "kernel must be constant"))?;
                let (p0, p1) = padding[i];
                let span = x.0[1 + i]
                    .add(&Dim::Const(p0 + p1))
                    .sub(&Dim::Const(k))
                    .ok_or_else(|| mismatch(node, op, x, w, "kernel larger than padded input"))?;
                let o = span
                    .div_exact(stride[i])
                    .ok_or_else(|| {
                        bad(
                            node,
                            op,
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
            one(ty(Shape(out), dt(0)))
        }
        Op::CausalConv3d { pad, bias } => {
            arity(if *bias { 3 } else { 2 })?;
            let (x, w) = (s(0), s(1));
            if x.rank() != 5 || w.rank() != 5 {
                return Err(mismatch(
                    node,
                    op,
                    x,
                    w,
                    "x must be [B, T, H, W, Cin] and w [Cout, Cin, kt, kh, kw]",
                ));
            }
            if x.0[4] != w.0[1] {
                return Err(mismatch(node, op, x, w, "input channels differ"));
            }
            if *bias && s(2).0 != vec![w.0[0].clone()] {
                return Err(mismatch(node, op, w, s(2), "bias must be [Cout]"));
            }
            let mut out = vec![x.0[0].clone(), x.0[1].clone()];
            for i in 0..2 {
                let k = w.0[3 + i]
                    .as_const()
                    .ok_or_else(|| bad(node, op, w, "kernel must be constant"))?;
                let o = x.0[2 + i]
                    .add(&Dim::Const(2 * pad + 1))
                    .sub(&Dim::Const(k))
                    .ok_or_else(|| mismatch(node, op, x, w, "kernel larger than padded input"))?;
                out.push(o);
            }
            out.push(w.0[0].clone());
            one(ty(Shape(out), dt(0)))
        }
        Op::Upsample2x => {
            arity(1)?;
            let x = s(0);
            if x.rank() != 4 {
                return Err(bad(node, op, x, "x must be [B, H, W, C]"));
            }
            let out = vec![x.0[0].clone(), x.0[1].mul(2), x.0[2].mul(2), x.0[3].clone()];
            one(ty(Shape(out), dt(0)))
        }
        Op::Reshape(dims) => {
            arity(1)?;
            let to = Shape(dims.clone());
            if let (Some(a), Some(b)) = (s(0).numel(), to.numel()) {
                if a != b {
                    return Err(mismatch(
                        node,
                        op,
                        s(0),
                        &to,
                        format!("{a} elements cannot become {b}"),
                    ));
                }
            }
            one(ty(to, dt(0)))
        }
        Op::Transpose(perm) => {
            arity(1)?;
            let mut sorted = perm.clone();
            sorted.sort();
            if sorted != (0..s(0).rank()).collect::<Vec<_>>() {
                return Err(attr(
                    node,
                    op,
                    format!("{perm:?} is not a permutation of the axes of {}", s(0)),
                ));
            }
            one(ty(
                Shape(perm.iter().map(|&i| s(0).0[i].clone()).collect()),
                dt(0),
            ))
        }
        Op::BroadcastTo(dims) => {
            arity(1)?;
            let to = Shape(dims.clone());
            if broadcast(s(0), &to).as_ref() != Some(&to) {
                return Err(mismatch(
                    node,
                    op,
                    s(0),
                    &to,
                    "does not broadcast to the target",
                ));
            }
            one(ty(to, dt(0)))
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err(DslError::Arity {
                    node: node.to_string(),
                    op: op.name(),
                    expected: 1,
                    got: 0,
                });
            }
            let first = s(0);
            if *axis >= first.rank() {
                return Err(attr(
                    node,
                    op,
                    format!("axis {axis} out of range for {first}"),
                ));
            }
            let mut total = Dim::Const(0);
            for t in inputs {
                let x = &t.shape;
                let same = x.rank() == first.rank()
                    && (0..x.rank()).all(|i| i == *axis || x.0[i] == first.0[i]);
                if !same {
                    return Err(mismatch(
                        node,
                        op,
                        first,
                        x,
                        format!("all dims but axis {axis} must agree"),
                    ));
                }
                total = total.add(&x.0[*axis]);
            }
            let mut out = first.0.clone();
            out[*axis] = total;
            one(ty(Shape(out), dt(0)))
        }
        Op::Slice { axis, start, end } => {
            arity(1)?;
            let x = s(0);
            let d =
                x.0.get(*axis)
                    .ok_or_else(|| attr(node, op, format!("axis {axis} out of range for {x}")))?;
            let len = end.sub(start).ok_or_else(|| {
                attr(
                    node,
                    op,
                    format!("slice {start}..{end} is empty or reversed"),
                )
            })?;
            if d.sub(end).is_none() {
                return Err(attr(
                    node,
                    op,
                    format!("slice {start}..{end} exceeds dim {d} of {x}"),
                ));
            }
            let mut out = x.0.clone();
            out[*axis] = len;
            one(ty(Shape(out), dt(0)))
        }
        Op::Call { block, .. } | Op::Repeat { block, .. } => {
            let b = g.blocks.get(block).ok_or_else(|| DslError::UnknownBlock {
                node: node.to_string(),
                block: block.clone(),
            })?;
            arity(b.inputs.len())?;
            let mut map: BTreeMap<String, Dim> = BTreeMap::new();
            for (decl, actual) in b.inputs.iter().zip(inputs) {
                let (want, got) = (&decl.ty.shape, &actual.shape);
                if want.rank() != got.rank() {
                    return Err(mismatch(
                        node,
                        op,
                        want,
                        got,
                        format!("block input `{}` has another rank", decl.name),
                    ));
                }
                for (w, a) in want.0.iter().zip(&got.0) {
                    match w {
                        Dim::Sym(sym) => match map.get(sym) {
                            Some(prev) if prev != a => {
                                return Err(mismatch(
                                    node,
                                    op,
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
                                return Err(mismatch(
                                    node,
                                    op,
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
            if let Op::Repeat { carry, .. } = op {
                if *carry > outs.len() {
                    return Err(attr(node, op, "carry exceeds the block's outputs"));
                }
                for (i, o) in outs.iter().take(*carry).enumerate() {
                    if o.shape != inputs[i].shape {
                        return Err(mismatch(
                            node,
                            op,
                            &inputs[i].shape,
                            &o.shape,
                            format!("carried value {i} changes shape"),
                        ));
                    }
                }
            }
            Ok(outs)
        }
        Op::RopeTables(spec) => {
            arity(0)?;
            if let (Some(a), Some(b), Some(l)) = (
                spec.grid[0].as_const(),
                spec.grid[1].as_const(),
                spec.img_len.as_const(),
            ) {
                if a * b != l {
                    return Err(attr(
                        node,
                        op,
                        format!("grid {a}x{b} does not have {l} tokens"),
                    ));
                }
            }
            if spec.axes_dims.iter().any(|d| d % 2 != 0) {
                return Err(attr(node, op, "axis dims must be even"));
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
    }
}
