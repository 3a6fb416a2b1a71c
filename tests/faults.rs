//! Faults: a connection killed mid-transaction, a server that is not there, an exhausted
//! pool, and a soak of randomly mixed outcomes. Nothing is lost, nothing leaks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, ids, pool_options};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend};

/// Kills a server session from outside, as an operator or a failover would.
struct Killer {
    admin: DatabaseConnection,
}

impl Killer {
    async fn kill(&self, session: i64) {
        let sql = match self.admin.get_database_backend() {
            DbBackend::Postgres => format!("SELECT pg_terminate_backend({session})"),
            _ => format!("KILL {session}"),
        };
        self.admin.execute_unprepared(&sql).await.expect("kill");
    }
}

#[safe_db_operation]
async fn killed_midway(tx: &Tx, killer: &Killer) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'before the kill')")
        .await?;
    let sql = match tx.get_database_backend() {
        DbBackend::Postgres => "SELECT pg_backend_pid()::text",
        _ => "SELECT CAST(CONNECTION_ID() AS CHAR)",
    };
    let row = tx
        .query_one_raw(sea_orm::Statement::from_string(
            tx.get_database_backend(),
            sql,
        ))
        .await?
        .expect("one row");
    let session: String = row.try_get_by_index(0)?;
    killer.kill(session.parse().expect("a session id")).await;
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (2, 'after the kill')")
        .await?;
    Ok(())
}

/// Writes, then has its own session killed on the server and returns `Ok`: the COMMIT goes
/// to a connection that is gone. Counts its attempts.
#[safe_db_operation(retries = 3)]
async fn killed_before_commit(
    tx: &Tx,
    killer: &Killer,
    attempts: &std::sync::atomic::AtomicU32,
) -> Result<(), Error> {
    attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'before the kill')")
        .await?;
    let sql = match tx.get_database_backend() {
        DbBackend::Postgres => "SELECT pg_backend_pid()::text",
        _ => "SELECT CAST(CONNECTION_ID() AS CHAR)",
    };
    let row = tx
        .query_one_raw(sea_orm::Statement::from_string(
            tx.get_database_backend(),
            sql,
        ))
        .await?
        .expect("one row");
    let session: String = row.try_get_by_index(0)?;
    killer.kill(session.parse().expect("a session id")).await;
    // pg_terminate_backend only signals the session: let it end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// A COMMIT on a lost connection: the client cannot know the outcome, so it is reported as
/// `CommitUnknown` and not re-run, even with `retries` (here the session was killed before
/// the COMMIT: nothing is committed, read back).
#[tokio::test]
async fn a_commit_on_a_lost_connection_is_commit_unknown_and_not_rerun() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "commit_unknown", 2).await {
        let killer = Killer {
            admin: t.pool(1).await,
        };
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let err = killed_before_commit(&t.db, &killer, &attempts)
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::CommitUnknown,
            "{:?}: {err}",
            t.backend
        );
        assert_eq!(
            attempts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "not re-run"
        );
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        t.assert_plain_write_committed(&t.db, 5).await;
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_connection_killed_mid_transaction_commits_nothing() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "killed", 2).await {
        let killer = Killer {
            admin: t.pool(1).await,
        };
        let err = killed_midway(&t.db, &killer).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{:?}: {err}", t.backend);
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        // The next operations run on fresh connections.
        for id in 10..15 {
            safe_db::transaction(&t.db, async |tx: &Tx| {
                tx.execute_unprepared(&format!(
                    "INSERT INTO agents (id, name) VALUES ({id}, 'n{id}')"
                ))
                .await
                .map(drop)
            })
            .await
            .unwrap();
        }
        assert_eq!(t.agent_ids().await, vec![10, 11, 12, 13, 14]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unavailable_within_the_connect_timeout() {
    for url in [
        "postgres://app:secret-password@127.0.0.1:1/test",
        "mysql://app:secret-password@127.0.0.1:1/test",
        "sqlite:///nonexistent-dir/for/sure/x.db?mode=ro",
    ] {
        let mut options = pool_options(url, 2);
        let _ = options
            .connect_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(2));
        let started = Instant::now();
        let err = Error::from(Database::connect(options).await.unwrap_err());
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{url}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{url}: {:?}",
            started.elapsed()
        );
        assert!(!err.to_string().contains("secret-password"), "{err}");
        assert!(!format!("{err:?}").contains("secret-password"), "{err:?}");
    }
}

#[safe_db_operation]
async fn hold(tx: &Tx, id: i32, for_: Duration) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'held{id}')"
    ))
    .await?;
    tokio::time::sleep(for_).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_pool_fails_fast_and_serves_again() {
    for t in TestDb::all("exhausted", 2).await {
        let mut options = pool_options(&t.url, 2);
        let _ = options.acquire_timeout(Duration::from_millis(500));
        if t.backend == Backend::Postgres {
            let _ = options.set_schema_search_path(format!("safe_db_{}", "exhausted"));
        }
        let pool = Arc::new(Database::connect(options).await.unwrap());
        let failures_before = safe_db::Stats::snapshot().acquire_failures;
        let started = Instant::now();
        let tasks: Vec<_> = (1..=10)
            .map(|id| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let result = hold(&*pool, id, Duration::from_millis(1500)).await;
                    (result, started.elapsed())
                })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            let (result, elapsed) = task.await.unwrap();
            match result {
                Ok(()) => ok += 1,
                Err(err) => {
                    assert_eq!(
                        err.kind(),
                        ErrorKind::PoolExhausted,
                        "{:?}: {err}",
                        t.backend
                    );
                    assert!(elapsed < Duration::from_millis(1400), "waited {elapsed:?}");
                }
            }
        }
        assert_eq!(
            ok, 2,
            "{:?}: the two pooled connections did their work",
            t.backend
        );
        assert_eq!(t.agent_ids().await.len(), 2);
        // Counted: the seed's "connection timeouts" (other tests of this binary may add).
        let failures = safe_db::Stats::snapshot().acquire_failures - failures_before;
        assert!(
            failures >= 8,
            "{:?}: {failures} acquire failures",
            t.backend
        );
        // The pool serves again.
        hold(&*pool, 100, Duration::ZERO).await.unwrap();
        assert_eq!(t.agent_ids().await.len(), 3);
        t.cleanup().await;
    }
}

// ---- soak ----

#[derive(Clone, Copy, Debug)]
enum Plan {
    Commit,
    Fail,
    Panic,
    Cancel,
    NestedInnerFailure,
    /// A chain of six nested operations, each writing a note.
    Deep,
    /// Cancelled within 300 µs: mostly while acquiring a connection or at BEGIN.
    CancelEarly,
}

#[safe_db_operation]
async fn soak_op(tx: &Tx, id: i32, plan: PlanArg) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 's{id}')"
    ))
    .await?;
    match plan.0 {
        Plan::Fail => return Err(Error::validation("planned failure")),
        Plan::Panic => panic!("planned panic"),
        Plan::NestedInnerFailure => {
            let inner = soak_inner(tx, -id).await;
            assert!(inner.is_err());
        }
        Plan::Cancel => tokio::task::yield_now().await,
        Plan::Deep => soak_chain(tx, id, 6).await?,
        Plan::Commit | Plan::CancelEarly => {}
    }
    tx.execute_unprepared(&format!(
        "UPDATE agents SET name = 'done{id}' WHERE id = {id}"
    ))
    .await?;
    Ok(())
}

#[derive(Clone, Copy)]
struct PlanArg(Plan);

/// `level` nested operations below the caller, each writing one note of agent `id`.
#[safe_db_operation]
async fn soak_chain(tx: &Tx, id: i32, level: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO notes (id, agent_id) VALUES ({}, {id})",
        id * 8 + level
    ))
    .await?;
    if level > 1 {
        Box::pin(soak_chain(tx, id, level - 1)).await?;
    }
    Ok(())
}

#[safe_db_operation]
async fn soak_inner(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'inner')"
    ))
    .await?;
    Err(Error::validation("inner failure"))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_randomly_mixed_outcomes_on_postgres() {
    // The planned panics are expected: keep them out of the test output.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"planned panic") {
            default_hook(info);
        }
    }));
    let per_task: i32 = std::env::var("SAFE_DB_SOAK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for t in TestDb::on(&[Backend::Postgres], "soak", 2).await {
        // Named, so that its sessions can be told from other tests' on the same server.
        let separator = if t.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}application_name=safe_db_soak", t.url);
        let mut options = pool_options(&url, 8);
        options.set_schema_search_path("safe_db_soak");
        let pool = Arc::new(sea_orm::Database::connect(options).await.unwrap());
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|task| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1));
                    let mut committed = Vec::new();
                    let mut cancelled = Vec::new();
                    for i in 0..per_task {
                        let id = task * 1_000_000 + i + 1;
                        let plan = match rng.next() % 7 {
                            0 => Plan::Commit,
                            1 => Plan::Fail,
                            2 => Plan::Panic,
                            3 => Plan::Cancel,
                            4 => Plan::Deep,
                            5 => Plan::CancelEarly,
                            _ => Plan::NestedInnerFailure,
                        };
                        let fut = soak_op(&*pool, id, PlanArg(plan));
                        let outcome = match plan {
                            Plan::Cancel => {
                                let after = Duration::from_micros(rng.next() % 3000);
                                tokio::time::timeout(after, fut).await.ok()
                            }
                            Plan::CancelEarly => {
                                let after = Duration::from_micros(rng.next() % 300);
                                tokio::time::timeout(after, fut).await.ok()
                            }
                            _ => std::panic::AssertUnwindSafe(fut).catch_unwind().await.ok(),
                        };
                        match outcome {
                            Some(Ok(())) => committed.push(id),
                            None if matches!(plan, Plan::Cancel | Plan::CancelEarly) => {
                                cancelled.push(id)
                            }
                            _ => {}
                        }
                    }
                    (committed, cancelled)
                })
            })
            .collect();
        let (mut expected, mut cancelled) = (Vec::new(), Vec::new());
        for task in tasks {
            let (committed, dropped) = task.await.unwrap();
            expected.extend(committed);
            cancelled.extend(dropped);
        }
        expected.sort_unstable();
        eprintln!(
            "soak: {} operations, {} committed, in {:?}",
            8 * per_task,
            expected.len(),
            started.elapsed()
        );
        let rows = t.agent_ids().await;
        let missing: Vec<&i32> = expected
            .iter()
            .filter(|id| rows.binary_search(id).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "reported committed but absent: {missing:?}"
        );
        // A row no success was reported for can only come from a caller that dropped the
        // future while COMMIT was on the wire: the server committed, the caller stopped
        // listening. Nothing else (errors, panics, inner failures) may leave a row.
        let unreported: Vec<i32> = rows
            .iter()
            .copied()
            .filter(|id| expected.binary_search(id).is_err())
            .collect();
        let foreign: Vec<&i32> = unreported
            .iter()
            .filter(|id| !cancelled.contains(id))
            .collect();
        assert!(foreign.is_empty(), "rows of failed operations: {foreign:?}");
        eprintln!("soak: {} cancelled during COMMIT, kept", unreported.len());
        let done = ids(
            &t.db,
            "SELECT count(*)::int FROM agents WHERE name LIKE 'done%'",
        )
        .await;
        assert_eq!(done, vec![rows.len() as i32], "every row is complete");
        // Every committed deep chain wrote its six notes, and only committed operations
        // have notes.
        let notes = ids(&t.db, "SELECT agent_id FROM notes ORDER BY agent_id").await;
        let mut per_agent = std::collections::BTreeMap::new();
        for agent in notes {
            *per_agent.entry(agent).or_insert(0) += 1;
        }
        for (agent, count) in &per_agent {
            assert!(
                rows.binary_search(agent).is_ok(),
                "notes of an absent agent {agent}"
            );
            assert_eq!(*count, 6, "agent {agent} has {count} notes");
        }

        // Every connection is back in the pool, idle.
        let sqlx = pool.get_postgres_connection_pool();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sqlx.num_idle() != sqlx.size() as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            sqlx.num_idle(),
            sqlx.size() as usize,
            "connections still busy"
        );
        let in_tx = ids(
            &t.db,
            "SELECT count(*)::int FROM pg_stat_activity \
             WHERE application_name = 'safe_db_soak' AND state LIKE 'idle in transaction%'",
        )
        .await;
        assert_eq!(in_tx, vec![0], "no session is left inside a transaction");
        // Code on the same pool that does not use safe-db writes for real: no connection
        // came back inside a transaction (a BEGIN cut off by a caller used to leave one).
        for n in 0..16 {
            t.assert_plain_write_committed(&pool, -(n + 1) * 10_000_000)
                .await;
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn hostile_passwords_appear_in_no_error_and_no_log() {
    // Passwords as secret stores hand them out: raw `/`, `?`, `#`, `@`, `:`, `%`.
    let (captured, _guard) = safe_db_test_support::capture::start();
    for (url, secrets) in [
        (
            "postgres://app:pa/ss9@127.0.0.1:1/test",
            &["pa/ss9", "ss9"][..],
        ),
        (
            "postgres://app:p?a#s@s:w@127.0.0.1:1/test",
            &["p?a#s@s:w", "s@s", "a#s"],
        ),
        (
            "mysql://app:p%40ss%2Fw0rd@127.0.0.1:1/test",
            &["p@ss/w0rd", "p%40ss", "w0rd"],
        ),
        ("mysql://app:s3cr%t@[::1]:1/test", &["s3cr"]),
        (
            "postgres://app@127.0.0.1:1/test?password=qu%3Fery",
            &["qu?ery", "qu%3Fery", "ery"],
        ),
    ] {
        let config = safe_db::DbConfig::from_url(url).unwrap_or_else(|e| panic!("{e}"));
        let options = config.connect_options();
        let mut shown = vec![
            format!("{config}"),
            format!("{config:?}"),
            options.get_url().to_owned(),
        ];
        let started = Instant::now();
        let mut options = options;
        options
            .connect_timeout(Duration::from_secs(2))
            .acquire_timeout(Duration::from_secs(2));
        let err = Error::from(Database::connect(options).await.unwrap_err());
        assert!(started.elapsed() < Duration::from_secs(4));
        shown.extend([err.to_string(), format!("{err:?}")]);
        for text in shown {
            for secret in secrets {
                assert!(!text.contains(secret), "{url}: {text}");
            }
        }
    }
    assert!(!captured.all_text().contains("pa/ss9"));
    assert!(!captured.all_text().contains("s3cr%t"));
}
