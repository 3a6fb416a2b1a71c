//! Compile-time behaviour of `#[safe_db_operation]`: every supported shape compiles, and
//! every misuse fails with an error on the user's own tokens (see `tests/ui/fail/*.stderr`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
