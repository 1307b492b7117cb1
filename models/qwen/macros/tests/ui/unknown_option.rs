qwen_macros::specialize!(res = 1024, steps = 50);

fn main() {}
