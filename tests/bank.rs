//! A bank under faults, after Jepsen's bank test: accounts, concurrent transfers through
//! safe-db with `retries`, concurrent readers summing every balance in one read-only
//! operation, while callers drop operations at random points, sessions are killed on the
//! server (`pg_terminate_backend`, `KILL`), and some transfers run out of time mid-way
//! (their statements stopped by the server). `SAFE_DB_BANK_TRANSFERS` scales the run
//! (default 60 transfers for each of 8 clients).
//!
//! Invariants: every read sees the same total; no balance is ever negative; every transfer
//! reported committed is in the transfer log exactly once, and nothing reported failed
//! with a definite error is there; replaying the log from the opening balances gives the
//! final balances. A transfer whose caller gave up, or whose connection was killed under
//! it, may or may not have committed: the log is the truth for those, and the replay
//! checks it. A negative control (read-modify-write at read committed, no `FOR UPDATE`)
//! must break the replay, proving the check can fail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, exec};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

const ACCOUNTS: i64 = 8;
const OPENING: i64 = 1_000;

async fn rows(tx: &impl ConnectionTrait, sql: &str) -> Result<Vec<(i64, i64)>, sea_orm::DbErr> {
    let rows = tx
        .query_all_raw(Statement::from_string(tx.get_database_backend(), sql))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get_by_index::<i64>(0)?, r.try_get_by_index::<i64>(1)?)))
        .collect()
}

async fn balance(tx: &Tx, account: i64) -> Result<i64, Error> {
    let found = rows(
        tx,
        &format!("SELECT id, balance FROM accounts WHERE id = {account}"),
    )
    .await?;
    Ok(found.first().map_or(0, |(_, b)| *b))
}

/// Moves `amount` from one account to another, recording the transfer: a read-modify-write
/// that serializable isolation makes safe (conflicts are retried).
#[safe_db_operation(isolation = "serializable", retries = 20, timeout = "10s")]
async fn transfer(tx: &Tx, id: i64, from: i64, to: i64, amount: i64) -> Result<(), Error> {
    transfer_body(tx, id, from, to, amount).await
}

/// The same in a hurry: its deadline (given to the server with each statement) often
/// passes mid-transfer.
#[safe_db_operation(isolation = "serializable", retries = 20, timeout = "15ms")]
async fn hurried_transfer(tx: &Tx, id: i64, from: i64, to: i64, amount: i64) -> Result<(), Error> {
    transfer_body(tx, id, from, to, amount).await
}

/// The negative control: the same at read committed, which allows lost updates.
#[safe_db_operation(isolation = "read_committed", timeout = "10s")]
async fn unsafe_transfer(tx: &Tx, id: i64, from: i64, to: i64, amount: i64) -> Result<(), Error> {
    transfer_body(tx, id, from, to, amount).await
}

async fn transfer_body(tx: &Tx, id: i64, from: i64, to: i64, amount: i64) -> Result<(), Error> {
    let from_balance = balance(tx, from).await?;
    if from_balance < amount {
        return Err(Error::validation("insufficient funds"));
    }
    let to_balance = balance(tx, to).await?;
    // A moment between the reads and the writes, as real code has.
    tokio::time::sleep(Duration::from_millis(2)).await;
    tx.execute_unprepared(&format!(
        "UPDATE accounts SET balance = {} WHERE id = {from}",
        from_balance - amount
    ))
    .await?;
    tx.execute_unprepared(&format!(
        "UPDATE accounts SET balance = {} WHERE id = {to}",
        to_balance + amount
    ))
    .await?;
    tx.execute_unprepared(&format!(
        "INSERT INTO transfers (id, source, target, amount) VALUES ({id}, {from}, {to}, {amount})"
    ))
    .await?;
    Ok(())
}

/// Every balance, read in one read-only transaction.
#[safe_db_operation(
    read_only,
    isolation = "repeatable_read",
    retries = 20,
    timeout = "10s"
)]
async fn balances(tx: &Tx) -> Result<Vec<(i64, i64)>, Error> {
    Ok(rows(tx, "SELECT id, balance FROM accounts ORDER BY id").await?)
}

async fn setup(db: &DatabaseConnection) {
    exec(db, "DROP TABLE IF EXISTS transfers").await;
    exec(db, "DROP TABLE IF EXISTS accounts").await;
    exec(
        db,
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)",
    )
    .await;
    exec(
        db,
        "CREATE TABLE transfers (id BIGINT PRIMARY KEY, source BIGINT NOT NULL, \
         target BIGINT NOT NULL, amount BIGINT NOT NULL)",
    )
    .await;
    let values: Vec<String> = (1..=ACCOUNTS)
        .map(|id| format!("({id}, {OPENING})"))
        .collect();
    exec(
        db,
        &format!(
            "INSERT INTO accounts (id, balance) VALUES {}",
            values.join(", ")
        ),
    )
    .await;
}

/// A number in `0..n`, from a small xorshift seeded per task.
fn next(state: &mut u64, n: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % n
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    committed: Vec<i64>,
    failed: Vec<i64>,
    reads: Vec<i64>,
    negative: bool,
}

/// Kills a random session of this test's namespace on the server, now and then.
async fn killer(t_url: String, backend: Backend, stop: Arc<AtomicBool>, kills: Arc<AtomicU64>) {
    let Ok(admin) = sea_orm::Database::connect(t_url).await else {
        return;
    };
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(150 + next(&mut seed, 150))).await;
        let sql = match backend {
            Backend::Postgres => {
                "SELECT pid::BIGINT, 0::BIGINT FROM pg_stat_activity WHERE datname = \
                 current_database() AND pid <> pg_backend_pid() AND backend_type = \
                 'client backend'"
            }
            _ => {
                "SELECT ID, 0 FROM information_schema.PROCESSLIST WHERE DB = DATABASE() \
                 AND ID <> CONNECTION_ID() AND COMMAND <> 'Daemon'"
            }
        };
        let Ok(sessions) = rows(&admin, sql).await else {
            continue;
        };
        if sessions.is_empty() {
            continue;
        }
        let victim = sessions[next(&mut seed, sessions.len() as u64) as usize].0;
        let kill = match backend {
            Backend::Postgres => format!("SELECT pg_terminate_backend({victim})"),
            _ => format!("KILL {victim}"),
        };
        if admin.execute_unprepared(&kill).await.is_ok() {
            kills.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs `clients` transfer tasks and two readers for `per_client` transfers each.
async fn run_bank(
    backend: Backend,
    url: &str,
    db: &DatabaseConnection,
    clients: u64,
    per_client: u64,
    control: bool,
    faults: bool,
) -> Seen {
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU64::new(0));
    let killer = (faults && backend != Backend::Sqlite).then(|| {
        tokio::spawn(killer(
            url.to_owned(),
            backend,
            Arc::clone(&stop),
            Arc::clone(&kills),
        ))
    });
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let db = db.clone();
            let seen = Arc::clone(&seen);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(all) = balances(&db).await {
                        let mut seen = seen.lock().unwrap();
                        seen.reads.push(all.iter().map(|(_, b)| b).sum());
                        seen.negative |= all.iter().any(|(_, b)| *b < 0);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..clients)
        .map(|client| {
            let db = db.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut seed = 0x2545_F491_4F6C_DD1D ^ (client + 1).wrapping_mul(0x9E37_79B9);
                for n in 0..per_client {
                    let id = (client * per_client + n) as i64 + 1;
                    let from = next(&mut seed, ACCOUNTS as u64) as i64 + 1;
                    let to = (from % ACCOUNTS) + 1;
                    let amount = next(&mut seed, 200) as i64 + 1;
                    let hurried = faults && next(&mut seed, 8) == 0;
                    let op = async {
                        if control {
                            unsafe_transfer(&db, id, from, to, amount).await
                        } else if hurried {
                            hurried_transfer(&db, id, from, to, amount).await
                        } else {
                            transfer(&db, id, from, to, amount).await
                        }
                    };
                    // One in five callers gives up at a random moment.
                    let outcome = if faults && next(&mut seed, 5) == 0 {
                        let patience = Duration::from_micros(next(&mut seed, 20_000));
                        tokio::time::timeout(patience, op).await.ok()
                    } else {
                        Some(op.await)
                    };
                    let mut seen = seen.lock().unwrap();
                    match outcome {
                        Some(Ok(())) => seen.committed.push(id),
                        // Definite: the operation ended and says it did not commit.
                        Some(Err(e))
                            if matches!(
                                e.kind(),
                                ErrorKind::Validation | ErrorKind::SerializationFailure
                            ) =>
                        {
                            seen.failed.push(id)
                        }
                        // A killed connection, a timeout, a dropped caller: unknown.
                        _ => {}
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    if let Some(killer) = killer {
        killer.await.unwrap();
        println!(
            "{backend:?}: {} sessions killed",
            kills.load(Ordering::Relaxed)
        );
    }
    Arc::try_unwrap(seen)
        .ok()
        .expect("all tasks done")
        .into_inner()
        .unwrap()
}

/// Checks the invariants; returns what broke.
async fn what_broke(db: &DatabaseConnection, seen: &Seen) -> Vec<String> {
    let mut broken = Vec::new();
    let total = ACCOUNTS * OPENING;
    let bad_reads: Vec<_> = seen.reads.iter().filter(|s| **s != total).collect();
    if !bad_reads.is_empty() {
        broken.push(format!(
            "{} of {} reads saw a total other than {total}: {:?}",
            bad_reads.len(),
            seen.reads.len(),
            &bad_reads[..bad_reads.len().min(5)]
        ));
    }
    if seen.negative {
        broken.push("a read saw a negative balance".into());
    }
    let logged = rows(db, "SELECT id, amount FROM transfers").await.unwrap();
    let logged_ids: std::collections::BTreeSet<i64> = logged.iter().map(|(id, _)| *id).collect();
    let missing: Vec<_> = seen
        .committed
        .iter()
        .filter(|id| !logged_ids.contains(id))
        .collect();
    if !missing.is_empty() {
        broken.push(format!(
            "committed transfers missing from the log: {missing:?}"
        ));
    }
    let phantom: Vec<_> = seen
        .failed
        .iter()
        .filter(|id| logged_ids.contains(id))
        .collect();
    if !phantom.is_empty() {
        broken.push(format!("failed transfers in the log: {phantom:?}"));
    }
    // Replay the log from the opening balances.
    let mut expected: BTreeMap<i64, i64> = (1..=ACCOUNTS).map(|id| (id, OPENING)).collect();
    for (source, target, amount) in rows3(db).await {
        *expected.get_mut(&source).unwrap() -= amount;
        *expected.get_mut(&target).unwrap() += amount;
    }
    let finals: BTreeMap<i64, i64> = rows(db, "SELECT id, balance FROM accounts")
        .await
        .unwrap()
        .into_iter()
        .collect();
    if finals != expected {
        broken.push(format!(
            "the final balances {finals:?} are not the log replayed {expected:?}"
        ));
    }
    if finals.values().sum::<i64>() != total {
        broken.push(format!(
            "the final total is {}",
            finals.values().sum::<i64>()
        ));
    }
    if finals.values().any(|b| *b < 0) {
        broken.push("a final balance is negative".into());
    }
    broken
}

async fn rows3(db: &DatabaseConnection) -> Vec<(i64, i64, i64)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT source, target, amount FROM transfers",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get_by_index::<i64>(0).unwrap(),
                r.try_get_by_index::<i64>(1).unwrap(),
                r.try_get_by_index::<i64>(2).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_balances_under_faults_and_the_negative_control_does_not() {
    let per_client: u64 = std::env::var("SAFE_DB_BANK_TRANSFERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    for t in TestDb::all("bank", 8).await {
        setup(&t.db).await;
        let db = t.pool(8).await;
        let seen = run_bank(t.backend, &t.url, &db, 8, per_client, false, true).await;
        let broken = what_broke(&t.db, &seen).await;
        let unknown = 8 * per_client as usize - seen.committed.len() - seen.failed.len();
        println!(
            "{:?}: {} committed, {} failed, {unknown} unknown, {} reads",
            t.backend,
            seen.committed.len(),
            seen.failed.len(),
            seen.reads.len()
        );
        assert!(broken.is_empty(), "{:?}:\n{}", t.backend, broken.join("\n"));
        assert!(
            seen.committed.len() > 8 * per_client as usize / 2,
            "{:?}: too few committed",
            t.backend
        );
        assert!(!seen.reads.is_empty(), "{:?}: no read completed", t.backend);

        // The negative control: read-modify-write at read committed loses updates, and
        // the same checks catch it. (SQLite serializes writers whatever the level.)
        if t.backend != Backend::Sqlite {
            setup(&t.db).await;
            let seen = run_bank(t.backend, &t.url, &db, 8, 40, true, false).await;
            let broken = what_broke(&t.db, &seen).await;
            println!("{:?} control: {broken:?}", t.backend);
            assert!(
                !broken.is_empty(),
                "{:?}: lost updates went unnoticed",
                t.backend
            );
        }
        drop(db);
        t.cleanup().await;
    }
}

/// When the server started, as text.
async fn server_started(db: &DatabaseConnection) -> String {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => "SELECT pg_postmaster_start_time()::TEXT",
        _ => {
            "SELECT CAST(NOW() - INTERVAL VARIABLE_VALUE SECOND AS CHAR) FROM \
             information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'"
        }
    };
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<String>(0).unwrap()
}

/// The same bank on a server of the test's own (`.ci/run` starts a PostgreSQL cluster
/// and a MariaDB server for it with `.ci/clusters/throwaway-*.sh`), restarted mid-run:
/// in-flight transactions are aborted and every connection is lost; what was reported
/// committed must survive, and the pool must serve again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_balances_across_a_server_restart() {
    for (backend, name) in [(Backend::Postgres, "POSTGRES"), (Backend::MySql, "MYSQL")] {
        let url = std::env::var(format!("SAFE_DB_TEST_RESTART_{name}_URL")).ok();
        let restart = std::env::var(format!("SAFE_DB_TEST_RESTART_{name}")).ok();
        let (Some(url), Some(restart)) = (url, restart) else {
            assert!(
                std::env::var("CI").is_err(),
                "CI is set but SAFE_DB_TEST_RESTART_{name}_URL / SAFE_DB_TEST_RESTART_{name} \
                 are not (.ci/run sets them)"
            );
            println!("skipped: SAFE_DB_TEST_RESTART_{name}_URL is not set");
            continue;
        };
        bank_across_a_restart(backend, &url, restart).await;
    }
}

async fn bank_across_a_restart(backend: Backend, url: &str, restart: String) {
    let db = sea_orm::Database::connect(safe_db_test_support::pool_options(url, 8))
        .await
        .unwrap();
    setup(&db).await;
    let restarts = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&restart)
                .status()
        })
        .await
        .unwrap()
        .expect("restart command");
        assert!(status.success(), "restart failed: {status}");
        std::time::Instant::now()
    });
    let started_before = server_started(&db).await;
    let seen = run_bank(backend, url, &db, 8, 150, false, true).await;
    let run_ended = std::time::Instant::now();
    let restarted_at = restarts.await.unwrap();
    // The restart happened, and while the bank was running.
    assert!(
        restarted_at < run_ended,
        "{backend:?}: the run ended before the restart"
    );
    assert_ne!(
        server_started(&db).await,
        started_before,
        "{backend:?}: the server did not restart"
    );
    let broken = what_broke(&db, &seen).await;
    let unknown = 8 * 150 - seen.committed.len() - seen.failed.len();
    println!(
        "restarted {backend:?}: {} committed, {} failed, {unknown} unknown, {} reads",
        seen.committed.len(),
        seen.failed.len(),
        seen.reads.len()
    );
    assert!(broken.is_empty(), "{backend:?}: {}", broken.join("\n"));
    assert!(
        seen.committed.len() > 8 * 150 / 2,
        "{backend:?}: too few committed"
    );
    db.close().await.unwrap();
}
