//! Codegen errors. Never a panic: the macro turns these into spanned compile errors.

/// Something codegen cannot emit.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// An op that has no mlx-rs lowering (yet), or that a pass should have removed.
    #[error("graph `{graph}`, node `{node}`: cannot emit {op}: {why}")]
    Unsupported {
        graph: String,
        node: String,
        op: &'static str,
        why: String,
    },
    /// A symbolic dim that no input carries and that is not a parameter.
    #[error("graph `{graph}`: symbol `{sym}` is unbound")]
    UnboundSymbol { graph: String, sym: String },
    /// Two graphs with one name but different bodies.
    #[error("two different graphs are both named `{0}`")]
    DuplicateGraph(String),
    /// A graph that should come from the shared module but differs from it.
    #[error("graph `{0}` differs from the shared module's graph of that name")]
    NotShared(String),
    /// The shared module's path does not parse.
    #[error("bad shared module path `{0}`")]
    BadPath(String),
    /// A weight whose recorded transforms do not apply to its shape.
    #[error("weight `{key}`: transforms do not apply to its shape {shape:?}")]
    BadWeight { key: String, shape: Vec<usize> },
    /// The generated tokens did not parse as a file (a codegen bug).
    #[error("generated code does not parse: {0}")]
    Parse(#[from] syn::Error),
}

/// Result with [`CodegenError`].
pub type Result<T, E = CodegenError> = std::result::Result<T, E>;
