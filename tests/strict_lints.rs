//! The expansion stays clean under strict lints in the user's crate: rustc's and
//! clippy's pedantic group (CI runs clippy with `-D warnings` on this file).
#![deny(
    unused_qualifications,
    unused_results,
    unused_mut,
    unreachable_code,
    clippy::all,
    clippy::pedantic
)]

use safe_db::{Error, Tx, safe_db_operation};
use sea_orm::ConnectionTrait;

#[safe_db_operation(isolation = "repeatable_read", timeout = "5s", retries = 2)]
async fn count(tx: &Tx, table: &str) -> Result<u64, Error> {
    let rows = tx
        .execute_unprepared(&format!("UPDATE {table} SET id = id"))
        .await?;
    Ok(rows.rows_affected())
}

#[safe_db_operation]
async fn early(tx: &Tx, fail: bool) -> Result<(), Error> {
    if fail {
        return Err(Error::validation("early"));
    }
    let _ = count(tx, "t").await?;
    Ok(())
}

#[tokio::test]
async fn strict_lints_compile_and_run() {
    let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
    let _ = db
        .execute_unprepared("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (1), (2)")
        .await
        .unwrap();
    assert_eq!(count(&db, "t").await.unwrap(), 2);
    early(&db, false).await.unwrap();
    assert!(early(&db, true).await.is_err());
}
