//! safe-db behind PgBouncer in transaction pooling mode (`SAFE_DB_TEST_PGBOUNCER_URL`;
//! `.ci/clusters/pgbouncer.sh` starts Debian's PgBouncer 1.18 with 4 server connections
//! per database): each transaction may run on another server connection than the last
//! one of the same client connection. Every check reads the server back directly, not
//! through PgBouncer. Each test has a database of its own (a schema would be chosen by
//! `search_path`, a session setting PgBouncer does not carry over).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{TestDb, agent, eventually, exec, ids, poll_then_drop, pool_options};
use sea_orm::{ActiveModelTrait, ConnectionTrait, Database, DbErr, Set, Statement};

mod bank;

#[safe_db_operation]
async fn create_agent(tx: &Tx, id: i32, name: &str) -> Result<agent::Model, Error> {
    let model = agent::ActiveModel {
        id: Set(id),
        name: Set(name.to_owned()),
    };
    Ok(model.insert(tx).await?)
}

#[safe_db_operation]
async fn create_then_fail(tx: &Tx, id: i32) -> Result<(), Error> {
    create_agent(tx, id, &format!("doomed-{id}")).await?;
    Err(Error::validation("refused after writing"))
}

#[safe_db_operation]
async fn create_then_panic(tx: &Tx, id: i32) -> Result<(), Error> {
    create_agent(tx, id, &format!("panicky-{id}")).await?;
    panic!("the body panicked after writing");
}

#[safe_db_operation]
async fn insert_many(tx: &Tx, first: i32, count: i32) -> Result<(), DbErr> {
    for id in first..first + count {
        let sql = format!("INSERT INTO agents (id, name) VALUES ({id}, 'bulk-{id}')");
        tx.execute_unprepared(&sql).await?;
    }
    Ok(())
}

#[safe_db_operation]
async fn outer_keeps_going_after_inner_failure(tx: &Tx) -> Result<(), Error> {
    create_agent(tx, 1, "outer").await?;
    let inner = create_then_fail(tx, 2).await;
    assert_eq!(inner.unwrap_err().kind(), ErrorKind::Validation);
    create_agent(tx, 3, "after-inner").await?;
    Ok(())
}

/// One row of text columns, through the extended protocol (a prepared statement).
async fn texts(tx: &impl ConnectionTrait, sql: &str) -> Result<Vec<String>, DbErr> {
    let row = tx
        .query_one_raw(Statement::from_string(tx.get_database_backend(), sql))
        .await?
        .expect("one row");
    let mut out = Vec::new();
    let mut i = 0;
    while let Ok(v) = row.try_get_by_index::<String>(i) {
        out.push(v);
        i += 1;
    }
    Ok(out)
}

/// Server connections (backend pids) of the test's database that are inside a
/// transaction or running something, as seen on the server.
async fn busy_sessions(t: &TestDb) -> Vec<i32> {
    ids(
        t.direct(),
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND state <> 'idle'",
    )
    .await
}

#[tokio::test]
async fn commit_on_ok_rollback_on_err_and_panic() {
    let Some(t) = TestDb::via_pgbouncer("commit", 8).await else {
        return;
    };
    create_agent(&t.db, 1, "ada").await.unwrap();
    assert_eq!(t.agent_ids().await, vec![1]);
    assert_eq!(t.agent_name(1).await.as_deref(), Some("ada"));

    let err = create_then_fail(&t.db, 7).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(t.agent_ids().await, vec![1]);

    let db = Arc::new(t.pool(1).await);
    for id in 10..13 {
        let db2 = Arc::clone(&db);
        let joined = tokio::spawn(async move { create_then_panic(&*db2, id).await }).await;
        assert!(joined.unwrap_err().is_panic());
    }
    assert_eq!(t.agent_ids().await, vec![1]);
    // The one client connection serves again, outside any transaction.
    create_agent(&*db, 20, "after").await.unwrap();
    assert_eq!(t.agent_ids().await, vec![1, 20]);
    t.cleanup().await;
}

#[tokio::test]
async fn a_nested_failure_rolls_back_to_its_savepoint_only() {
    let Some(t) = TestDb::via_pgbouncer("nested", 8).await else {
        return;
    };
    outer_keeps_going_after_inner_failure(&t.db).await.unwrap();
    assert_eq!(t.agent_ids().await, vec![1, 3]);
    t.cleanup().await;
}

#[tokio::test]
async fn cancellation_commits_nothing_partial_and_the_pool_serves_again() {
    let Some(t) = TestDb::via_pgbouncer("cancel", 1).await else {
        return;
    };
    let db = t.pool(1).await;
    let mut committed = 0;
    for round in 0..40u32 {
        let first = 1000 + (round as i32) * 10;
        let outcome = poll_then_drop(insert_many(&db, first, 5), round % 20).await;
        let rows: Vec<i32> = t
            .agent_ids()
            .await
            .into_iter()
            .filter(|id| (first..first + 5).contains(id))
            .collect();
        match outcome {
            Some(Ok(())) => {
                committed += 1;
                assert_eq!(rows.len(), 5, "round {round}: completed but rows {rows:?}");
            }
            Some(Err(e)) => panic!("round {round}: {e}"),
            None => assert!(
                rows.is_empty() || rows.len() == 5,
                "round {round}: partial commit {rows:?}"
            ),
        }
        insert_many(&db, 100_000 + round as i32, 1).await.unwrap();
    }
    assert!(committed > 0, "no round got far enough to commit");
    // No server connection was left inside a transaction by a dropped one (one closed
    // rather than rolled back is ended by PgBouncer a moment later: waited for, up to 2 s).
    eventually(Duration::from_secs(2), || async {
        busy_sessions(&t).await.is_empty()
    })
    .await;
    assert_eq!(busy_sessions(&t).await, Vec::<i32>::new());
    drop(db);
    t.cleanup().await;
}

#[safe_db_operation(timeout = "300ms")]
async fn sleepy(tx: &Tx) -> Result<(), Error> {
    create_agent(tx, 1, "sleepy").await?;
    tx.execute_unprepared("SELECT pg_sleep(10)").await?;
    Ok(())
}

#[tokio::test]
async fn timeout_stops_pg_sleep_on_the_server() {
    let Some(t) = TestDb::via_pgbouncer("pg_sleep", 1).await else {
        return;
    };
    let started = Instant::now();
    let err = sleepy(&t.db).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(took < Duration::from_millis(550), "{took:?}");
    assert_eq!(t.agent_ids().await, Vec::<i32>::new());
    // Stopped by the server (statement_timeout), not left running for its 10 s. The
    // server's bound is the time left at BEGIN, counted from the statement's own start
    // (after the INSERT), so it ends a moment after the caller has its answer: CI saw
    // it still running when read back at once.
    let running = || {
        ids(
            t.direct(),
            "SELECT count(*)::int FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' \
             AND state = 'active'",
        )
    };
    eventually(Duration::from_secs(1), || async {
        running().await == vec![0]
    })
    .await;
    assert_eq!(running().await, vec![0]);
    println!(
        "pg_sleep stopped on the server after {:?}",
        started.elapsed()
    );
    create_agent(&t.db, 2, "after").await.unwrap();
    assert_eq!(t.agent_ids().await, vec![2]);
    println!("Timeout after {took:?}");
    t.cleanup().await;
}

#[safe_db_operation(isolation = "serializable", read_only)]
async fn serializable_read_only_write(tx: &Tx) -> Result<Vec<String>, Error> {
    let seen = texts(
        tx,
        "SELECT current_setting('transaction_isolation'), \
         current_setting('transaction_read_only')",
    )
    .await?;
    create_agent(tx, 5, "read-only").await?;
    Ok(seen)
}

#[safe_db_operation(isolation = "serializable", read_only)]
async fn serializable_read_only(tx: &Tx) -> Result<Vec<String>, Error> {
    Ok(texts(
        tx,
        "SELECT current_setting('transaction_isolation'), \
         current_setting('transaction_read_only')",
    )
    .await?)
}

#[tokio::test]
async fn isolation_and_read_only_are_in_force() {
    let Some(t) = TestDb::via_pgbouncer("isolation", 8).await else {
        return;
    };
    assert_eq!(
        serializable_read_only(&t.db).await.unwrap(),
        vec!["serializable", "on"]
    );
    let err = serializable_read_only_write(&t.db).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    assert_eq!(t.agent_ids().await, Vec::<i32>::new());
    t.cleanup().await;
}

/// Reads the counter, waits for the other task to have read it too (first attempt only),
/// then writes it: two such transactions at serializable isolation conflict for real.
#[safe_db_operation(isolation = "serializable", retries = 5, timeout = "10s")]
async fn increment(
    tx: &Tx,
    barrier: &tokio::sync::Barrier,
    attempts: &AtomicU32,
) -> Result<(), Error> {
    let n = ids(tx, "SELECT n FROM counters WHERE id = 1").await[0];
    if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
        barrier.wait().await;
    }
    tx.execute_unprepared(&format!("UPDATE counters SET n = {} WHERE id = 1", n + 1))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_serialization_failure_is_retried() {
    let Some(t) = TestDb::via_pgbouncer("retry", 8).await else {
        return;
    };
    exec(t.direct(), "INSERT INTO counters (id, n) VALUES (1, 0)").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (db, barrier, attempts) = (t.db.clone(), barrier.clone(), attempts.clone());
            tokio::spawn(async move { increment(&db, &barrier, &attempts).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(ids(t.direct(), "SELECT n FROM counters").await, vec![2]);
    // Both read 0: one of them failed to serialize and was run again.
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    t.cleanup().await;
}

/// What a transaction sees of its session: statement_timeout, isolation level, read-only,
/// and the server connection (backend pid) it runs on.
const SETTINGS: &str = "SELECT current_setting('statement_timeout'), \
    current_setting('transaction_isolation'), current_setting('transaction_read_only'), \
    pg_backend_pid()::text";

#[safe_db_operation]
async fn plain(tx: &Tx) -> Result<Vec<String>, Error> {
    Ok(texts(tx, SETTINGS).await?)
}

#[safe_db_operation(timeout = "7s", isolation = "serializable")]
async fn bounded_serializable(tx: &Tx) -> Result<Vec<String>, Error> {
    Ok(texts(tx, SETTINGS).await?)
}

#[safe_db_operation(isolation = "repeatable_read", read_only)]
async fn repeatable_read_only(tx: &Tx) -> Result<Vec<String>, Error> {
    Ok(texts(tx, SETTINGS).await?)
}

/// A body that sets a session setting with a plain `SET` (not `SET LOCAL`): it outlives
/// the transaction on that server connection.
#[safe_db_operation]
async fn session_set(tx: &Tx) -> Result<Vec<String>, Error> {
    tx.execute_unprepared("SET statement_timeout = 4321")
        .await?;
    Ok(texts(tx, SETTINGS).await?)
}

/// Runs `clients` tasks, each alternating an operation with settings (`kind` 0: timeout
/// and serializable, 1: read-only repeatable read, 2: a plain `SET`) with plain ones;
/// returns every plain operation's settings and the server connections the others ran on.
async fn shuffle(
    db: &sea_orm::DatabaseConnection,
    clients: usize,
    rounds: usize,
    kinds: &'static [u8],
) -> (Vec<Vec<String>>, BTreeSet<String>) {
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut plains = Vec::new();
                let mut set_on = BTreeSet::new();
                for round in 0..rounds {
                    let seen = match kinds[(client + round) % kinds.len()] {
                        0 => bounded_serializable(&db).await.unwrap(),
                        1 => repeatable_read_only(&db).await.unwrap(),
                        _ => session_set(&db).await.unwrap(),
                    };
                    set_on.insert(seen[3].clone());
                    for _ in 0..2 {
                        plains.push(plain(&db).await.unwrap());
                    }
                }
                (plains, set_on)
            })
        })
        .collect();
    let mut plains = Vec::new();
    let mut set_on = BTreeSet::new();
    for task in tasks {
        let (p, s) = task.await.unwrap();
        plains.extend(p);
        set_on.extend(s);
    }
    (plains, set_on)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_session_level_leaks_from_one_transaction_to_the_next() {
    let Some(t) = TestDb::via_pgbouncer("leaks", 12).await else {
        return;
    };
    let server_default = texts(t.direct(), "SHOW statement_timeout").await.unwrap();
    // 12 client connections over PgBouncer's 4 server connections.
    let (plains, set_on) = shuffle(&t.db, 12, 20, &[0, 1]).await;
    let plain_on: BTreeSet<String> = plains.iter().map(|p| p[3].clone()).collect();
    println!(
        "{} plain transactions on {} server connections",
        plains.len(),
        plain_on.len()
    );
    // The transactions were shuffled over several server connections, and plain ones ran
    // where transactions with settings had run.
    assert!(
        plain_on.len() > 1,
        "one server connection only: {plain_on:?}"
    );
    assert!(!plain_on.is_disjoint(&set_on));
    for seen in &plains {
        assert_eq!(
            seen[..3],
            [server_default[0].as_str(), "read committed", "off"],
            "a plain transaction saw settings of an earlier one"
        );
    }

    // The negative control: a body's plain `SET` is session-level, and the same check
    // sees it leak to other clients' transactions on that server connection.
    let (plains, _) = shuffle(&t.db, 12, 5, &[2]).await;
    let leaked = plains.iter().filter(|p| p[0] == "4321ms").count();
    println!(
        "a plain SET leaked into {leaked} of {} plain transactions",
        plains.len()
    );
    assert!(leaked > 0, "the check cannot see a leak");
    t.cleanup().await;
}

// The bank, compact: transfers between accounts with retries, read-only readers, the
// invariants read back from the server.

/// With sqlx's statement cache on (its default), prepared statements are cached per client
/// connection under names (`sqlx_s_1`, …) that exist only on the server connection they
/// were made on: PgBouncer 1.18 does not carry them over (1.21 and later can, with
/// `max_prepared_statements`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_statement_cache_on_prepared_statements_break() {
    let Some(t) = TestDb::via_pgbouncer("cache_on", 12).await else {
        return;
    };
    let url = t
        .url
        .replace("statement-cache-capacity=0", "statement-cache-capacity=100");
    let db = Database::connect(pool_options(&url, 12)).await.unwrap();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..12)
        .map(|client| {
            let (db, failures) = (db.clone(), failures.clone());
            tokio::spawn(async move {
                for round in 0..10 {
                    if let Err(e) =
                        create_agent(&db, client * 100 + round, &format!("c{client}-{round}")).await
                    {
                        failures
                            .lock()
                            .unwrap()
                            .push((client * 100 + round, e.to_string()));
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let committed = t.agent_ids().await;
    println!(
        "statement cache on: {} of 120 failed, e.g. {:?}",
        failures.len(),
        failures.iter().map(|(_, e)| e).collect::<BTreeSet<_>>()
    );
    assert!(
        failures
            .iter()
            .any(|(_, e)| e.contains("prepared statement")),
        "no prepared-statement error: {failures:?}"
    );
    // A failed operation committed nothing.
    for (id, _) in &failures {
        assert!(!committed.contains(id), "failed {id} committed");
    }
    db.close().await.unwrap();
    t.cleanup().await;
}

/// What a user writes: `DATABASE_URL` through PgBouncer with
/// `statement-cache-capacity=0` (passed through to sqlx), read by `DbConfig`; concurrent
/// operations with bound values, more clients than server connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_config_with_the_cache_off_in_the_url() {
    let Some(t) = TestDb::via_pgbouncer("db_config", 2).await else {
        return;
    };
    assert!(t.url.contains("statement-cache-capacity=0"));
    let url = format!("{}&pool_size=2&max_overflow=10", t.url);
    let db = safe_db::DbConfig::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|client| {
            let db = db.clone();
            tokio::spawn(async move {
                for round in 0..10 {
                    let id = client * 100 + round;
                    create_agent(&db, id, &format!("c{client}-{round}"))
                        .await
                        .unwrap_or_else(|e| panic!("{id}: {e}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let expected: Vec<i32> = (0..12)
        .flat_map(|c| (0..10).map(move |r| c * 100 + r))
        .collect();
    assert_eq!(t.agent_ids().await, expected);
    drop(db);
    t.cleanup().await;
}
