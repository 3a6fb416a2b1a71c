use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn reset(tx: &Tx) -> Result<(), safe_db::Error> {
    // Inside the body, `tx` is the transaction: the caller's connection cannot be
    // reached, so it cannot be closed, pinged or queried outside the transaction.
    tx.close().await?;
    Ok(())
}

fn main() {}
