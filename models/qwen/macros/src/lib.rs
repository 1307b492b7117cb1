//! qwen-macros: `specialize!`, a thin shim. It parses the arguments ([`args`]), asks
//! qwen-graph for the graphs of that specialization and graph-codegen for their code
//! ([`expand`]). Misuse is a spanned compile error (all problems at once) plus an empty
//! stub module, never a panic.
//!
//! ```ignore
//! specialize!(shared);                      // pub mod shared { text encoder, VAE blocks, … }
//! specialize!(res = 1024);                  // pub mod res1024 { …; pub use super::shared::… }
//! specialize!(res = 1664x928);              // pub mod res1664x928 { … } (W×H)
//! specialize!(res = 96x64, config = tiny);  // pub mod res96x64_tiny { … }
//! specialize!(res = 96x64, config = tiny, cfg = split); // pub mod res96x64_tiny_split
//! ```
//!
//! [`specializations!`] wraps such lines: each expands exactly as above, and the list also
//! yields the registry of its resolution modules ([`list`]), so a line is all a resolution
//! takes.

mod args;
mod expand;
mod list;

use proc_macro::TokenStream;

/// Generate one module of shape-specialized mlx-rs code. Options: `res = N` or
/// `res = WxH` (multiples of 16, required), `config = real | tiny` (default real),
/// `cfg = batched | split` (default batched: how CFG halves meet in attention), `sp = N`
/// (N ≥ 2: the transformer on one of N ranks' shares of the image tokens, gathering over
/// them; sequence parallelism, with `cfg = batched`).
///
/// `specialize!(shared)` (with `config = tiny`: `shared_tiny`) generates what every
/// resolution of a config shares; each resolution module re-exports it from its sibling
/// `super::shared` (`super::shared_tiny`), so that line must sit beside the others.
#[proc_macro]
pub fn specialize(input: TokenStream) -> TokenStream {
    let parsed = match syn::parse::Parser::parse(args::parse, input) {
        Ok(p) => p,
        Err(e) => return e.to_compile_error().into(),
    };
    expand::expand(parsed).into()
}

/// A list of `specialize!(…);` lines. Each expands exactly as a lone [`specialize!`] (same
/// module, same spanned errors); a line that would generate a module an earlier line already
/// generates, or an item that is not `specialize!(…);`, is a spanned error. The list also
/// defines `macro_rules! for_each_resolution` (re-exported `pub(crate)` beside the modules):
/// `for_each_resolution!(cb)` expands to
/// `cb! { res1024: real, batched, 1024, 1024; res96x64_tiny: tiny, batched, 96, 64; … }`,
/// one entry per resolution module in the order of the lines (`config`, `cfg`, width,
/// height), which is how the pipeline gets its list of modules. One list per module.
///
/// ```ignore
/// specializations! {
///     specialize!(shared);
///     specialize!(res = 1024);
///     specialize!(res = 1664x928);
/// }
/// ```
#[proc_macro]
pub fn specializations(input: TokenStream) -> TokenStream {
    list::expand(input.into()).into()
}
