use safe_db::{Tx, safe_db_operation};

/// Its `Ok` must mean committed.
#[safe_db_operation(durable)]
async fn place_order(tx: &Tx, id: i32) -> Result<(), safe_db::Error> {
    let _ = (tx, id);
    Ok(())
}

#[safe_db_operation]
async fn checkout(tx: &Tx) -> Result<(), safe_db::Error> {
    // Inside a transaction, `place_order` would be a savepoint the caller can still roll back.
    place_order(tx, 7).await
}

fn main() {}

/// The request's transaction is no connection either: it commits after the handler.
async fn handler(tx: safe_db::axum::RequestTx) -> Result<(), safe_db::Error> {
    place_order(&tx, 8).await
}

/// Nor is a test's transaction: `test.db()` runs it in a savepoint of the test.
async fn a_test(test: &safe_db::testing::TestTx) -> Result<(), safe_db::Error> {
    place_order(test, 9).await
}
