//! graph-codegen: graph-dsl IR (after the passes) → mlx-rs source.
//!
//! [`generate`] turns a [`Spec`] and a list of component graphs into one module as a
//! `proc_macro2::TokenStream`: a doc header, literal consts, a weights struct per graph
//! (`specs()` and `load()` that applies the recorded weight transforms), one forward
//! function per component and one per distinct block body (called in a loop), all with
//! literal shapes. Weights are passed in as arguments, never captured, so a forward can
//! be wrapped in `mlx_rs::transforms::compile`. Generated code reaches mlx-rs through
//! `::qwen_runtime::__private::mlx_rs` and the loader through `::qwen_runtime::weights`.
//! [`format`] pretty-prints with prettyplease. Output is deterministic (everything that
//! comes from a map is sorted). Knows nothing about Qwen.

mod emit;
pub mod error;
mod format;
pub mod names;

pub use emit::generate;
pub use error::{CodegenError, Result};
pub use format::format;
pub use graph_dsl;

/// Graphs generated once in a sibling module and imported (not re-emitted) by this one:
/// what does not depend on the resolution.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    /// The path of the shared module as seen from this one, e.g. `super::shared`.
    pub path: String,
    /// The graphs that module was generated from (for their names, and to check that a
    /// block of this module really is the shared one).
    pub graphs: Vec<graph_dsl::Graph>,
}

/// What one generated module is for.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// The module's name, e.g. `res1024`.
    pub module: String,
    /// One line for the doc header, e.g. `res = 1024 (1024×1024), config = real`.
    pub title: String,
    /// Literal `pub const`s (name, value), emitted in this order.
    pub consts: Vec<(String, usize)>,
    /// Import these graphs (and the helpers) from a shared module instead of emitting them.
    pub shared: Option<Shared>,
    /// Items the caller adds to the module as they are (e.g. a model's dispatch over the
    /// generated functions).
    pub extra: proc_macro2::TokenStream,
}

/// Generate and format in one go (for tests and debugging).
pub fn generate_string(spec: &Spec, graphs: &[graph_dsl::Graph]) -> Result<String> {
    format(generate(spec, graphs)?)
}
