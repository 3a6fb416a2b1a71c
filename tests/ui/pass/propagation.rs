//! Every valid combination of the propagation options compiles, with every caller it
//! allows, and its future is `Send`.
use std::sync::Arc;

use safe_db::{Db, Tx, safe_db_operation};
use sea_orm::{DatabaseConnection, DbErr};

#[safe_db_operation(requires_new, isolation = "serializable", read_only, timeout = "1s", retries = 3)]
async fn audit(tx: &Tx) -> Result<(), DbErr> {
    let _ = tx;
    Ok(())
}

#[safe_db_operation(mandatory, read_only, timeout = "1s")]
async fn step(tx: &Tx) -> Result<(), DbErr> {
    let _ = tx;
    Ok(())
}

#[safe_db_operation(mandatory, savepoint = false)]
async fn joined_step(tx: &Tx) -> Result<(), DbErr> {
    let _ = tx;
    Ok(())
}

#[safe_db_operation(savepoint = false)]
async fn joined(tx: &Tx) -> Result<(), DbErr> {
    let _ = tx;
    Ok(())
}

#[safe_db_operation(durable, isolation = "repeatable_read", read_only, timeout = "2s", retries = 1)]
async fn durable(tx: &Tx) -> Result<(), DbErr> {
    let _ = tx;
    Ok(())
}

struct Service;

impl Service {
    #[safe_db_operation(mandatory)]
    async fn method(&self, tx: &Tx) -> Result<(), DbErr> {
        let _ = tx;
        Ok(())
    }
}

#[safe_db_operation]
async fn outer(tx: &Tx) -> Result<(), DbErr> {
    audit(tx).await?;
    step(tx).await?;
    joined_step(tx).await?;
    joined(tx).await?;
    Service.method(tx).await?;
    Ok(())
}

fn send<F: std::future::Future + Send>(_: F) {}

#[allow(dead_code)]
fn callers(db: &DatabaseConnection, shared: Arc<DatabaseConnection>, handle: &Db) {
    send(outer(db));
    send(audit(db));
    send(audit(&shared));
    send(joined(db));
    send(joined(handle));
    send(durable(db));
    send(durable(handle));
    send(durable(&shared));
}

#[allow(dead_code)]
async fn closure_form(db: &DatabaseConnection) -> Result<(), DbErr> {
    safe_db::transaction(db, async |tx: &Tx| {
        safe_db::Options::new()
            .requires_new()
            .run(tx, async |_own: &Tx| Ok::<_, DbErr>(()))
            .await?;
        safe_db::Options::new()
            .savepoint(false)
            .run(tx, async |_joined: &Tx| Ok::<_, DbErr>(()))
            .await
    })
    .await
}

/// Propagation of your own functions in the closure form: the bound is the check.
#[allow(dead_code)]
async fn my_step(tx: &impl safe_db::InTransaction) -> Result<(), DbErr> {
    safe_db::transaction(tx, async |_tx: &Tx| Ok::<_, DbErr>(())).await
}

#[allow(dead_code)]
async fn my_durable(db: &impl safe_db::Connection) -> Result<(), DbErr> {
    safe_db::transaction(db, async |_tx: &Tx| Ok::<_, DbErr>(())).await
}

fn main() {}
