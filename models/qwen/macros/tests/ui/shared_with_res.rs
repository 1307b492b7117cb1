qwen_macros::specialize!(shared, res = 1024, cfg = split);

fn main() {}
