use safe_db::safe_db_operation;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};

// The body's transaction is safe-db's `Tx`: there is no SeaORM `DatabaseTransaction`
// underneath to lend it.
#[safe_db_operation]
async fn rename(tx: &DatabaseTransaction, name: &str) -> Result<(), DbErr> {
    tx.execute_unprepared("SELECT 1").await?;
    let _ = name;
    Ok(())
}

fn main() {}
