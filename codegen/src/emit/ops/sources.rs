//! Lowerings of the sources. Inputs, weights and scalars are references, not statements
//! (the forward function binds them); a constant tensor becomes a module-level byte
//! table, an `arange` a range built at run time.

use graph_dsl::Op;
use proc_macro2::TokenStream;
use quote::quote;

use super::{out, NodeCx};
use crate::emit::{lit_i32, FnCx};
use crate::error::Result;
use crate::names::{ident, snake};

pub(super) fn emit(cx: &mut FnCx, n: &NodeCx) -> Result<TokenStream> {
    let (k, name) = (n.k, n.name());
    Ok(match &n.node.op {
        Op::Input(_) | Op::Weight(_) | Op::Scalar(_) => quote!(),
        Op::ConstTensor { shape, data } => {
            let local = snake(name).to_uppercase();
            let tid = if local.starts_with(&cx.table_prefix) {
                ident(&local)
            } else {
                ident(&format!("{}_{}", cx.table_prefix, local))
            };
            let bytes: Vec<u8> = data.iter().flat_map(|f| f.to_le_bytes()).collect();
            cx.tables.push((tid.clone(), bytes));
            let s = shape.iter().map(|&d| lit_i32(d));
            let o = out(cx, k, 0, name);
            quote!(let #o = Array::from_slice(&__f32s(#tid), &[#(#s),*]);)
        }
        Op::Arange { start, len } => {
            let s = cx.dim(start)?;
            let e = cx.dim(&start.add(len))?;
            let o = out(cx, k, 0, name);
            quote!(let #o = Array::arange::<f32, f32>(#s as f32, #e as f32, None)?;)
        }
        op => unreachable!("{} is not a source", op.name()),
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::Dim;
    use insta::assert_snapshot;

    use super::super::test_util::{render, x};

    #[test]
    fn sources_family() {
        let code = render(|b| {
            let i = x(b, &[Dim::sym("L")]);
            let pos = b.arange(Dim::Const(1), Dim::sym("L")).unwrap();
            let scale = b.const_tensor("scale", &[1], vec![0.5]).unwrap();
            let p = b.add(i, pos).unwrap();
            let p = b.mul(p, scale).unwrap();
            b.add_scalar(p, 1.0).unwrap()
        });
        assert_snapshot!(code, @r"
        /// Forward of `t`.
        ///
        /// - in `x`: [L]:f32
        /// - out `y`: [L]:f32
        pub fn t(x: &Array) -> Result<Array, Exception> {
            let dim_l = x.shape()[0];
            let arange = Array::arange::<f32, f32>(1 as f32, (dim_l + 1) as f32, None)?;
            let scale = Array::from_slice(&__f32s(T_SCALE), &[1]);
            let add = ops::add(x, &arange)?;
            let mul = ops::multiply(&add, &scale)?;
            let add_1 = ops::add(&mul, &__scalar(1f32, &mul)?)?;
            Ok(add_1)
        }
        ");
    }
}
