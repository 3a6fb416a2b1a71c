// `#[safe_db::test]` given a parameter it cannot make, or a body it cannot judge.
use safe_db::testing::TestTx;

#[safe_db::test]
async fn takes_a_string(_name: &String) {}

#[safe_db::test]
async fn returns_a_number(_test: &TestTx) -> u32 {
    7
}

fn main() {}
