qwen_macros::specialize!(res = 1024, cfg = split, sp = 2);

fn main() {}
