// Inside `specializations!` a line fails as it would alone (spanned at the bad value, the
// stub module still defined), and an item that is not `specialize!(…);` is an error too.
qwen_macros::specializations! {
    specialize!(res = 1000);
    specialize!(config = tiny);
    specialise!(res = 1024);
}

use res1000 as _;

fn main() {}
