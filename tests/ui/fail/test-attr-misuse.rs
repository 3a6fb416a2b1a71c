// `#[safe_db::test]` misused: each error on the offending tokens.
use safe_db::testing::TestTx;

#[safe_db::test]
fn not_async(_test: &TestTx) {}

#[safe_db::test]
async fn no_parameter() {}

#[safe_db::test]
async fn by_value(_test: TestTx) {}

#[safe_db::test(retries = 3)]
async fn unknown_option(_test: &TestTx) {}

#[safe_db::test(backends(oracle))]
async fn unknown_database(_test: &TestTx) {}

fn main() {}
