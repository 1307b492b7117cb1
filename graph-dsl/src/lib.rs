//! graph-dsl: a small graph language for the networks of qwen-aot.
//!
//! Model code calls a [`GraphBuilder`]: typed [`Tensor`] handles, one method per op,
//! names scoped like checkpoint keys (`transformer_blocks.0.attn.to_q`). Every node's
//! shape is inferred as it is added ([`ops::infer`]); a bad graph is a [`DslError`] that
//! names the node, the op and the shapes. Dims are constants or symbols ([`Dim`]).
//!
//! A [`Graph`] holds inputs, weights (checkpoint key, stored shape and dtype, and the
//! load-time [`WeightXform`]s), nodes in topological order, outputs, and reusable block
//! bodies called once (`Call`) or in a loop (`Repeat`).
//!
//! [`passes`] are separate named steps run in order by [`passes::run`]: `specialize`
//! (bind symbols), `cfg_batch` (how the CFG halves share attention), `rope_fold` (RoPE
//! tables to constants), `layout` (single-frame causal 3-D convs to NHWC 2-D convs),
//! `dce`. This crate knows nothing about mlx or Qwen.

pub mod builder;
pub mod error;
pub mod ir;
pub mod ops;
pub mod passes;
pub mod shape;

pub use builder::{GraphBuilder, QkvStream, Tensor};
pub use error::{DslError, Result};
pub use ir::{
    Binary, Graph, InputDecl, MaskKind, Node, NodeId, Op, OpFamily, Reduce, RopeLayout, RopeSpec,
    TensorTy, Unary, Value, WeightDecl, WeightPart, WeightXform,
};
pub use shape::{DType, Dim, Shape};
