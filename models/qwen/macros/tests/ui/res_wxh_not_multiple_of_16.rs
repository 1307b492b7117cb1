qwen_macros::specialize!(res = 1664x930);

fn main() {}
