//! Shape inference: one rule per op, one file per op family. Used by the builder as nodes
//! are added and again by passes after they change shapes, so a bad graph is rejected
//! with the node, the op and the shapes involved.
//!
//! [`infer`] sends each op to its family's `infer` ([`Op::family`] says which); adding an
//! op is an arm in its family's file and the op in `Op::family`.

mod attention;
mod blocks;
mod collective;
mod conv;
mod elementwise;
mod fused;
mod linear;
mod norm;
mod shape;
mod sources;

use std::collections::BTreeMap;

use crate::error::{DslError, Result};
use crate::ir::{Graph, Op, OpFamily, TensorTy};
use crate::shape::{DType, Dim, Shape};

/// One node under inference: the graph it is in (for inputs, weights and blocks), its
/// name and op (for errors), and its input types.
struct Cx<'a> {
    g: &'a Graph,
    node: &'a str,
    op: &'a Op,
    inputs: &'a [TensorTy],
}

impl<'a> Cx<'a> {
    /// `Arity` unless the node has `n` inputs.
    fn arity(&self, n: usize) -> Result<()> {
        if self.inputs.len() == n {
            Ok(())
        } else {
            Err(DslError::Arity {
                node: self.node.to_string(),
                op: self.op.name(),
                expected: n,
                got: self.inputs.len(),
            })
        }
    }

    /// Shape of input `i`.
    fn s(&self, i: usize) -> &'a Shape {
        &self.inputs[i].shape
    }

    /// Dtype of input `i`.
    fn dt(&self, i: usize) -> DType {
        self.inputs[i].dtype
    }

    /// Two operands whose shapes do not fit together.
    fn mismatch(&self, lhs: &Shape, rhs: &Shape, why: impl Into<String>) -> DslError {
        DslError::ShapeMismatch {
            node: self.node.to_string(),
            op: self.op.name(),
            lhs: lhs.clone(),
            rhs: rhs.clone(),
            why: why.into(),
        }
    }

    /// One operand with a shape the op cannot take.
    fn bad(&self, shape: &Shape, why: impl Into<String>) -> DslError {
        DslError::BadShape {
            node: self.node.to_string(),
            op: self.op.name(),
            shape: shape.clone(),
            why: why.into(),
        }
    }

    /// An attribute that does not fit the operands.
    fn attr(&self, why: impl Into<String>) -> DslError {
        DslError::BadAttr {
            node: self.node.to_string(),
            op: self.op.name(),
            why: why.into(),
        }
    }
}

fn ty(shape: Shape, dtype: DType) -> TensorTy {
    TensorTy { shape, dtype }
}

fn one(t: TensorTy) -> Result<Vec<TensorTy>> {
    Ok(vec![t])
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
    let cx = Cx {
        g,
        node,
        op,
        inputs,
    };
    match op.family() {
        OpFamily::Sources => sources::infer(&cx),
        OpFamily::Linear => linear::infer(&cx),
        OpFamily::Norm => norm::infer(&cx),
        OpFamily::Attention => attention::infer(&cx),
        OpFamily::Fused => fused::infer(&cx),
        OpFamily::Elementwise => elementwise::infer(&cx),
        OpFamily::Conv => conv::infer(&cx),
        OpFamily::Shape => shape::infer(&cx),
        OpFamily::Collective => collective::infer(&cx),
        OpFamily::Blocks => blocks::infer(&cx),
    }
}
