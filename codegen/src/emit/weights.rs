//! The weights struct of a graph: one `Array` field per weight (named after its key), one
//! field per called block (a `Vec` for a repeated one), `specs()` for the runtime's check,
//! and `load()` that casts to the compute dtype and applies the recorded transforms.

use graph_dsl::{DType, Graph, Op, WeightXform};
use proc_macro2::{Literal, TokenStream};
use quote::quote;

use super::{lit_i32, weights_ty};
use crate::error::{CodegenError, Result};
use crate::names::{ident, snake};

/// Does the graph need a weights argument?
pub(crate) fn has_weights(g: &Graph) -> bool {
    !g.weights.is_empty()
        || g.nodes
            .iter()
            .any(|n| matches!(n.op, Op::Call { .. } | Op::Repeat { .. }))
}

/// The field of a weight key.
pub(crate) fn field_name(key: &str) -> String {
    snake(key)
}

fn dtype(d: DType) -> TokenStream {
    match d {
        DType::F32 => quote!(WeightDtype::F32),
        DType::F16 => quote!(WeightDtype::F16),
        DType::BF16 => quote!(WeightDtype::BF16),
        DType::I32 => quote!(WeightDtype::I32),
        DType::U32 => quote!(WeightDtype::U32),
        DType::Bool => quote!(WeightDtype::Bool),
    }
}

fn xform(x: &WeightXform) -> TokenStream {
    match x {
        WeightXform::TakeAxis { axis, index } => {
            let (a, i) = (lit_i32(*axis), lit_i32(*index));
            quote!(let a = __take(&a, #a, #i)?;)
        }
        WeightXform::Permute(p) => {
            let p = p.iter().map(|&i| lit_i32(i));
            quote!(let a = ops::transpose_axes(&a, &[#(#p),*])?;)
        }
        WeightXform::Reshape(s) => {
            let s = s.iter().map(|&i| lit_i32(i));
            quote!(let a = ops::reshape(&a, &[#(#s),*])?;)
        }
    }
}

/// The struct, `specs()` and `load()`.
pub(crate) fn emit_struct(g: &Graph) -> Result<TokenStream> {
    let ty = weights_ty(&g.name);
    let mut fields = vec![];
    let mut specs = vec![];
    let mut loads = vec![];
    // flat views for `transforms::compile`: count, to a Vec, from a slice
    let mut counts = vec![];
    let mut to_flat = vec![];
    let mut from_flat = vec![];
    for w in &g.weights {
        let f = ident(&field_name(&w.key));
        let key = &w.key;
        let loaded = w.loaded_shape().ok_or_else(|| CodegenError::BadWeight {
            key: w.key.clone(),
            shape: w.shape.clone(),
        })?;
        let doc = if w.xforms.is_empty() {
            format!(" `{key}` {:?}", w.shape)
        } else {
            format!(
                " `{key}` {:?}, loaded as {:?} via {:?}",
                w.shape, loaded, w.xforms
            )
        };
        fields.push(quote! {
            #[doc = #doc]
            pub #f: Array
        });
        let shape = w.shape.iter().map(|&d| Literal::usize_unsuffixed(d));
        let dt = dtype(w.dtype);
        specs.push(quote! {
            v.push(TensorSpec::new(__key(prefix, #key), vec![#(#shape),*], #dt));
        });
        counts.push(quote!(1));
        to_flat.push(quote!(v.push(self.#f.clone());));
        from_flat.push(quote!(#f: { k += 1; a[k - 1].clone() }));
        let get = quote!(get(&__key(prefix, #key))?.as_dtype(dtype)?);
        if w.xforms.is_empty() {
            loads.push(quote!(#f: #get));
        } else {
            let xs = w.xforms.iter().map(xform);
            loads.push(quote! {
                #f: {
                    let a = #get;
                    #(#xs)*
                    a
                }
            });
        }
    }
    for n in &g.nodes {
        match &n.op {
            Op::Call { block, prefix } => {
                let f = ident(&field_name(prefix));
                let bt = weights_ty(block);
                let doc = format!(" `{prefix}.*` ({block})");
                fields.push(quote! {
                    #[doc = #doc]
                    pub #f: #bt
                });
                specs.push(quote!(v.extend(#bt::specs(&__key(prefix, #prefix)));));
                loads.push(quote!(#f: #bt::load_with(get, &__key(prefix, #prefix), dtype)?));
                counts.push(quote!(#bt::COUNT));
                to_flat.push(quote!(v.extend(self.#f.arrays());));
                from_flat
                    .push(quote!(#f: { k += #bt::COUNT; #bt::from_arrays(&a[k - #bt::COUNT..k]) }));
            }
            Op::Repeat {
                block,
                prefix,
                count,
                ..
            } => {
                let f = ident(&field_name(prefix));
                let bt = weights_ty(block);
                let c = Literal::usize_unsuffixed(*count);
                let doc = format!(" `{prefix}.{{0..{count}}}.*` ({block})");
                fields.push(quote! {
                    #[doc = #doc]
                    pub #f: Vec<#bt>
                });
                specs.push(quote! {
                    for i in 0..#c {
                        v.extend(#bt::specs(&__key(prefix, &format!("{}.{}", #prefix, i))));
                    }
                });
                loads.push(quote! {
                    #f: (0..#c)
                        .map(|i| #bt::load_with(get, &__key(prefix, &format!("{}.{}", #prefix, i)), dtype))
                        .collect::<Result<Vec<_>, LoadError>>()?
                });
                counts.push(quote!(#c * #bt::COUNT));
                to_flat.push(quote!(for l in &self.#f { v.extend(l.arrays()); }));
                from_flat.push(quote! {
                    #f: (0..#c)
                        .map(|_| {
                            k += #bt::COUNT;
                            #bt::from_arrays(&a[k - #bt::COUNT..k])
                        })
                        .collect()
                });
            }
            _ => {}
        }
    }
    let doc = format!(
        " Weights of `{}`; keys are relative to the prefix given to `load`.",
        g.name
    );
    Ok(quote! {
        #[doc = #doc]
        pub struct #ty {
            #(#fields),*
        }

        impl #ty {
            /// Every tensor `load` reads, with its stored shape and dtype.
            pub fn specs(prefix: &str) -> Vec<TensorSpec> {
                let mut v = Vec::new();
                #(#specs)*
                v
            }

            /// Load from `ckpt` under `prefix`, cast to `dtype`, apply the recorded
            /// layout transforms.
            pub fn load(ckpt: &Checkpoint, prefix: &str, dtype: Dtype) -> Result<Self, LoadError> {
                Self::load_with(&mut |key| Ok(ckpt.array(key)?), prefix, dtype)
            }

            /// How many arrays `arrays` gives.
            pub const COUNT: usize = 0 #(+ #counts)*;

            /// Every weight as one flat list (fields in order, nested blocks inline), for
            /// `transforms::compile`, whose functions take arrays only.
            pub fn arrays(&self) -> Vec<Array> {
                let mut v = Vec::with_capacity(Self::COUNT);
                #(#to_flat)*
                v
            }

            /// The inverse of `arrays` (`a` holds exactly `COUNT` arrays).
            pub fn from_arrays(a: &[Array]) -> Self {
                let mut k = 0;
                Self {
                    #(#from_flat),*
                }
            }

            /// As `load`, with the stored tensors from `get` (by full key).
            pub fn load_with(
                get: &mut dyn FnMut(&str) -> Result<Array, LoadError>,
                prefix: &str,
                dtype: Dtype,
            ) -> Result<Self, LoadError> {
                Ok(Self {
                    #(#loads),*
                })
            }
        }
    })
}
