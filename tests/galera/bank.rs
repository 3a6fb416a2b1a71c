//! The bank every scenario uses: accounts, logged transfers, and the reads that check them.

use std::collections::BTreeSet;
use std::time::Instant;

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::ledger;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

pub(crate) use safe_db_test_support::ledger::{ACCOUNTS, OPENING, next, open as open_bank};

/// A transfer between two accounts, logged; `t` prefixes the tables (each scenario has
/// its own).
#[safe_db_operation(retries = 60, timeout = "60s")]
pub(crate) async fn transfer(
    tx: &Tx,
    t: &str,
    tid: &str,
    from: i32,
    to: i32,
    amount: i64,
) -> Result<bool, Error> {
    move_money(tx, t, tid, from, to, amount).await
}

/// A transfer as a production user bounds it: a short deadline, a few retries.
#[safe_db_operation(retries = 5, timeout = "3s")]
pub(crate) async fn transfer_in_time(
    tx: &Tx,
    t: &str,
    tid: &str,
    from: i32,
    to: i32,
    amount: i64,
) -> Result<bool, Error> {
    move_money(tx, t, tid, from, to, amount).await
}

/// The node (port) and session each transfer's last attempt ran on: for a failure's message.
pub(crate) static RAN_ON: std::sync::Mutex<Vec<(String, i64, i64)>> =
    std::sync::Mutex::new(Vec::new());

pub(crate) async fn move_money(
    tx: &Tx,
    t: &str,
    tid: &str,
    from: i32,
    to: i32,
    amount: i64,
) -> Result<bool, Error> {
    let row = tx
        .query_one_raw(Statement::from_string(
            tx.get_database_backend(),
            "SELECT CAST(@@port AS SIGNED), CAST(CONNECTION_ID() AS SIGNED)",
        ))
        .await?
        .expect("a row");
    let (port, session): (i64, i64) = (row.try_get_by_index(0)?, row.try_get_by_index(1)?);
    RAN_ON.lock().unwrap().push((tid.to_owned(), port, session));
    Ok(ledger::move_money(tx, t, tid, from, to, amount).await?)
}

#[safe_db_operation(read_only, retries = 10)]
pub(crate) async fn total(tx: &Tx) -> Result<i64, Error> {
    let row = tx
        .query_one_raw(Statement::from_string(
            tx.get_database_backend(),
            "SELECT CAST(SUM(balance) AS SIGNED), CAST(MIN(balance) AS SIGNED) FROM accounts",
        ))
        .await?
        .expect("a row");
    let min: i64 = row.try_get_by_index(1)?;
    assert!(min >= 0, "a balance went negative: {min}");
    Ok(row.try_get_by_index(0)?)
}

pub(crate) async fn status(db: &DatabaseConnection, name: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SHOW GLOBAL STATUS LIKE '{name}'"),
        ))
        .await
        .unwrap()
        .expect("a status row");
    let value: String = row.try_get_by_index(1).unwrap();
    value.parse().unwrap_or(0)
}

/// What a node holds once replication has caught up: balances and logged transfers. A
/// causal read (`wsrep_sync_wait`) that times out while the cluster settles after a fault
/// (1205) is asked again, for up to 60 s.
pub(crate) async fn settled(db: &DatabaseConnection, t: &str) -> (Vec<i32>, BTreeSet<String>) {
    let started = Instant::now();
    loop {
        match try_settled(db, t).await {
            Ok(settled) => return settled,
            Err(err) if started.elapsed() < std::time::Duration::from_secs(60) => {
                println!("a causal read waits for the cluster to settle: {err}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(err) => panic!("the node did not settle within 60 s: {err}"),
        }
    }
}

pub(crate) async fn try_settled(
    db: &DatabaseConnection,
    t: &str,
) -> Result<(Vec<i32>, BTreeSet<String>), sea_orm::DbErr> {
    db.execute_unprepared("SET SESSION wsrep_sync_wait = 1")
        .await?;
    let backend = db.get_database_backend();
    let sql = format!("SELECT CAST(balance AS SIGNED) FROM {t}accounts ORDER BY id");
    let balances = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<i32>(0))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!("SELECT tid FROM {t}transfers"),
        ))
        .await?;
    let tids = rows
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok((balances, tids))
}

/// The client port of the node an operation runs on.
#[safe_db_operation(read_only)]
pub(crate) async fn node_port(tx: &Tx) -> Result<i64, Error> {
    let row = tx
        .query_one_raw(Statement::from_string(
            tx.get_database_backend(),
            "SELECT CAST(@@port AS SIGNED)",
        ))
        .await?
        .expect("a row");
    Ok(row.try_get_by_index(0)?)
}

/// Whether a Galera node is ready and `Synced`.
pub(crate) async fn galera_ready(node: &DatabaseConnection) -> bool {
    let ready = node
        .query_one_raw(Statement::from_string(
            node.get_database_backend(),
            "SHOW GLOBAL STATUS LIKE 'wsrep_ready'",
        ))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get_by_index::<String>(1).ok());
    ready.as_deref() == Some("ON") && status(node, "wsrep_local_state").await == 4
}
