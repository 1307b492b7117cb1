//! Lowerings of block calls: one call of the block's forward function (`Call`), or a loop
//! over its layers' weights that carries the first inputs through (`Repeat`).

use graph_dsl::Op;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

use super::{out, NodeCx};
use crate::emit::{fn_name, FnCx};
use crate::error::Result;
use crate::names::{ident, snake};

/// The sizes a block's forward takes as parameters (no input of it gives them), passed from
/// the caller's sizes of the same names.
fn dim_args(cx: &FnCx, block: &str) -> Result<Vec<TokenStream>> {
    match cx.g.blocks.get(block) {
        Some(g) => crate::emit::param_symbols(g)
            .iter()
            .map(|s| cx.dim(&graph_dsl::Dim::sym(s)))
            .collect(),
        None => Ok(vec![]),
    }
}

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Call { block, prefix } => {
            let f = fn_name(block);
            let field = ident(&snake(prefix));
            let mut xs = n.args.clone();
            xs.extend(dim_args(cx, block)?);
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
            count,
            carry,
            sliced,
        } => {
            let f = fn_name(block);
            let field = ident(&snake(prefix));
            let (carry, sliced) = (*carry, *sliced);
            let n_out = n.node.outputs.len();
            let mut xs = n.args.clone();
            xs.extend(dim_args(cx, block)?);
            let state: Vec<Ident> = (0..carry)
                .map(|i| cx.names.fresh(&format!("{name}_state{i}")))
                .collect();
            let next: Vec<Ident> = (0..n_out)
                .map(|i| cx.names.fresh(&format!("{name}_next{i}")))
                .collect();
            // sliced inputs: one row per call, views made before the loop
            let rows: Vec<Ident> = (0..sliced)
                .map(|i| cx.names.fresh(&format!("{name}_rows{i}")))
                .collect();
            // outputs past the carried ones: collected per call, stacked after the loop
            let stacks: Vec<Ident> = (carry..n_out)
                .map(|i| cx.names.fresh(&format!("{name}_stack{i}")))
                .collect();
            let c = *count as i32;
            let cap = proc_macro2::Literal::usize_unsuffixed(*count);
            let init = xs[..carry]
                .iter()
                .zip(&state)
                .map(|(x, s)| quote!(let mut #s = (#x).clone();))
                .chain(xs[carry..carry + sliced].iter().zip(&rows).map(|(x, r)| {
                    quote! {
                        let #r = mlx::ops::split_equal(#x, #c, 0)?
                            .into_iter()
                            .map(|r| r.squeeze_axes(&[0]))
                            .collect::<Result<Vec<Array>, Exception>>()?;
                    }
                }))
                .chain(
                    stacks
                        .iter()
                        .map(|s| quote!(let mut #s: Vec<Array> = Vec::with_capacity(#cap);)),
                );
            let args = state
                .iter()
                .map(|s| quote!(&#s))
                .chain(rows.iter().map(|r| quote!(&#r[layer_index])))
                .chain(xs[carry + sliced..].iter().cloned());
            let assign = state
                .iter()
                .zip(&next)
                .map(|(s, nx)| quote!(#s = #nx;))
                .chain(
                    stacks
                        .iter()
                        .zip(&next[carry..])
                        .map(|(s, nx)| quote!(#s.push(#nx);)),
                );
            let outs: Vec<Ident> = (0..n_out)
                .map(|i| out(cx, k, i, &format!("{name}_{i}")))
                .collect();
            let finals = outs
                .iter()
                .zip(&state)
                .map(|(o, s)| quote!(let #o = #s;))
                .chain(
                    outs[carry..]
                        .iter()
                        .zip(&stacks)
                        .map(|(o, s)| quote!(let #o = mlx::ops::stack(&#s, 0)?;)),
                );
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
            let head = if sliced > 0 {
                quote!(for (layer_index, layer) in w.#field.iter().enumerate())
            } else {
                quote!(for layer in &w.#field)
            };
            let pipeline = (carry > 0)
                .then(|| quote!(block_eval.after_block(&mut running, &[#(&#state),*])?;));
            let pipeline_init = (carry > 0).then(|| {
                quote! {
                    let block_eval = __kernels::block_eval();
                    let mut running: Vec<Array> = vec![];
                }
            });
            quote! {
                #(#init)*
                #flag
                #pipeline_init
                #head {
                    let #pattern = #call;
                    #(#assign)*
                    #pipeline
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
                let block_eval = __kernels::block_eval();
                let mut running: Vec<Array> = vec![];
                for layer in &w.layers {
                    let layers_next0 = if compiled {
                        resblock_compiled(layer, &layers_state0)?
                    } else {
                        resblock(layer, &layers_state0)?
                    };
                    layers_state0 = layers_next0;
                    block_eval.after_block(&mut running, &[&layers_state0])?;
                }
                let layers_0 = layers_state0;
                let resblock_0 = resblock(&w.head, &layers_0)?;
                Ok(resblock_0)
            }
            ");
    }

    /// A scan: one input sliced per layer (`[count, ..]` → row i), one carried, one given
    /// to every call; the output past the carried one stacked over the layers.
    #[test]
    fn scan_slices_and_stacks() {
        let mut body = GraphBuilder::new("mixer");
        let h = body
            .input("h", [Dim::sym("B"), Dim::Const(8)], DType::F32)
            .unwrap();
        let m = body
            .input("m", [Dim::sym("B"), Dim::Const(8)], DType::F32)
            .unwrap();
        let y = body.linear("proj", h, 8, 8, false).unwrap();
        let y = body.mul(y, m).unwrap();
        let z = body.linear("side", m, 8, 4, false).unwrap();
        body.output("h", y).unwrap();
        body.output("z", z).unwrap();
        let block = body.finish();
        let code = render(|b| {
            let i = x(b, &[Dim::sym("B"), Dim::Const(8)]);
            let ms = b
                .input(
                    "ms",
                    [Dim::Const(3), Dim::sym("B"), Dim::Const(8)],
                    DType::F32,
                )
                .unwrap();
            let out = b.scan(&block, "layers", 3, [1, 1], &[i, ms]).unwrap();
            assert_eq!(b.shape(out[1]).to_string(), "[3, B, 4]");
            b.add(out[0], out[0]).unwrap()
        });
        assert_snapshot!(code, @r"
            /// Forward of `t`.
            ///
            /// - in `x`: [B, 8]:f32
            /// - in `ms`: [3, B, 8]:f32
            /// - out `y`: [B, 8]:f32
            pub fn t(w: &TWeights, x: &Array, ms: &Array) -> Result<Array, Exception> {
                let dim_b = x.shape()[0];
                let mut layers_state0 = (x).clone();
                let layers_rows0 = mlx::ops::split_equal(ms, 3i32, 0)?
                    .into_iter()
                    .map(|r| r.squeeze_axes(&[0]))
                    .collect::<Result<Vec<Array>, Exception>>()?;
                let mut layers_stack1: Vec<Array> = Vec::with_capacity(3);
                let compiled = __kernels::compile_blocks();
                let block_eval = __kernels::block_eval();
                let mut running: Vec<Array> = vec![];
                for (layer_index, layer) in w.layers.iter().enumerate() {
                    let (layers_next0, layers_next1) = if compiled {
                        mixer_compiled(layer, &layers_state0, &layers_rows0[layer_index])?
                    } else {
                        mixer(layer, &layers_state0, &layers_rows0[layer_index])?
                    };
                    layers_state0 = layers_next0;
                    layers_stack1.push(layers_next1);
                    block_eval.after_block(&mut running, &[&layers_state0])?;
                }
                let layers_0 = layers_state0;
                let layers_1 = mlx::ops::stack(&layers_stack1, 0)?;
                let add = ops::add(&layers_0, &layers_0)?;
                Ok(add)
            }
            ");
    }
}
