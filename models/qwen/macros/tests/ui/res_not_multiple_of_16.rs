qwen_macros::specialize!(res = 1000);

fn main() {}
