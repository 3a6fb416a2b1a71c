//! The bank through PgBouncer: serializable read-modify-write transfers by 8 clients (real
//! conflicts, retried) and read-only readers; every read sees the total, and the server,
//! read directly, holds exactly the committed transfers, which replay to the balances.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use safe_db_test_support::ledger::{self, ACCOUNTS, Held, OPENING, Told, next};
use sea_orm::{ConnectionTrait, DbErr, Statement};

async fn pairs(tx: &impl ConnectionTrait, sql: &str) -> Result<Vec<(i64, i64)>, DbErr> {
    let rows = tx
        .query_all_raw(Statement::from_string(tx.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<i64>(1)?)))
        .collect()
}

async fn balance(tx: &Tx, account: i32) -> Result<i64, Error> {
    let sql = format!("SELECT id::BIGINT, balance FROM accounts WHERE id = {account}");
    Ok(pairs(tx, &sql).await?.first().map_or(0, |(_, b)| *b))
}

/// A serializable read-modify-write transfer (conflicts are real, and retried);
/// insufficient funds are a `Validation` error.
#[safe_db_operation(isolation = "serializable", retries = 20, timeout = "10s")]
async fn transfer(tx: &Tx, tid: &str, from: i32, to: i32, amount: i64) -> Result<bool, Error> {
    let from_balance = balance(tx, from).await?;
    if from_balance < amount {
        return Err(Error::validation("insufficient funds"));
    }
    let to_balance = balance(tx, to).await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    for (account, balance) in [(from, from_balance - amount), (to, to_balance + amount)] {
        tx.execute_unprepared(&format!(
            "UPDATE accounts SET balance = {balance} WHERE id = {account}"
        ))
        .await?;
    }
    // Bound values: a prepared statement with parameters.
    tx.execute_raw(Statement::from_sql_and_values(
        tx.get_database_backend(),
        "INSERT INTO transfers (tid, from_id, to_id, amount) VALUES ($1, $2, $3, $4)",
        [tid.into(), from.into(), to.into(), amount.into()],
    ))
    .await?;
    Ok(true)
}

#[safe_db_operation(
    read_only,
    isolation = "repeatable_read",
    retries = 20,
    timeout = "10s"
)]
async fn balances(tx: &Tx) -> Result<Vec<(i64, i64)>, Error> {
    Ok(pairs(tx, "SELECT id::BIGINT, balance FROM accounts ORDER BY id").await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_balances_through_pgbouncer() {
    const CLIENTS: u64 = 8;
    let per_client: u64 = std::env::var("SAFE_DB_BANK_TRANSFERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let Some(t) = TestDb::via_pgbouncer("bank", 12).await else {
        return;
    };
    let direct = t.direct();
    ledger::open(direct, "").await;
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop) = (t.db.clone(), stop.clone());
            tokio::spawn(async move {
                let mut totals = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let all = balances(&db).await.unwrap();
                    assert!(all.iter().all(|(_, b)| *b >= 0), "negative: {all:?}");
                    totals.push(all.iter().map(|(_, b)| b).sum::<i64>());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                totals
            })
        })
        .collect();
    let writers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let db = t.db.clone();
            tokio::spawn(async move {
                let mut seed = 0x2545_F491_4F6C_DD1D ^ (client + 1).wrapping_mul(0x9E37_79B9);
                let mut told = Told::default();
                for n in 0..per_client {
                    let tid = format!("{client}-{n}");
                    let from = (next(&mut seed) % ACCOUNTS as u64) as i32 + 1;
                    let to = (from % ACCOUNTS) + 1;
                    let amount = (next(&mut seed) % 300) as i64 + 1;
                    let started = Instant::now();
                    let outcome = transfer(&db, &tid, from, to, amount).await;
                    told.note(&tid, outcome, started.elapsed());
                }
                told
            })
        })
        .collect();
    let mut told = Told::default();
    for writer in writers {
        told.merge(writer.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let mut totals = Vec::new();
    for reader in readers {
        totals.extend(reader.await.unwrap());
    }
    let took = started.elapsed();

    assert!(!totals.is_empty());
    assert!(
        totals.iter().all(|s| *s == i64::from(ACCOUNTS) * OPENING),
        "a read saw another total"
    );
    // Definite failures only: insufficient funds, or a conflict out of retries; nothing
    // unknown.
    assert!(
        told.unknown.is_empty()
            && told.failed.values().all(|kind| matches!(
                kind,
                ErrorKind::Validation | ErrorKind::SerializationFailure
            )),
        "{}: {:?}",
        told.summary(),
        told.failed
    );
    // Read back from the server: every committed transfer logged exactly once (its id is
    // the key), nothing else, and the log replays to the balances.
    Held::read(direct, "")
        .await
        .unwrap()
        .check(&told, "PostgreSQL");
    assert!(told.committed.len() as u64 > CLIENTS * per_client / 2);
    println!(
        "bank through PgBouncer: {}, {} reads, {took:?}",
        told.summary(),
        totals.len()
    );
    t.cleanup().await;
}
