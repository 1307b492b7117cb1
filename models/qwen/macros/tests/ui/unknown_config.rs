qwen_macros::specialize!(res = 512, config = huge, cfg = sometimes);

fn main() {}
