//! qwen-macros: the `specialize!` proc-macro shim.
