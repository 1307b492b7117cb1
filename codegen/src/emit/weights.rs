//! The weights struct of a graph: one `Array` field per weight (named after its key), one
//! field per called block (a `Vec` for a repeated one), `specs()` for the runtime's check,
//! and `load()` that casts to the compute dtype, concatenates the parts of a concatenated
//! weight and applies the recorded transforms.

use graph_dsl::{DType, Graph, Op, WeightXform};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

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

/// The weights read only as the weight of linear layers (input 1 of `Linear`): the ones
/// that can be quantized (a weight another op also reads stays as loaded).
pub(crate) fn linear_weights(g: &Graph) -> std::collections::BTreeSet<usize> {
    let weight_of = |v: &graph_dsl::Value| match g.nodes[v.node].op {
        Op::Weight(i) => Some(i),
        _ => None,
    };
    let mut linear = std::collections::BTreeSet::new();
    let mut other = std::collections::BTreeSet::new();
    for n in &g.nodes {
        for (j, v) in n.inputs.iter().enumerate() {
            if let Some(i) = weight_of(v) {
                if matches!(n.op, Op::Linear { .. }) && j == 1 {
                    linear.insert(i);
                } else {
                    other.insert(i);
                }
            }
        }
    }
    &linear - &other
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
    // quantizable: the weights of linear layers (and whether any field can be quantized)
    let mut quantized = vec![];
    let linear = linear_weights(g);
    let mut names = vec![];
    for (wi, w) in g.weights.iter().enumerate() {
        let f = ident(&field_name(&w.key));
        let key = &w.key;
        let loaded = w.loaded_shape().ok_or_else(|| CodegenError::BadWeight {
            key: w.key.clone(),
            shape: w.shape.clone(),
        })?;
        let mut doc = format!(" `{key}` {:?}", w.shape);
        if !w.parts.is_empty() {
            let parts: Vec<String> = w
                .parts
                .iter()
                .map(|p| format!("`{}` {:?}", p.key, p.shape))
                .collect();
            doc += &format!(", concatenated on axis 0 from {}", parts.join(", "));
        }
        if !w.xforms.is_empty() {
            doc += &format!(", loaded as {:?} via {:?}", loaded, w.xforms);
        }
        fields.push(quote! {
            #[doc = #doc]
            pub #f: Array
        });
        names.push(f.clone());
        let q = linear.contains(&wi).then(|| format_ident!("{}_q", f));
        if let Some(fq) = &q {
            let doc = format!(" `{key}` quantized (then `{f}` holds the packed values), or `None`");
            fields.push(quote! {
                #[doc = #doc]
                pub #fq: Option<Quantized>
            });
            names.push(fq.clone());
            quantized.push(quote!(self.#fq.is_some()));
            from_flat.push(quote!(#fq: None));
        }
        let dt = dtype(w.dtype);
        let mut gets = vec![];
        for p in w.stored() {
            let (pk, shape) = (
                &p.key,
                p.shape.iter().map(|&d| Literal::usize_unsuffixed(d)),
            );
            specs.push(quote! {
                v.push(TensorSpec::new(__key(prefix, #pk), vec![#(#shape),*], #dt));
            });
            gets.push(quote!(get(&__key(prefix, #pk))?.as_dtype(dtype)?));
        }
        counts.push(quote!(1));
        to_flat.push(quote!(v.push(self.#f.clone());));
        from_flat.push(quote!(#f: { k += 1; a[k - 1].clone() }));
        let get = if w.parts.is_empty() {
            quote!(#(#gets)*)
        } else {
            quote!(ops::concatenate(&[#(#gets),*], 0)?)
        };
        let value = if w.xforms.is_empty() {
            get
        } else {
            let xs = w.xforms.iter().map(xform);
            quote! {
                {
                    let a = #get;
                    #(#xs)*
                    a
                }
            }
        };
        let part_keys: Vec<String> = w.stored().iter().map(|p| p.key.clone()).collect();
        let part_outs: Vec<Literal> = w
            .stored()
            .iter()
            .map(|p| lit_i32(p.shape.first().copied().unwrap_or(0)))
            .collect();
        loads.push(match &q {
            // stored quantized (a folder `qwen-run quantize` wrote), else quantized now as
            // the plan says, or dense
            Some(fq) if w.xforms.is_empty() => quote! {
                let (#f, #fq) = match ::qwen_runtime::quant::stored(
                    plan,
                    &[#(__key(prefix, #part_keys)),*],
                    dtype,
                )? {
                    Some(stored) => stored,
                    None => {
                        let (w, q) = __quantize(#value, plan.spec(&__key(prefix, #key)))?;
                        let keys = [#(__key(prefix, #part_keys)),*];
                        (w, ::qwen_runtime::quant::with_low_rank(q, plan, &keys, &[#(#part_outs),*])?)
                    }
                };
            },
            Some(fq) => quote! {
                let (#f, #fq) = {
                    let (w, q) = __quantize(#value, plan.spec(&__key(prefix, #key)))?;
                    let keys = [#(__key(prefix, #part_keys)),*];
                    (w, ::qwen_runtime::quant::with_low_rank(q, plan, &keys, &[#(#part_outs),*])?)
                };
            },
            None => quote!(let #f = #value;),
        });
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
                loads.push(
                    quote!(let #f = #bt::load_from(get, plan, &__key(prefix, #prefix), dtype)?;),
                );
                names.push(f.clone());
                quantized.push(quote!(self.#f.quantized()));
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
                // each layer evaluated as it is loaded: what its weight transforms read
                // (the parts of a joined projection) is freed before the next layer's
                loads.push(quote! {
                    let #f = (0..#c)
                        .map(|i| {
                            let l = #bt::load_from(get, plan, &__key(prefix, &format!("{}.{}", #prefix, i)), dtype)?;
                            mlx::transforms::eval(&l.arrays())?;
                            Ok(l)
                        })
                        .collect::<Result<Vec<_>, LoadError>>()?;
                });
                names.push(f.clone());
                quantized.push(quote!(self.#f.iter().any(|l| l.quantized())));
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
                Self::load_from(get, &::qwen_runtime::quant::Dense, prefix, dtype)
            }

            /// As `load_with`, each linear layer's weight quantized as `plan` says for its
            /// full key (repeated layers one at a time, so the dense weights of one layer
            /// at most are held beside the quantized ones).
            #[allow(unused_variables)]
            pub fn load_from(
                get: &mut dyn FnMut(&str) -> Result<Array, LoadError>,
                plan: &dyn ::qwen_runtime::quant::Plan,
                prefix: &str,
                dtype: Dtype,
            ) -> Result<Self, LoadError> {
                #(#loads)*
                Ok(Self { #(#names),* })
            }

            /// Whether any linear layer here (or in a block) is quantized.
            pub fn quantized(&self) -> bool {
                false #(|| #quantized)*
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use graph_dsl::{DType, Dim, GraphBuilder};
    use insta::assert_snapshot;

    use super::emit_struct;
    use crate::format;

    #[test]
    fn a_concatenated_weight_lists_and_loads_its_parts() {
        let mut b = GraphBuilder::new("t");
        let x = b
            .input("x", [Dim::sym("B"), Dim::Const(8)], DType::F32)
            .unwrap();
        let y = b
            .scope("attn", |b| {
                b.linear_cat("to_qk", &["to_q", "to_k"], x, 8, &[8, 4], true)
            })
            .unwrap();
        b.output("y", y).unwrap();
        let code = format(emit_struct(&b.finish()).unwrap()).unwrap();
        assert_snapshot!(code, @r#"
            /// Weights of `t`; keys are relative to the prefix given to `load`.
            pub struct TWeights {
                /// `attn.to_qk.weight` [12, 8], concatenated on axis 0 from `attn.to_q.weight` [8, 8], `attn.to_k.weight` [4, 8]
                pub attn_to_qk_weight: Array,
                /// `attn.to_qk.weight` quantized (then `attn_to_qk_weight` holds the packed values), or `None`
                pub attn_to_qk_weight_q: Option<Quantized>,
                /// `attn.to_qk.bias` [12], concatenated on axis 0 from `attn.to_q.bias` [8], `attn.to_k.bias` [4]
                pub attn_to_qk_bias: Array,
            }
            impl TWeights {
                /// Every tensor `load` reads, with its stored shape and dtype.
                pub fn specs(prefix: &str) -> Vec<TensorSpec> {
                    let mut v = Vec::new();
                    v.push(
                        TensorSpec::new(
                            __key(prefix, "attn.to_q.weight"),
                            vec![8, 8],
                            WeightDtype::BF16,
                        ),
                    );
                    v.push(
                        TensorSpec::new(
                            __key(prefix, "attn.to_k.weight"),
                            vec![4, 8],
                            WeightDtype::BF16,
                        ),
                    );
                    v.push(
                        TensorSpec::new(__key(prefix, "attn.to_q.bias"), vec![8], WeightDtype::BF16),
                    );
                    v.push(
                        TensorSpec::new(__key(prefix, "attn.to_k.bias"), vec![4], WeightDtype::BF16),
                    );
                    v
                }
                /// Load from `ckpt` under `prefix`, cast to `dtype`, apply the recorded
                /// layout transforms.
                pub fn load(
                    ckpt: &Checkpoint,
                    prefix: &str,
                    dtype: Dtype,
                ) -> Result<Self, LoadError> {
                    Self::load_with(&mut |key| Ok(ckpt.array(key)?), prefix, dtype)
                }
                /// How many arrays `arrays` gives.
                pub const COUNT: usize = 0 + 1 + 1;
                /// Every weight as one flat list (fields in order, nested blocks inline), for
                /// `transforms::compile`, whose functions take arrays only.
                pub fn arrays(&self) -> Vec<Array> {
                    let mut v = Vec::with_capacity(Self::COUNT);
                    v.push(self.attn_to_qk_weight.clone());
                    v.push(self.attn_to_qk_bias.clone());
                    v
                }
                /// The inverse of `arrays` (`a` holds exactly `COUNT` arrays).
                pub fn from_arrays(a: &[Array]) -> Self {
                    let mut k = 0;
                    Self {
                        attn_to_qk_weight_q: None,
                        attn_to_qk_weight: {
                            k += 1;
                            a[k - 1].clone()
                        },
                        attn_to_qk_bias: {
                            k += 1;
                            a[k - 1].clone()
                        },
                    }
                }
                /// As `load`, with the stored tensors from `get` (by full key).
                pub fn load_with(
                    get: &mut dyn FnMut(&str) -> Result<Array, LoadError>,
                    prefix: &str,
                    dtype: Dtype,
                ) -> Result<Self, LoadError> {
                    Self::load_from(get, &::qwen_runtime::quant::Dense, prefix, dtype)
                }
                /// As `load_with`, each linear layer's weight quantized as `plan` says for its
                /// full key (repeated layers one at a time, so the dense weights of one layer
                /// at most are held beside the quantized ones).
                #[allow(unused_variables)]
                pub fn load_from(
                    get: &mut dyn FnMut(&str) -> Result<Array, LoadError>,
                    plan: &dyn ::qwen_runtime::quant::Plan,
                    prefix: &str,
                    dtype: Dtype,
                ) -> Result<Self, LoadError> {
                    let (attn_to_qk_weight, attn_to_qk_weight_q) = match ::qwen_runtime::quant::stored(
                        plan,
                        &[__key(prefix, "attn.to_q.weight"), __key(prefix, "attn.to_k.weight")],
                        dtype,
                    )? {
                        Some(stored) => stored,
                        None => {
                            let (w, q) = __quantize(
                                ops::concatenate(
                                    &[
                                        get(&__key(prefix, "attn.to_q.weight"))?.as_dtype(dtype)?,
                                        get(&__key(prefix, "attn.to_k.weight"))?.as_dtype(dtype)?,
                                    ],
                                    0,
                                )?,
                                plan.spec(&__key(prefix, "attn.to_qk.weight")),
                            )?;
                            let keys = [
                                __key(prefix, "attn.to_q.weight"),
                                __key(prefix, "attn.to_k.weight"),
                            ];
                            (w, ::qwen_runtime::quant::with_low_rank(q, plan, &keys, &[8, 4])?)
                        }
                    };
                    let attn_to_qk_bias = ops::concatenate(
                        &[
                            get(&__key(prefix, "attn.to_q.bias"))?.as_dtype(dtype)?,
                            get(&__key(prefix, "attn.to_k.bias"))?.as_dtype(dtype)?,
                        ],
                        0,
                    )?;
                    Ok(Self {
                        attn_to_qk_weight,
                        attn_to_qk_weight_q,
                        attn_to_qk_bias,
                    })
                }
                /// Whether any linear layer here (or in a block) is quantized.
                pub fn quantized(&self) -> bool {
                    false || self.attn_to_qk_weight_q.is_some()
                }
            }
            "#);
    }
}
