//! Snapshots of the generated code, small enough to review (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test -p qwen-macros --test snapshots` and read the diff).
//! Same calls as the macro's `expand`: qwen-graph builds and runs the passes, graph-codegen
//! emits and formats.
//!
//! - Tiny config, whole components: the dual-stream block's forward (batched and
//!   `cfg = split`) and its weights struct, one VAE residual block, and the shared module
//!   without its components (header, helpers, kernels, `LoadError`).
//! - Real config, a [`summary`] of each module `specializations!` generates from it (the
//!   shared one and `specialize!(res = 1024, cfg = split)`, what the product runs): header,
//!   consts and the signature of every item, each body, field list or value elided to a
//!   hash, so that a change in it moves one line. The bodies are the tiny ones with other
//!   sizes.
//!
//! In all of them a string literal longer than [`LONG`] chars (kernel sources, RoPE
//! tables) reads as its length and an FNV-1a hash, so it still shows when it changes.

use graph_codegen::names::{camel, snake};
use graph_codegen::{generate, Shared, Spec};
use graph_dsl::passes::CfgJoin;
use proc_macro2::{Delimiter, Group, Literal, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use qwen_graph::{build, build_shared, shared_module, Built, ConfigName, Request};
use syn::{ImplItem, Item};

/// String literals longer than this many chars (bytes for `b"…"`) are elided.
const LONG: usize = 200;

fn built(width: usize, height: usize, config: ConfigName, cfg: CfgJoin) -> Built {
    build(&Request {
        width,
        height,
        config,
        cfg,
        parts: 1,
    })
    .unwrap()
}

/// The module `specialize!` generates from `b`, with the shared graphs imported from
/// `super::<shared module>` when `shared` is set (a resolution module), parsed, long
/// literals elided.
fn module(name: &str, b: &Built, shared: Option<ConfigName>) -> syn::ItemMod {
    let spec = Spec {
        module: name.into(),
        title: b.title.clone(),
        consts: b.consts.clone(),
        shared: shared.map(|c| Shared {
            path: format!("super::{}", shared_module(c)),
            graphs: build_shared(c).unwrap().graphs,
        }),
        extra: Default::default(),
    };
    let file: syn::File = syn::parse2(elide_literals(generate(&spec, &b.graphs).unwrap())).unwrap();
    match <[Item; 1]>::try_from(file.items) {
        Ok([Item::Mod(m)]) => m,
        _ => panic!("generated code is not one module"),
    }
}

fn items(m: &syn::ItemMod) -> &[Item] {
    &m.content.as_ref().expect("inline module").1
}

/// Whether `g` is the `[doc = "…"]` of a doc comment.
fn is_doc(g: &Group) -> bool {
    g.delimiter() == Delimiter::Bracket
        && matches!(g.stream().into_iter().next(), Some(TokenTree::Ident(i)) if i == "doc")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Replace every string or byte-string literal longer than [`LONG`] by its length and an
/// FNV-1a hash of its value, e.g. `"<3777 chars, fnv1a 0123456789abcdef>"`.
fn elide_literals(tokens: TokenStream) -> TokenStream {
    tokens
        .into_iter()
        .map(|t| match t {
            // doc comments stay whole
            TokenTree::Group(g) if is_doc(&g) => TokenTree::Group(g),
            TokenTree::Group(g) => {
                let mut e = Group::new(g.delimiter(), elide_literals(g.stream()));
                e.set_span(g.span());
                TokenTree::Group(e)
            }
            TokenTree::Literal(l) => TokenTree::Literal(match syn::Lit::new(l.clone()) {
                syn::Lit::Str(s) if s.value().chars().count() > LONG => {
                    let v = s.value();
                    let n = v.chars().count();
                    Literal::string(&format!("<{n} chars, fnv1a {:016x}>", fnv1a(v.as_bytes())))
                }
                syn::Lit::ByteStr(s) if s.value().len() > LONG => {
                    let v = s.value();
                    let text = format!("<{} bytes, fnv1a {:016x}>", v.len(), fnv1a(&v));
                    Literal::byte_string(text.as_bytes())
                }
                _ => l,
            }),
            t => t,
        })
        .collect()
}

/// `items` as prettyplease prints them.
fn code(items: &[Item]) -> String {
    pretty(quote!(#(#items)*))
}

fn pretty(items: impl ToTokens) -> String {
    graph_codegen::format(items.into_token_stream()).unwrap()
}

/// The name of a top-level item, where it has one (an `impl`: its self type).
fn item_name(item: &Item) -> Option<String> {
    Some(match item {
        Item::Fn(f) => f.sig.ident.to_string(),
        Item::Struct(s) => s.ident.to_string(),
        Item::Impl(i) => i.self_ty.to_token_stream().to_string(),
        _ => return None,
    })
}

/// Whether `item` is part of graph `graph`'s component: its forward `g`, `g_flat`,
/// `g_compiled`, its weights struct and that struct's `impl`s.
fn of_graph(item: &Item, graph: &str) -> bool {
    let g = snake(graph);
    let names = [
        g.clone(),
        format!("{g}_flat"),
        format!("{g}_compiled"),
        format!("{}Weights", camel(graph)),
    ];
    item_name(item).is_some_and(|n| names.contains(&n))
}

/// The forward functions of `graph` (`g`, `g_flat`, `g_compiled`) in `m`.
fn forward(m: &syn::ItemMod, graph: &str) -> Vec<Item> {
    (items(m).iter())
        .filter(|i| matches!(i, Item::Fn(_)) && of_graph(i, graph))
        .cloned()
        .collect()
}

/// The weights struct of `graph` and its `impl`s in `m`.
fn weights(m: &syn::ItemMod, graph: &str) -> Vec<Item> {
    (items(m).iter())
        .filter(|i| !matches!(i, Item::Fn(_)) && of_graph(i, graph))
        .cloned()
        .collect()
}

/// `item` as prettyplease prints it, less `end` (where the elided part was).
fn head(item: impl ToTokens, end: &str) -> String {
    let s = pretty(item);
    s.trim_end()
        .strip_suffix(end)
        .unwrap()
        .trim_end()
        .to_string()
}

/// `line` and, in a comment, what was elided from it: `what` (if any) and a hash of
/// `tokens`, so that the line still changes when they do.
fn hashed(line: String, what: &str, tokens: impl ToTokens) -> String {
    let hash = fnv1a(tokens.to_token_stream().to_string().as_bytes());
    let what = if what.is_empty() {
        String::new()
    } else {
        format!("{what}, ")
    };
    format!("{line} // {what}fnv1a {hash:016x}")
}

/// A function's signature, `;` where the body was, then a hash of the body.
fn signature(vis: &syn::Visibility, sig: &syn::Signature, body: &syn::Block) -> String {
    hashed(format!("{};", head(quote!(#vis #sig {}), "{}")), "", body)
}

/// A `const`, whole where prettyplease prints it on at most two lines, else its value
/// elided.
fn konst(vis: &syn::Visibility, ident: &syn::Ident, ty: &syn::Type, expr: &syn::Expr) -> String {
    let full = head(quote!(#vis const #ident: #ty = #expr;), "");
    if full.lines().count() <= 2 {
        return full;
    }
    let line = head(quote!(#vis const #ident: #ty = ..;), "..;");
    hashed(format!("{line} ..;"), "", expr)
}

/// What a reviewer needs of a generated module that repeats, at other sizes, one whose
/// bodies are snapshotted whole: the module's doc header, every `use` and `const`, every
/// `fn` signature (in `impl`s too) and each struct, enum and `static` on one line, with
/// bodies, fields, variants' fields and values elided to a hash (a struct's fields with
/// their docs, so that a weight's shape still shows), and item docs left out. Derived from
/// the parsed source, so that nothing is dropped without a trace: an item of another kind
/// is printed whole.
fn summary(m: &syn::ItemMod) -> String {
    let docs = m.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let (vis, ident) = (&m.vis, &m.ident);
    let mut out = format!("{} {{\n", head(quote!(#(#docs)* #vis mod #ident {}), "{}"));
    for item in items(m) {
        let text = match item {
            Item::Fn(f) => signature(&f.vis, &f.sig, &f.block),
            Item::Const(c) => konst(&c.vis, &c.ident, &c.ty, &c.expr),
            Item::Struct(s) => {
                let (vis, ident, gen) = (&s.vis, &s.ident, &s.generics);
                let line = head(quote!(#vis struct #ident #gen;), ";");
                let n = s.fields.len();
                let what = format!("{n} field{}", if n == 1 { "" } else { "s" });
                hashed(format!("{line} {{ .. }}"), &what, &s.fields)
            }
            Item::Enum(e) => {
                let (vis, ident, gen) = (&e.vis, &e.ident, &e.generics);
                let line = head(quote!(#vis enum #ident #gen {}), "{}");
                let names: Vec<_> = e.variants.iter().map(|v| v.ident.to_string()).collect();
                hashed(
                    format!("{line} {{ {} }}", names.join(", ")),
                    "",
                    &e.variants,
                )
            }
            Item::Static(s) => {
                let (vis, ident, ty) = (&s.vis, &s.ident, &s.ty);
                let line = head(quote!(#vis static #ident: #ty = ..;), "..;");
                hashed(format!("{line} ..;"), "", &s.expr)
            }
            Item::Impl(i) => {
                let mut bare = i.clone();
                bare.attrs.clear();
                bare.items.clear();
                let line = head(bare, "{}");
                let inner: String = (i.items.iter())
                    .map(|ii| match ii {
                        ImplItem::Fn(f) => signature(&f.vis, &f.sig, &f.block),
                        ImplItem::Const(c) => konst(&c.vis, &c.ident, &c.ty, &c.expr),
                        other => pretty(quote!(impl X { #other })),
                    })
                    .map(|t| indent(&t))
                    .collect();
                match inner.is_empty() {
                    true => format!("{line} {{}}"),
                    false => format!("{line} {{\n{inner}}}"),
                }
            }
            Item::Mod(inner) if inner.content.is_some() => summary(inner),
            other => head(other, ""),
        };
        out += &indent(&text);
    }
    out + "}\n"
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// The tiny dual-stream block of `specialize!(res = 96x64, config = tiny)`, as emitted
/// when a module holds that block only.
fn tiny_block(cfg: CfgJoin) -> syn::ItemMod {
    let mut b = built(96, 64, ConfigName::Tiny, cfg);
    b.graphs = vec![b.graphs[1].blocks["dual_stream_block"].clone()];
    module("res96x64_tiny", &b, None)
}

#[test]
fn tiny_dual_stream_block() {
    let forward = code(&forward(&tiny_block(CfgJoin::Batched), "dual_stream_block"));
    insta::assert_snapshot!("tiny_dual_stream_block", forward);
}

#[test]
fn tiny_dual_stream_block_weights() {
    let weights = code(&weights(&tiny_block(CfgJoin::Batched), "dual_stream_block"));
    insta::assert_snapshot!("tiny_dual_stream_block_weights", weights);
}

/// `cfg = split`: the forward only; the weights are the batched block's.
#[test]
fn tiny_split_dual_stream_block() {
    let (split, batched) = (
        tiny_block(CfgJoin::SplitHalves),
        tiny_block(CfgJoin::Batched),
    );
    assert_eq!(
        code(&weights(&split, "dual_stream_block")),
        code(&weights(&batched, "dual_stream_block")),
        "the split block's weights differ from the batched one's"
    );
    let forward = code(&forward(&split, "dual_stream_block"));
    insta::assert_snapshot!("tiny_split_dual_stream_block", forward);
}

/// `sp = 2` (the image tokens split over two ranks): the block's forward, its share of the
/// tokens (24 of 96×64's 24 → 12), the keys and values gathered; the weights are the
/// batched block's, and the transformer gathers the velocity to the whole image's tokens.
#[test]
fn tiny_sp2_dual_stream_block() {
    let mut b = build(&Request {
        width: 96,
        height: 64,
        config: ConfigName::Tiny,
        cfg: CfgJoin::Batched,
        parts: 2,
    })
    .unwrap();
    let t = b.graphs[1].clone();
    assert_eq!(t.inputs[0].ty.shape.to_string(), "[B, 12, 64]");
    assert_eq!(t.ty(t.outputs[0].1).shape.to_string(), "[B, 24, 64]");
    assert_eq!(t.count_op("gather_sequence"), 1);
    let block = &t.blocks["dual_stream_block"];
    assert_eq!(block.count_op("gather_sequence"), 1); // keys and values in one
    assert!(b.consts.contains(&("seq_parts".into(), 2)));
    b.graphs = vec![block.clone()];
    let m = module("res96x64_tiny_sp2", &b, None);
    assert_eq!(
        code(&weights(&m, "dual_stream_block")),
        code(&weights(&tiny_block(CfgJoin::Batched), "dual_stream_block")),
        "the split block's weights differ from the batched one's"
    );
    // no flat twin for `transforms::compile` (a trace would keep the group it was made in),
    // where the batched block has one
    let fns = |m: &syn::ItemMod| -> Vec<String> {
        items(m)
            .iter()
            .filter_map(|i| match i {
                Item::Fn(f) => Some(f.sig.ident.to_string()),
                _ => None,
            })
            .collect()
    };
    assert!(fns(&tiny_block(CfgJoin::Batched)).contains(&"dual_stream_block_flat".to_string()));
    let sp_fns = fns(&m);
    assert!(
        sp_fns.contains(&"dual_stream_block".to_string()),
        "{sp_fns:?}"
    );
    assert!(!sp_fns.iter().any(|f| f.ends_with("_flat")), "{sp_fns:?}");
    insta::assert_snapshot!(
        "tiny_sp2_dual_stream_block",
        code(&forward(&m, "dual_stream_block"))
    );
}

/// The first residual block of the VAE decoder's up block 1 (32 -> 64 channels at the
/// tiny config, so with its 1x1 shortcut), weights and forward.
#[test]
fn tiny_vae_residual_block() {
    let mut b = build_shared(ConfigName::Tiny).unwrap();
    b.graphs.retain(|g| g.name == "vae_up1_resnet0");
    let m = module(&shared_module(ConfigName::Tiny), &b, None);
    let mut items = weights(&m, "vae_up1_resnet0");
    items.extend(forward(&m, "vae_up1_resnet0"));
    let component = code(&items);
    insta::assert_snapshot!("tiny_vae_up1_resnet0", component);
}

/// `specialize!(shared, config = tiny)` less its components: the header, the helpers the
/// forwards call, the fused kernels and `LoadError`.
#[test]
fn tiny_shared_helpers() {
    let b = build_shared(ConfigName::Tiny).unwrap();
    let mut m = module(&shared_module(ConfigName::Tiny), &b, None);
    let content = &mut m.content.as_mut().unwrap().1;
    let graphs: Vec<&str> = (b.graphs.iter())
        .flat_map(|g| std::iter::once(&g.name).chain(g.blocks.keys()))
        .map(String::as_str)
        .collect();
    content.retain(|i| !graphs.iter().any(|g| of_graph(i, g)));
    let helpers = pretty(m);
    insta::assert_snapshot!("tiny_shared_helpers", helpers);
}

/// What the product's `specialize!(res = 1024, cfg = split)` expands to, summarised.
#[test]
fn real_res1024_summary() {
    let b = built(1024, 1024, ConfigName::Real, CfgJoin::SplitHalves);
    let m = module("res1024", &b, Some(ConfigName::Real));
    let summary = summary(&m);
    assert!(summary.contains("pub const IMG_TOKENS: usize = 4096;"));
    assert!(summary.contains("pub use super::shared::vae_resblock_384_384;"));
    assert!(!summary.contains("pub fn text_encoder("));
    insta::assert_snapshot!("real_res1024_summary", summary);
}

/// What `specialize!(shared)` expands to, summarised.
#[test]
fn real_shared_summary() {
    let b = build_shared(ConfigName::Real).unwrap();
    let m = module(&shared_module(ConfigName::Real), &b, None);
    let summary = summary(&m);
    insta::assert_snapshot!("real_shared_summary", summary);
}

#[test]
fn generation_is_deterministic() {
    let gen = || {
        let b = built(96, 64, ConfigName::Tiny, CfgJoin::Batched);
        let spec = Spec {
            module: "m".into(),
            title: b.title.clone(),
            consts: b.consts.clone(),
            shared: None,
            extra: Default::default(),
        };
        generate(&spec, &b.graphs).unwrap().to_string()
    };
    assert_eq!(gen(), gen());
}
