use safe_db::{Tx, safe_db_operation};
use sea_orm::{ConnectionTrait, DatabaseConnection};

#[safe_db_operation]
async fn archive(tx: &Tx, db: &DatabaseConnection, id: i32) -> Result<(), safe_db::Error> {
    tx.execute_unprepared("DELETE FROM agents").await?;
    // This would run outside the transaction, and survive its rollback.
    db.execute_unprepared(&format!("INSERT INTO archive VALUES ({id})")).await?;
    Ok(())
}

fn main() {}
