//! Lowerings of the collectives: calls into the runtime's process group
//! (`qwen_runtime::distributed`), which the pipeline sets on the calling thread.

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_i32, FnCx};
use crate::error::Result;

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::GatherSequence { axis, parts } => {
            let x = n.a(0);
            let (ax, p) = (lit_i32(*axis), lit_i32(*parts));
            let o = out(cx, k, 0, name);
            quote!(let #o = ::qwen_runtime::distributed::gather_sequence(#x, #ax, #p)?;)
        }
        op => unreachable!("{} is not a collective", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::Dim;
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

    #[test]
    fn collective_family() {
        let code = render(|b| {
            let k = x(
                b,
                &[Dim::Const(1), Dim::Const(4), Dim::sym("L"), Dim::Const(8)],
            );
            b.gather_sequence(k, 2, 2).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [1, 4, L, 8]:f32
        /// - out `y`: [1, 4, 2*L, 8]:f32
        pub fn t(x: &Array) -> Result<Array, Exception> {
            let dim_l = x.shape()[2];
            let gather_sequence = ::qwen_runtime::distributed::gather_sequence(x, 2, 2)?;
            Ok(gather_sequence)
        }
        ");
    }
}
