//! qwen-runtime
