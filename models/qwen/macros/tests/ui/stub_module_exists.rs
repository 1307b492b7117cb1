// A bad resolution still defines the module (empty), so only the macro's own error shows,
// not a second "unresolved module" error at the use site.
qwen_macros::specialize!(res = 1000);

use res1000 as _;

fn main() {}
