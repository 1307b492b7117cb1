qwen_macros::specialize!(res = 1024, sp = 1);

fn main() {}
