qwen_macros::specialize!(res = 1024px);

fn main() {}
