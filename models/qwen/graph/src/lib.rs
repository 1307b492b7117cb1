//! qwen-graph
