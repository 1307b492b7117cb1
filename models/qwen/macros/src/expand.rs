//! Run qwen-graph and graph-codegen; turn any failure into a spanned error plus a stub.

use graph_dsl::passes::CfgJoin;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use qwen_graph::{ConfigName, Request};

use crate::args::Args;

/// `compile_error!`s plus an empty module of the intended name (so code that names the
/// module does not pile up secondary errors).
fn fail(errors: Vec<syn::Error>, module: Option<String>) -> TokenStream {
    let mut out = TokenStream::new();
    for e in errors {
        out.extend(e.to_compile_error());
    }
    if let Some(m) = module {
        let m = format_ident!("{}", m);
        out.extend(quote!(pub mod #m {}));
    }
    out
}

/// Expand parsed arguments.
pub fn expand(a: Args) -> TokenStream {
    let module = a.module();
    if !a.errors.is_empty() {
        return fail(a.errors, module);
    }
    let Some(module) = module else {
        return fail(
            vec![syn::Error::new(a.res_span, "missing resolution")],
            None,
        );
    };
    let config = if a.tiny {
        ConfigName::Tiny
    } else {
        ConfigName::Real
    };
    let shared = match qwen_graph::build_shared(config) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                vec![syn::Error::new(a.res_span, e.to_string())],
                Some(module),
            )
        }
    };
    let (built, shared) = match (a.shared, a.width, a.height) {
        (true, _, _) => (shared, None),
        (false, Some(width), Some(height)) => {
            let req = Request {
                width,
                height,
                config,
                cfg: if a.split {
                    CfgJoin::SplitHalves
                } else {
                    CfgJoin::Batched
                },
            };
            match qwen_graph::build(&req) {
                Ok(b) => {
                    let path = format!("super::{}", qwen_graph::shared_module(config));
                    (
                        b,
                        Some(graph_codegen::Shared {
                            path,
                            graphs: shared.graphs,
                        }),
                    )
                }
                Err(e) => {
                    return fail(
                        vec![syn::Error::new(a.res_span, e.to_string())],
                        Some(module),
                    )
                }
            }
        }
        _ => {
            return fail(
                vec![syn::Error::new(a.res_span, "missing resolution")],
                Some(module),
            )
        }
    };
    let spec = graph_codegen::Spec {
        module: module.clone(),
        title: built.title,
        consts: built.consts,
        shared,
    };
    match graph_codegen::generate(&spec, &built.graphs) {
        Ok(ts) => ts,
        Err(e) => fail(
            vec![syn::Error::new(a.res_span, format!("codegen: {e}"))],
            Some(module),
        ),
    }
}
