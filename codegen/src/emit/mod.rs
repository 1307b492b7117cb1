//! Module skeleton: header, consts, helpers, weights structs, forward functions.

mod fused;
mod ops;
mod weights;

use std::collections::BTreeMap;

use graph_dsl::{Dim, Graph, Op, Value};
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

use crate::error::{CodegenError, Result};
use crate::names::{camel, ident, snake, Namer};
use crate::Spec;

/// The weights struct name of a graph.
pub(crate) fn weights_ty(graph: &str) -> Ident {
    format_ident!("{}Weights", camel(graph))
}

/// The forward function name of a graph.
pub(crate) fn fn_name(graph: &str) -> Ident {
    ident(&snake(graph))
}

/// An `i32` literal.
pub(crate) fn lit_i32(n: usize) -> Literal {
    Literal::i32_unsuffixed(n as i32)
}

/// An `f32` literal.
pub(crate) fn lit_f32(v: f64) -> Literal {
    Literal::f32_suffixed(v as f32)
}

/// How generated code refers to one value.
#[derive(Debug, Clone)]
pub(crate) enum Val {
    /// A local `Array` (referenced as `&x`).
    Local(Ident),
    /// A `&Array` parameter.
    Param(Ident),
    /// A weight field (`&w.field`).
    Weight(Ident),
    /// A scalar constant.
    Scalar(f64),
}

/// State while emitting one function.
pub(crate) struct FnCx<'a> {
    pub g: &'a Graph,
    pub vals: BTreeMap<Value, Val>,
    pub dims: BTreeMap<String, Ident>,
    pub names: Namer,
    /// Const tables this function needs at module level: (ident, bytes).
    pub tables: Vec<(Ident, Vec<u8>)>,
    pub table_prefix: String,
}

impl FnCx<'_> {
    /// `&Array` tokens for a value.
    pub fn r(&self, v: Value) -> Result<TokenStream> {
        match self.vals.get(&v) {
            Some(Val::Local(i)) => Ok(quote!(&#i)),
            Some(Val::Param(i)) => Ok(quote!(#i)),
            Some(Val::Weight(i)) => Ok(quote!(&w.#i)),
            Some(Val::Scalar(s)) => {
                let s = lit_f32(*s);
                Ok(quote!(&Array::from_f32(#s)))
            }
            None => Err(self.unsupported(v.node, "a value used before it is defined")),
        }
    }

    /// The scalar behind a value, if it is one.
    pub fn scalar(&self, v: Value) -> Option<f64> {
        match self.vals.get(&v) {
            Some(Val::Scalar(s)) => Some(*s),
            _ => None,
        }
    }

    /// An `i32` expression for a dim.
    pub fn dim(&self, d: &Dim) -> Result<TokenStream> {
        match d {
            Dim::Const(n) => {
                let n = lit_i32(*n);
                Ok(quote!(#n))
            }
            Dim::Sym(s) => self.sym(s),
            Dim::Affine { terms, konst } => {
                let mut parts = vec![];
                for (s, c) in terms {
                    let i = self.sym(s)?;
                    let mag = Literal::i32_unsuffixed(c.unsigned_abs() as i32);
                    let t = if c.abs() == 1 { i } else { quote!(#mag * #i) };
                    parts.push((*c < 0, t));
                }
                let mut out = TokenStream::new();
                for (k, (neg, t)) in parts.into_iter().enumerate() {
                    match (k, neg) {
                        (0, false) => out.extend(t),
                        (0, true) => out.extend(quote!(-#t)),
                        (_, false) => out.extend(quote!(+ #t)),
                        (_, true) => out.extend(quote!(- #t)),
                    }
                }
                if *konst != 0 {
                    let m = Literal::i32_unsuffixed(konst.unsigned_abs() as i32);
                    if *konst > 0 {
                        out.extend(quote!(+ #m));
                    } else {
                        out.extend(quote!(- #m));
                    }
                }
                Ok(quote!((#out)))
            }
        }
    }

    fn sym(&self, s: &str) -> Result<TokenStream> {
        match self.dims.get(s) {
            Some(i) => Ok(quote!(#i)),
            None => Err(CodegenError::UnboundSymbol {
                graph: self.g.name.clone(),
                sym: s.to_string(),
            }),
        }
    }

    /// `&[d0, d1, …]` for dims.
    pub fn dims_slice(&self, ds: &[Dim]) -> Result<TokenStream> {
        let ds = ds.iter().map(|d| self.dim(d)).collect::<Result<Vec<_>>>()?;
        Ok(quote!(&[#(#ds),*]))
    }

    /// An error for `node`.
    pub fn unsupported(&self, node: usize, why: &str) -> CodegenError {
        let n = &self.g.nodes[node];
        CodegenError::Unsupported {
            graph: self.g.name.clone(),
            node: n.name.clone(),
            op: n.op.name(),
            why: why.to_string(),
        }
    }
}

/// Symbols used anywhere in a graph (shapes and op attributes), sorted.
fn symbols(g: &Graph) -> Vec<String> {
    let mut v: Vec<String> = vec![];
    for i in &g.inputs {
        v.extend(i.ty.shape.symbols());
    }
    for n in &g.nodes {
        for o in &n.outputs {
            v.extend(o.shape.symbols());
        }
        match &n.op {
            Op::Reshape(d) | Op::BroadcastTo(d) => v.extend(d.iter().flat_map(Dim::symbols)),
            Op::Slice { start, end, .. } => {
                v.extend(start.symbols());
                v.extend(end.symbols());
            }
            Op::Arange { start, len } => {
                v.extend(start.symbols());
                v.extend(len.symbols());
            }
            _ => {}
        }
    }
    v.sort();
    v.dedup();
    v
}

/// Emit one forward function (and collect its const tables).
fn emit_fn(g: &Graph, tables: &mut Vec<(Ident, Vec<u8>)>) -> Result<TokenStream> {
    let mut cx = FnCx {
        g,
        vals: BTreeMap::new(),
        dims: BTreeMap::new(),
        names: Namer::default(),
        tables: vec![],
        table_prefix: snake(&g.name).to_uppercase(),
    };
    cx.names.reserve("w");
    let has_weights = weights::has_weights(g);
    // parameters
    let mut params = vec![];
    let mut param_idents = vec![];
    if has_weights {
        let ty = weights_ty(&g.name);
        params.push(quote!(w: &#ty));
    }
    for inp in &g.inputs {
        let i = cx.names.fresh(&inp.name);
        param_idents.push(i.clone());
        params.push(quote!(#i: &Array));
    }
    // runtime dims: read from the first input that carries the symbol (else from one that
    // carries a multiple of it, `c·S`, divided by c), else a parameter
    let mut prologue = vec![];
    for s in symbols(g) {
        let id = cx.names.fresh(&format!("dim_{s}"));
        match symbol_source(g, &s) {
            Some((k, ax, 1)) => {
                let p = &param_idents[k];
                let ax = Literal::usize_unsuffixed(ax);
                prologue.push(quote!(let #id = #p.shape()[#ax];));
            }
            Some((k, ax, c)) => {
                let p = &param_idents[k];
                let (axl, cl) = (
                    Literal::usize_unsuffixed(ax),
                    Literal::i32_unsuffixed(c as i32),
                );
                let msg = format!(
                    "input `{}` axis {ax}: {{}} is not a multiple of {c}",
                    g.inputs[k].name
                );
                prologue.push(quote! {
                    if #p.shape()[#axl] % #cl != 0 {
                        return Err(Exception::custom(format!(#msg, #p.shape()[#axl])));
                    }
                    let #id = #p.shape()[#axl] / #cl;
                });
            }
            None => params.push(quote!(#id: i32)),
        }
        cx.dims.insert(s, id);
    }
    // body
    let mut body = vec![];
    for (k, node) in g.nodes.iter().enumerate() {
        match &node.op {
            Op::Input(i) => {
                cx.vals.insert(
                    Value { node: k, out: 0 },
                    Val::Param(param_idents[*i].clone()),
                );
            }
            Op::Weight(i) => {
                let f = ident(&weights::field_name(&g.weights[*i].key));
                cx.vals.insert(Value { node: k, out: 0 }, Val::Weight(f));
            }
            Op::Scalar(s) => {
                cx.vals.insert(Value { node: k, out: 0 }, Val::Scalar(*s));
            }
            _ => body.push(ops::emit(&mut cx, k)?),
        }
    }
    // outputs
    let mut outs = vec![];
    let mut counts: BTreeMap<Value, usize> = BTreeMap::new();
    for (_, v) in &g.outputs {
        *counts.entry(*v).or_default() += 1;
    }
    for (_, v) in &g.outputs {
        let t = match cx.vals.get(v) {
            Some(Val::Local(i)) if counts[v] == 1 => quote!(#i),
            _ => {
                let r = cx.r(*v)?;
                quote!((#r).clone())
            }
        };
        outs.push(t);
    }
    let (ret_ty, ret) = if outs.len() == 1 {
        (quote!(Array), quote!(#(#outs)*))
    } else {
        let tys = outs.iter().map(|_| quote!(Array));
        (quote!((#(#tys),*)), quote!((#(#outs),*)))
    };
    let name = fn_name(&g.name);
    let mut doc = vec![format!(" Forward of `{}`.", g.name), String::new()];
    for i in &g.inputs {
        doc.push(format!(" - in `{}`: {}", i.name, i.ty));
    }
    for (n, v) in &g.outputs {
        doc.push(format!(" - out `{}`: {}", n, g.ty(*v)));
    }
    tables.append(&mut cx.tables);
    Ok(quote! {
        #(#[doc = #doc])*
        pub fn #name(#(#params),*) -> Result<#ret_ty, Exception> {
            #(#prologue)*
            #(#body)*
            Ok(#ret)
        }
    })
}

/// Where a forward reads the run-time size `s` from: (input, axis, c) for the first input
/// whose shape has `s` (c = 1), else one with a positive multiple `c·s`; `None`: it is an
/// `i32` parameter (its callers pass theirs: [`param_symbols`]).
fn symbol_source(g: &Graph, s: &str) -> Option<(usize, usize, i64)> {
    let find = |factor: &dyn Fn(&Dim) -> Option<i64>| {
        g.inputs.iter().enumerate().find_map(|(k, inp)| {
            let dims = &inp.ty.shape.0;
            dims.iter()
                .enumerate()
                .find_map(|(ax, d)| factor(d).map(|c| (k, ax, c)))
        })
    };
    find(&|d| (*d == Dim::sym(s)).then_some(1)).or_else(|| {
        find(&|d| match d {
            Dim::Affine { terms, konst: 0 } if terms.len() == 1 && terms[0].0 == s => {
                (terms[0].1 > 0).then_some(terms[0].1)
            }
            _ => None,
        })
    })
}

/// The run-time sizes `g`'s forward takes as `i32` parameters, in their order (after the
/// arrays): those no input's shape gives.
pub(crate) fn param_symbols(g: &Graph) -> Vec<String> {
    symbols(g)
        .into_iter()
        .filter(|s| symbol_source(g, s).is_none())
        .collect()
}

/// Does every symbol of `g` stand alone in an input's shape (so no `i32` parameters, and the
/// flat twin reads it directly)? A symbol only seen as a multiple (`2·N`) gets no twin.
fn dims_from_inputs(g: &Graph) -> bool {
    symbols(g).iter().all(|s| {
        g.inputs
            .iter()
            .any(|i| i.ty.shape.0.contains(&Dim::Sym(s.clone())))
    })
}

/// Whether `g` gets a flat twin and a `_compiled` forward. Not a graph with a collective:
/// a trace would keep the process group scoped when it was made (and MLX does not compile
/// collectives).
pub(crate) fn has_compiled_twin(g: &Graph) -> bool {
    dims_from_inputs(g) && weights::has_weights(g) && !has_collective(g)
}

/// Whether `g` itself has an op between processes (`OpFamily::Collective`).
fn has_collective(g: &Graph) -> bool {
    g.nodes
        .iter()
        .any(|n| n.op.family() == graph_dsl::OpFamily::Collective)
}

/// A flat twin of a forward for `transforms::compile` (arrays only: the weights'
/// `arrays()`, then the inputs), when every run-time dim comes from an input.
fn emit_flat(g: &Graph) -> TokenStream {
    if !dims_from_inputs(g) || has_collective(g) {
        return quote!();
    }
    let name = fn_name(&g.name);
    let flat_name = format_ident!("{}_flat", name);
    let doc = format!(
        " `{name}` over one slice (the weights' `arrays()`, then the inputs in order), for `transforms::compile`."
    );
    let (wdecl, w) = if weights::has_weights(g) {
        let ty = weights_ty(&g.name);
        (
            quote!(let w = #ty::from_arrays(&args[..#ty::COUNT]); let x = &args[#ty::COUNT..];),
            quote!(&w,),
        )
    } else {
        (quote!(let x = args;), quote!())
    };
    let xs = (0..g.inputs.len()).map(|i| {
        let i = Literal::usize_unsuffixed(i);
        quote!(&x[#i])
    });
    let body = if g.outputs.len() == 1 {
        quote!(Ok(vec![#name(#w #(#xs),*)?]))
    } else {
        let ids: Vec<Ident> = (0..g.outputs.len())
            .map(|i| format_ident!("o{}", i))
            .collect();
        quote! {
            let (#(#ids),*) = #name(#w #(#xs),*)?;
            Ok(vec![#(#ids),*])
        }
    };
    let compiled = emit_compiled(g);
    quote! {
        #[doc = #doc]
        pub fn #flat_name(args: &[Array]) -> Result<Vec<Array>, Exception> {
            #wdecl
            #body
        }

        #compiled
    }
}

/// `{name}_compiled`: the same signature as the forward, through `transforms::compile` of
/// the flat twin, traced once per thread and input shapes (for blocks called in a loop).
fn emit_compiled(g: &Graph) -> TokenStream {
    if !weights::has_weights(g) {
        return quote!();
    }
    let name = fn_name(&g.name);
    let flat_name = format_ident!("{}_flat", name);
    let compiled = format_ident!("{}_compiled", name);
    let ty = weights_ty(&g.name);
    let doc =
        format!(" `{name}` through `transforms::compile` (traced once per thread and shapes).");
    let params: Vec<Ident> = g.inputs.iter().map(|i| ident(&snake(&i.name))).collect();
    let n_out = g.outputs.len();
    let (ret, take) = if n_out == 1 {
        (quote!(Array), quote!(Ok(next()?)))
    } else {
        let outs = (0..n_out).map(|_| quote!(next()?));
        let tys = (0..n_out).map(|_| quote!(Array));
        (quote!((#(#tys),*)), quote!(Ok((#(#outs),*))))
    };
    quote! {
        #[doc = #doc]
        pub fn #compiled(w: &#ty, #(#params: &Array),*) -> Result<#ret, Exception> {
            // the flat twin sees arrays only, not which weights are quantized
            if w.quantized() {
                return #name(w, #(#params),*);
            }
            type Traced = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;
            thread_local! {
                static TRACED: ::std::cell::RefCell<Traced> =
                    ::std::cell::RefCell::new(Box::new(mlx::transforms::compile::compile(#flat_name, None)));
            }
            let mut args = w.arrays();
            args.extend([#((#params).clone()),*]);
            let out = TRACED.with(|f| (f.borrow_mut())(&args))?;
            let mut out = out.into_iter();
            let mut next = || out.next().ok_or_else(|| Exception::custom("a compiled block returned too few outputs"));
            #take
        }
    }
}

fn helpers() -> TokenStream {
    let fused = fused::helpers();
    quote! {
        #fused

        /// Errors of `load`: a weight the checkpoint cannot give, or an MLX failure while
        /// converting it.
        #[derive(Debug)]
        pub enum LoadError {
            Weight(WeightError),
            Mlx(Exception),
        }

        impl ::std::fmt::Display for LoadError {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self {
                    LoadError::Weight(e) => write!(f, "{e}"),
                    LoadError::Mlx(e) => write!(f, "mlx: {e}"),
                }
            }
        }

        impl ::std::error::Error for LoadError {}

        impl From<WeightError> for LoadError {
            fn from(e: WeightError) -> Self {
                LoadError::Weight(e)
            }
        }

        impl From<Exception> for LoadError {
            fn from(e: Exception) -> Self {
                LoadError::Mlx(e)
            }
        }

        #[doc(hidden)]
        pub fn __key(prefix: &str, rel: &str) -> String {
            if prefix.is_empty() {
                rel.to_string()
            } else {
                format!("{prefix}.{rel}")
            }
        }

        #[doc(hidden)]
        pub fn __scalar(v: f32, like: &Array) -> Result<Array, Exception> {
            Array::from_f32(v).as_dtype(like.dtype())
        }

        #[doc(hidden)]
        pub fn __silu(x: &Array) -> Result<Array, Exception> {
            ops::multiply(x, &ops::sigmoid(x)?)
        }

        /// `x[.., start..end, ..]` along `axis`.
        #[doc(hidden)]
        pub fn __slice(x: &Array, axis: i32, start: i32, end: i32) -> Result<Array, Exception> {
            let mut parts = ops::split_at_indices(x, &[start, end], axis)?;
            Ok(parts.swap_remove(1))
        }

        #[doc(hidden)]
        pub fn __f32s(bytes: &[u8]) -> Vec<f32> {
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }

        #[doc(hidden)]
        pub fn __take(a: &Array, axis: i32, index: i32) -> Result<Array, Exception> {
            ops::squeeze_axes(&__slice(a, axis, index, index + 1)?, &[axis])
        }
    }
}

/// Every block body of `graphs`, once, sorted by name (with the block table attached so
/// nested calls resolve).
fn collect_blocks(graphs: &[Graph]) -> Result<BTreeMap<String, Graph>> {
    let mut blocks: BTreeMap<String, Graph> = BTreeMap::new();
    for g in graphs {
        for (name, b) in &g.blocks {
            match blocks.get(name) {
                // (the kept copy carries its caller's block table: compare the bodies alone)
                Some(prev) if bare(prev) != bare(b) => {
                    return Err(CodegenError::DuplicateGraph(name.clone()))
                }
                _ => {
                    let mut b = b.clone();
                    b.blocks = g.blocks.clone();
                    blocks.insert(name.clone(), b);
                }
            }
        }
    }
    Ok(blocks)
}

/// A graph without its block table (for comparing bodies).
fn bare(g: &Graph) -> Graph {
    let mut g = g.clone();
    g.blocks.clear();
    g
}

/// Generate one module for `spec` from `graphs` (already through the passes).
pub fn generate(spec: &Spec, graphs: &[Graph]) -> Result<TokenStream> {
    let blocks = collect_blocks(graphs)?;
    // what the shared module already has
    let mut shared: BTreeMap<String, Graph> = BTreeMap::new();
    let mut uses = vec![];
    let mut helper_items = helpers();
    if let Some(sh) = &spec.shared {
        for g in sh
            .graphs
            .iter()
            .cloned()
            .chain(collect_blocks(&sh.graphs)?.into_values())
        {
            shared.insert(g.name.clone(), bare(&g));
        }
        let path: syn::Path =
            syn::parse_str(&sh.path).map_err(|_| CodegenError::BadPath(sh.path.clone()))?;
        let fused = fused::names();
        helper_items = quote! {
            pub use #path::LoadError;
            use #path::{__f32s, __key, __scalar, __silu, __slice, __take};
            use #path::{#(#fused),*};
        };
        // every shared item is re-exported, so each module has the same item names
        for (name, g) in &shared {
            let f = fn_name(name);
            uses.push(quote!(pub use #path::#f;));
            if weights::has_weights(g) {
                let t = weights_ty(name);
                uses.push(quote!(pub use #path::#t;));
            }
        }
    }
    let mut items = vec![];
    let mut tables = vec![];
    // a graph that is also a block of another one (the VAE encoder's residual blocks) is
    // emitted once
    let mut seen: BTreeMap<String, Graph> = BTreeMap::new();
    for g in blocks.values().chain(graphs.iter()) {
        match seen.get(&g.name) {
            Some(prev) if *prev == bare(g) => continue,
            Some(_) => return Err(CodegenError::DuplicateGraph(g.name.clone())),
            None => {
                seen.insert(g.name.clone(), bare(g));
            }
        }
        if let Some(sg) = shared.get(&g.name) {
            if *sg != bare(g) {
                return Err(CodegenError::NotShared(g.name.clone()));
            }
            continue;
        }
        if weights::has_weights(g) {
            items.push(weights::emit_struct(g)?);
        }
        items.push(emit_fn(g, &mut tables)?);
        items.push(emit_flat(g));
    }
    // identical tables (a square grid's row and column tables) are stored once
    let mut first: BTreeMap<Vec<u8>, Ident> = BTreeMap::new();
    let tables: Vec<TokenStream> = tables
        .into_iter()
        .map(|(id, bytes)| {
            if let Some(prev) = first.get(&bytes) {
                let doc = format!(" Same values as `{prev}`.");
                return quote! {
                    #[doc = #doc]
                    const #id: &[u8] = #prev;
                };
            }
            first.insert(bytes.clone(), id.clone());
            let lit = Literal::byte_string(&bytes);
            let n = Literal::usize_unsuffixed(bytes.len() / 4);
            let doc = format!(" {n} f32 values, little-endian.");
            quote! {
                #[doc = #doc]
                const #id: &[u8] = #lit;
            }
        })
        .collect();
    let consts = spec.consts.iter().map(|(n, v)| {
        let id = ident(&n.to_uppercase());
        let v = Literal::usize_unsuffixed(*v);
        quote!(pub const #id: usize = #v;)
    });
    let module = ident(&spec.module);
    let header = format!(
        " Generated by graph-codegen for {}; do not edit (change the graph or codegen instead).",
        spec.title
    );
    let helpers = helper_items;
    let warm_up = fused::warm_up(blocks.values().chain(graphs.iter()));
    let extra = &spec.extra;
    Ok(quote! {
        #[doc = #header]
        #[allow(unused_variables, unused_imports, clippy::all)]
        pub mod #module {
            use ::qwen_runtime::__private::mlx_rs::{self as mlx, error::Exception, fast, ops, Array, Dtype};
            use ::qwen_runtime::weights::{Checkpoint, Dtype as WeightDtype, TensorSpec};
            use ::qwen_runtime::WeightError;
            use ::qwen_runtime::kernels as __kernels;
            use ::qwen_runtime::attention as __attention;
            use ::qwen_runtime::quant::{quantize as __quantize, Quantized};

            #(#consts)*

            #helpers

            #(#uses)*

            #(#items)*

            #warm_up

            #extra

            #(#tables)*
        }
    })
}
