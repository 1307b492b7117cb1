//! qwen-aot: the workspace root package. Integration tests live in `tests/`, benchmarks in `benches/`.
