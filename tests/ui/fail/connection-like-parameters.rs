use safe_db::axum::RequestTx;
use safe_db::{Begin, Db, Tx, safe_db_operation};
use sea_orm::DatabaseTransaction;

// Each of these reaches the database outside the operation's transaction.
#[safe_db_operation]
async fn archive(
    tx: &Tx,
    db: &Db,
    request: &RequestTx,
    other: &DatabaseTransaction,
    any: &impl Begin,
) -> Result<(), safe_db::Error> {
    let _ = (tx, db, request, other, any);
    Ok(())
}

fn main() {}
