qwen_macros::specialize!(res = 1024, config = tiny, config = real);

fn main() {}
