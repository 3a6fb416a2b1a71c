use safe_db::{Tx, safe_db_operation};
use sea_orm::DatabaseConnection;

/// A step of a larger transaction: never on its own.
#[safe_db_operation(mandatory)]
async fn debit(tx: &Tx, account: i32) -> Result<(), safe_db::Error> {
    let _ = (tx, account);
    Ok(())
}

async fn caller(db: &DatabaseConnection) {
    // A connection: `debit` would commit on its own.
    let _ = debit(db, 7).await;
}

fn main() {
    let _ = caller;
}
