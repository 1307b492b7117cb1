// Two lines of a list that would generate the same module: the second is the error (the
// first still reports its own problem and defines the stub).
qwen_macros::specializations! {
    specialize!(res = 1000);
    specialize!(res = 1000);
}

use res1000 as _;

fn main() {}
