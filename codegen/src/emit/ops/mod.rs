//! One lowering per op, one file per op family: a node becomes `let` statements of
//! mlx-rs calls with literal shapes. Each family's file has its inline snapshots right
//! under its lowerings.
//!
//! [`emit`] sends each op to its family's `emit`; adding an op is an arm in its family's
//! file and the op's name in that family's arm here.

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

use graph_dsl::{DType, Graph, Node, OpFamily, Shape, Value};
use proc_macro2::{Ident, TokenStream};
use quote::quote;

use super::{lit_f32, FnCx, Val};
use crate::error::Result;

/// Node `k` as its lowering sees it: the node (name, op, inputs, outputs) and the `&Array`
/// tokens of its inputs.
struct NodeCx<'a> {
    k: usize,
    g: &'a Graph,
    node: &'a Node,
    args: Vec<TokenStream>,
}

impl<'a> NodeCx<'a> {
    fn new(cx: &FnCx<'a>, k: usize) -> Result<Self> {
        let g = cx.g;
        let node = &g.nodes[k];
        let args = node
            .inputs
            .iter()
            .map(|v| cx.r(*v))
            .collect::<Result<Vec<_>>>()?;
        Ok(NodeCx { k, g, node, args })
    }

    /// The node's name.
    fn name(&self) -> &'a str {
        &self.node.name
    }

    /// Tokens for `&Array` of input `i`.
    fn a(&self, i: usize) -> TokenStream {
        self.args[i].clone()
    }

    /// Shape of input `i`.
    fn ishape(&self, i: usize) -> &'a Shape {
        &self.g.ty(self.node.inputs[i]).shape
    }
}

/// A fresh local named after `name` for output `i` of node `k`.
fn out(cx: &mut FnCx, k: usize, i: usize, name: &str) -> Ident {
    let id = cx.names.fresh(name);
    cx.vals
        .insert(Value { node: k, out: i }, Val::Local(id.clone()));
    id
}

fn mlx_dtype(d: DType) -> TokenStream {
    match d {
        DType::F32 => quote!(Dtype::Float32),
        DType::F16 => quote!(Dtype::Float16),
        DType::BF16 => quote!(Dtype::Bfloat16),
        DType::I32 => quote!(Dtype::Int32),
        DType::U32 => quote!(Dtype::Uint32),
        DType::Bool => quote!(Dtype::Bool),
    }
}

/// Tokens for `&Array` of input `i` of node `k`; a scalar becomes an array of the other
/// operand's dtype (`like`).
fn arg(cx: &FnCx, k: usize, i: usize, like: Option<usize>) -> Result<TokenStream> {
    let v = cx.g.nodes[k].inputs[i];
    match (cx.scalar(v), like) {
        (Some(s), Some(j)) => {
            let s = lit_f32(s);
            let other = cx.r(cx.g.nodes[k].inputs[j])?;
            Ok(quote!(&__scalar(#s, #other)?))
        }
        _ => cx.r(v),
    }
}

/// Emit node `k`.
pub(crate) fn emit(cx: &mut FnCx, k: usize) -> Result<TokenStream> {
    let n = NodeCx::new(cx, k)?;
    match n.node.op.family() {
        OpFamily::Sources => sources::emit(cx, &n),
        OpFamily::Linear => linear::emit(cx, &n),
        OpFamily::Norm => norm::emit(cx, &n),
        OpFamily::Attention => attention::emit(cx, &n),
        OpFamily::Fused => fused::emit(cx, &n),
        OpFamily::Elementwise => elementwise::emit(cx, &n),
        OpFamily::Conv => conv::emit(cx, &n),
        OpFamily::Shape => shape::emit(cx, &n),
        OpFamily::Collective => collective::emit(cx, &n),
        OpFamily::Blocks => blocks::emit(cx, &n),
    }
}

/// What the families' snapshot tests share.
#[cfg(test)]
mod test_util {
    use graph_dsl::{DType, Dim, GraphBuilder, Tensor};

    use crate::emit::emit_fn;
    use crate::format;

    /// Render the forward function of a one-output graph built by `f`.
    pub(super) fn render(f: impl FnOnce(&mut GraphBuilder) -> Tensor) -> String {
        let mut b = GraphBuilder::new("t");
        let y = f(&mut b);
        b.output("y", y).unwrap();
        let g = b.finish();
        let mut tables = vec![];
        format(emit_fn(&g, &mut tables).unwrap()).unwrap()
    }

    /// An f32 input `x` of these dims.
    pub(super) fn x(b: &mut GraphBuilder, dims: &[Dim]) -> Tensor {
        b.input("x", dims.to_vec(), DType::F32).unwrap()
    }
}
