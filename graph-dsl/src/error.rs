//! Errors of the DSL: every variant says where (node name, op) and what (the shapes).

use crate::shape::{Dim, Shape};

/// An error found while building or transforming a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DslError {
    // === Shape errors ===
    /// Two operands whose shapes do not fit together.
    #[error("node `{node}` ({op}): shapes {lhs} and {rhs} do not fit: {why}")]
    ShapeMismatch {
        node: String,
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
        why: String,
    },
    /// One operand with a shape the op cannot take.
    #[error("node `{node}` ({op}): bad input shape {shape}: {why}")]
    BadShape {
        node: String,
        op: &'static str,
        shape: Shape,
        why: String,
    },
    /// An attribute (axis, permutation, size) that does not fit the operand.
    #[error("node `{node}` ({op}): {why}")]
    BadAttr {
        node: String,
        op: &'static str,
        why: String,
    },
    /// An op given the wrong number of inputs.
    #[error("node `{node}` ({op}): expected {expected} inputs, got {got}")]
    Arity {
        node: String,
        op: &'static str,
        expected: usize,
        got: usize,
    },

    // === Names ===
    /// Two nodes, inputs or weights with the same name.
    #[error("duplicate name `{name}` in graph `{graph}`")]
    DuplicateName { graph: String, name: String },
    /// A call to a block that does not exist.
    #[error("node `{node}`: unknown block `{block}`")]
    UnknownBlock { node: String, block: String },

    // === Specialization ===
    /// A dim that must be known at compile time is still symbolic.
    #[error("dim {dim} is not bound ({context})")]
    UnboundSymbol { dim: Dim, context: String },
    /// A value that must divide evenly does not.
    #[error("{what} must be a multiple of {by}; got {value}")]
    NotDivisible {
        what: String,
        value: usize,
        by: usize,
    },
    /// A symbol bound twice to different values, or to something nonsensical.
    #[error("symbol `{sym}`: {why}")]
    BadBinding { sym: String, why: String },

    // === Passes ===
    /// A pass met a graph it cannot transform.
    #[error("pass `{pass}`, node `{node}`: {why}")]
    Pass {
        pass: &'static str,
        node: String,
        why: String,
    },
}

/// Result with [`DslError`].
pub type Result<T, E = DslError> = std::result::Result<T, E>;
