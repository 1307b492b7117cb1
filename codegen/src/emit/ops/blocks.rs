//! Lowerings of block calls: one call of the block's forward function (`Call`), or a loop
//! over its layers' weights that carries the first inputs through (`Repeat`).

use graph_dsl::Op;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

use super::{out, NodeCx};
use crate::emit::{fn_name, FnCx};
use crate::error::Result;
use crate::names::{ident, snake};

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Call { block, prefix } => {
            let f = fn_name(block);
            let field = ident(&snake(prefix));
            let xs = n.args.clone();
            let n_out = n.node.outputs.len();
            let outs: Vec<Ident> = (0..n_out)
                .map(|i| out(cx, k, i, &format!("{name}_{i}")))
                .collect();
            if n_out == 1 {
                let o = &outs[0];
                quote!(let #o = #f(&w.#field, #(#xs),*)?;)
            } else {
                quote!(let (#(#outs),*) = #f(&w.#field, #(#xs),*)?;)
            }
        }
        Op::Repeat {
            block,
            prefix,
            carry,
            ..
        } => {
            let f = fn_name(block);
            let field = ident(&snake(prefix));
            let carry = *carry;
            let n_out = n.node.outputs.len();
            let xs = n.args.clone();
            let state: Vec<Ident> = (0..carry)
                .map(|i| cx.names.fresh(&format!("{name}_state{i}")))
                .collect();
            let next: Vec<Ident> = (0..n_out)
                .map(|i| cx.names.fresh(&format!("{name}_next{i}")))
                .collect();
            let init = xs[..carry]
                .iter()
                .zip(&state)
                .map(|(x, s)| quote!(let mut #s = (#x).clone();));
            let args = state
                .iter()
                .map(|s| quote!(&#s))
                .chain(xs[carry..].iter().cloned());
            let assign = state.iter().zip(&next).map(|(s, nx)| quote!(#s = #nx;));
            let outs: Vec<Ident> = (0..n_out)
                .map(|i| out(cx, k, i, &format!("{name}_{i}")))
                .collect();
            let finals = outs.iter().zip(&state).map(|(o, s)| quote!(let #o = #s;));
            let pattern = if n_out == 1 {
                quote!(#(#next)*)
            } else {
                quote!((#(#next),*))
            };
            let traced =
                cx.g.blocks
                    .get(block)
                    .is_some_and(crate::emit::has_compiled_twin);
            let call = if traced {
                let fc = format_ident!("{}_compiled", f);
                let args: Vec<TokenStream> = args.collect();
                quote! {
                    if compiled {
                        #fc(layer, #(#args),*)?
                    } else {
                        #f(layer, #(#args),*)?
                    }
                }
            } else {
                quote!(#f(layer, #(#args),*)?)
            };
            let flag = traced.then(|| quote!(let compiled = __kernels::compile_blocks();));
            quote! {
                #(#init)*
                #flag
                let pipelined = __kernels::pipeline_blocks();
                let mut running: Vec<Array> = vec![];
                for layer in &w.#field {
                    let #pattern = #call;
                    #(#assign)*
                    if pipelined {
                        // start this block, then wait for the one before: the GPU always
                        // has the next block queued, and at most two are in flight
                        mlx::transforms::async_eval([#(&#state),*])?;
                        mlx::transforms::eval(&running)?;
                        running = vec![#((#state).clone()),*];
                    }
                }
                #(#finals)*
            }
        }
        op => unreachable!("{} is not a block call", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim, GraphBuilder};
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

    #[test]
    fn blocks_family() {
        let mut body = GraphBuilder::new("resblock");
        let h = body
            .input("h", [Dim::sym("B"), Dim::Const(8)], DType::F32)
            .unwrap();
        let y = body.linear("proj", h, 8, 8, false).unwrap();
        body.output("h", y).unwrap();
        let block = body.finish();
        let code = render(|b| {
            let i = x(b, &[Dim::sym("B"), Dim::Const(8)]);
            let h = b.repeat(&block, "layers", 2, 1, &[i]).unwrap()[0];
            b.call(&block, "head", &[h]).unwrap()[0]
        });
        assert_snapshot!(code, @r"
            /// Forward of `t`.
            ///
            /// - in `x`: [B, 8]:f32
            /// - out `y`: [B, 8]:f32
            pub fn t(w: &TWeights, x: &Array) -> Result<Array, Exception> {
                let dim_b = x.shape()[0];
                let mut layers_state0 = (x).clone();
                let compiled = __kernels::compile_blocks();
                let pipelined = __kernels::pipeline_blocks();
                let mut running: Vec<Array> = vec![];
                for layer in &w.layers {
                    let layers_next0 = if compiled {
                        resblock_compiled(layer, &layers_state0)?
                    } else {
                        resblock(layer, &layers_state0)?
                    };
                    layers_state0 = layers_next0;
                    if pipelined {
                        mlx::transforms::async_eval([&layers_state0])?;
                        mlx::transforms::eval(&running)?;
                        running = vec![(layers_state0).clone()];
                    }
                }
                let layers_0 = layers_state0;
                let resblock_0 = resblock(&w.head, &layers_0)?;
                Ok(resblock_0)
            }
            ");
    }
}
