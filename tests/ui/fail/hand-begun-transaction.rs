use safe_db::{Tx, safe_db_operation};
use sea_orm::{DatabaseConnection, TransactionTrait};

#[safe_db_operation(requires_new)]
async fn audit(tx: &Tx, what: &str) -> Result<(), safe_db::Error> {
    let _ = (tx, what);
    Ok(())
}

#[safe_db_operation(savepoint = false)]
async fn touch(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

async fn legacy(db: &DatabaseConnection) -> Result<(), safe_db::Error> {
    let txn = db.begin().await?;
    // safe-db knows neither this transaction's pool nor when it commits.
    audit(&txn, "legacy").await?;
    touch(&txn).await?;
    txn.commit().await?;
    Ok(())
}

fn main() {
    let _ = legacy;
}

/// Its statements would go around safe-db's checks, in the caller's transaction.
#[safe_db_operation(savepoint = false)]
async fn declared_by_hand(tx: &sea_orm::DatabaseTransaction) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}
