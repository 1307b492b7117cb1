//! Misuse of `specialize!` is a spanned compile error, pinned by `tests/ui/*.{rs,stderr}`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
