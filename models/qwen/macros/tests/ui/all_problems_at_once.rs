qwen_macros::specialize!(res = 1000, res = 1024, dtype = bf16);

fn main() {}
