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
                parts: a.parts,
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
    // a resolution module (the shared one has no decoder)
    let extra = if a.shared {
        TokenStream::new()
    } else {
        vae_decode_tile(&built.vae_tiles)
    };
    let spec = graph_codegen::Spec {
        module: module.clone(),
        title: built.title,
        consts: built.consts,
        shared,
        extra,
    };
    match graph_codegen::generate(&spec, &built.graphs) {
        Ok(ts) => ts,
        Err(e) => fail(
            vec![syn::Error::new(a.res_span, format!("codegen: {e}"))],
            Some(module),
        ),
    }
}

/// `vae_decode_tile(w, z)`: the generated tile decoder of z's latent size, run with the
/// full decoder's weights (the tile decoders are the same graph at other sizes, so their
/// weights structs hold the same arrays in the same order); `None` for a size without one.
fn vae_decode_tile(tiles: &[(usize, usize)]) -> TokenStream {
    let arms = tiles.iter().map(|&(h, w)| {
        let name = qwen_graph::vae::tile_name(h, w);
        let f = format_ident!("{}", name);
        let weights = format_ident!("{}Weights", camel(&name));
        let (h, w) = (h as i32, w as i32);
        quote! {
            (#h, #w) => Ok(Some(#f(&#weights::from_arrays(&w.arrays()), z)?)),
        }
    });
    quote! {
        /// The VAE decoder on one tile of a tiled decode (latents `[B, h, w, C]`, NHWC), without
        /// the final clamp, for the tile sizes this resolution's tiling makes; `None` for others.
        pub fn vae_decode_tile(w: &VaeDecoderWeights, z: &Array) -> Result<Option<Array>, Exception> {
            let s = z.shape();
            match (s[s.len() - 3], s[s.len() - 2]) {
                #(#arms)*
                _ => Ok(None),
            }
        }
    }
}

/// `vae_tile_32x8` → `VaeTile32x8`, as the codegen names a graph's weights struct.
fn camel(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}
