//! What the server does to a transaction behind the client's back, and what safe-db makes
//! of it: a deadlock that rolls the whole transaction back (MariaDB), statements that
//! commit implicitly (MariaDB's DDL), one-shot session settings and a `BEGIN` cut off by
//! the caller, a statement still running when the timeout fires, and one the body stopped
//! waiting for that fails afterwards. Each is proven with the real server behaviour (two
//! sessions that really deadlock, `SLEEP` really running), on every database where the
//! promise is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use safe_db::{Error, ErrorKind, Options, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, exec, ids};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tokio::sync::Barrier;

async fn run(tx: &Tx, sql: &str) -> Result<(), Error> {
    tx.execute_unprepared(sql).await?;
    Ok(())
}

/// A write on the pool by code that does not use safe-db, committed at once.
async fn run_plain_insert_visible(db: &DatabaseConnection, t: &TestDb) {
    static NEXT: AtomicU32 = AtomicU32::new(50_000);
    let id = NEXT.fetch_add(1, Ordering::SeqCst) as i32;
    t.assert_plain_write_committed(db, id).await;
}

#[safe_db_operation]
async fn plain_write(tx: &Tx, id: i32) -> Result<(), Error> {
    run(
        tx,
        &format!("INSERT INTO agents (id, name) VALUES ({id}, 'p{id}')"),
    )
    .await
}

mod abandoned;
mod begin_cut;
mod ddl;
mod deadlock;
mod rollback_on_timeout;
mod timeouts;
