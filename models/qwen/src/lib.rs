//! qwen: Qwen-Image specializations and pipeline.
