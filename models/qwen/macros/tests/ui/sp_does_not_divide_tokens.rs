// 64² is 16 image tokens: not a split over 3 ranks
qwen_macros::specialize!(res = 64, config = tiny, sp = 3);

fn main() {}
