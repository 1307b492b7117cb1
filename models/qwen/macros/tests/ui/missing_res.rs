qwen_macros::specialize!(config = tiny);

fn main() {}
