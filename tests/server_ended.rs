//! What the server does to a transaction behind the client's back, and what safe-db makes
//! of it: a deadlock that rolls the whole transaction back (MariaDB), statements that
//! commit implicitly (MariaDB's DDL), one-shot session settings and a `BEGIN` cut off by
//! the caller, and a statement still running when the timeout fires. Each is proven with
//! the real server behaviour (two sessions that really deadlock, `SLEEP` really running),
//! on every database where the promise is made.

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

/// Locks `first`, meets the other session (first attempt only), then locks `second`;
/// whatever that gives, writes an audit row and goes on, as a body that handles its own
/// errors would. Two of these in opposite order really deadlock.
async fn transfer_then_audit(
    tx: &Tx,
    first: i32,
    second: i32,
    meet: &Barrier,
    attempts: &AtomicU32,
    propagate: bool,
    concurrent: bool,
) -> Result<(), Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    run(
        tx,
        &format!("UPDATE counters SET n = n + 1 WHERE id = {first}"),
    )
    .await?;
    if attempt == 1 {
        meet.wait().await;
    }
    let lock = format!("UPDATE counters SET n = n + 1 WHERE id = {second}");
    let audit = format!("INSERT INTO audit (who) VALUES ({first})");
    let locked = if !concurrent {
        let locked = run(tx, &lock).await;
        // The body catches the failure and goes on: the audit row must share the fate of
        // the transaction, never be committed on its own.
        let _ = run(tx, &audit).await;
        locked
    } else {
        // The same, with the audit row sent while the lock is awaited (`join!` on one
        // `Tx`): it must not slip out after the server has rolled the transaction back.
        let (locked, _) = tokio::join!(run(tx, &lock), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            run(tx, &audit).await
        });
        locked
    };
    if propagate { locked } else { Ok(()) }
}

#[safe_db_operation(timeout = "30s")]
async fn transfer_once(
    tx: &Tx,
    first: i32,
    second: i32,
    meet: Arc<Barrier>,
    attempts: Arc<AtomicU32>,
    (propagate, concurrent): (bool, bool),
) -> Result<(), Error> {
    transfer_then_audit(tx, first, second, &meet, &attempts, propagate, concurrent).await
}

#[safe_db_operation(timeout = "30s", retries = 5)]
async fn transfer_with_retries(
    tx: &Tx,
    first: i32,
    second: i32,
    meet: Arc<Barrier>,
    attempts: Arc<AtomicU32>,
    (propagate, concurrent): (bool, bool),
) -> Result<(), Error> {
    transfer_then_audit(tx, first, second, &meet, &attempts, propagate, concurrent).await
}

/// Two sessions that deadlock; returns both results and the attempts made.
async fn deadlock(
    db: &Arc<DatabaseConnection>,
    retries: bool,
    propagate: (bool, bool),
) -> (Vec<Result<(), Error>>, u32) {
    let meet = Arc::new(Barrier::new(2));
    let spawn = |first, second| {
        let (db, meet) = (Arc::clone(db), Arc::clone(&meet));
        // Each session counts its own attempts: only their first meets the other.
        let attempts = Arc::new(AtomicU32::new(0));
        tokio::spawn(async move {
            let result = if retries {
                let a = Arc::clone(&attempts);
                transfer_with_retries(&*db, first, second, meet, a, propagate).await
            } else {
                let a = Arc::clone(&attempts);
                transfer_once(&*db, first, second, meet, a, propagate).await
            };
            (result, attempts.load(Ordering::SeqCst))
        })
    };
    let (a, b) = (spawn(1, 2), spawn(2, 1));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    (vec![a.0, b.0], a.1 + b.1)
}

/// Two counters and an audit table to deadlock over; a pool of four on them.
async fn deadlock_schema(t: &TestDb) -> Arc<DatabaseConnection> {
    let serial = match t.backend {
        Backend::MySql => "INTEGER AUTO_INCREMENT PRIMARY KEY",
        _ => "SERIAL PRIMARY KEY",
    };
    let audit = format!("CREATE TABLE audit (id {serial}, who INTEGER NOT NULL)");
    exec(&t.db, &audit).await;
    exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 0), (2, 0)").await;
    Arc::new(t.pool(4).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_victim_leaves_nothing_behind_even_when_its_body_goes_on() {
    // SQLite writers queue at BEGIN IMMEDIATE and never deadlock.
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "deadlock_audit", 2).await {
        let db = deadlock_schema(&t).await;
        let audit = || ids(&t.db, "SELECT who FROM audit ORDER BY who");
        let counters = || ids(&t.db, "SELECT n FROM counters ORDER BY id");

        // (the body returns the lock's error, the audit row is sent concurrently)
        let modes = [(false, false), (true, false), (false, true)];
        for propagate in modes {
            let (once, attempts) = deadlock(&db, false, propagate).await;
            assert_eq!(attempts, 2);
            let failed: Vec<&Error> = once.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(failed.len(), 1, "{:?}: {once:?}", t.backend);
            assert_eq!(
                failed[0].kind(),
                ErrorKind::SerializationFailure,
                "{}",
                failed[0]
            );
            // Only the winner's work: its two increments and its one audit row.
            let winner = if once[0].is_ok() { 1 } else { 2 };
            assert_eq!(audit().await, vec![winner], "{:?} {propagate:?}", t.backend);
            assert_eq!(
                counters().await,
                vec![1, 1],
                "{:?} {propagate:?}",
                t.backend
            );
            exec(&t.db, "DELETE FROM audit").await;
            exec(&t.db, "UPDATE counters SET n = 0").await;
        }

        for propagate in modes {
            let (retried, attempts) = deadlock(&db, true, propagate).await;
            assert!(retried.iter().all(Result::is_ok), "{retried:?}");
            assert!(attempts >= 3, "the victim was re-run ({attempts} attempts)");
            // Each operation committed once: one audit row each, no duplicate from the
            // attempt the server rolled back.
            assert_eq!(audit().await, vec![1, 2], "{:?} {propagate:?}", t.backend);
            assert_eq!(
                counters().await,
                vec![2, 2],
                "{:?} {propagate:?}",
                t.backend
            );
            exec(&t.db, "DELETE FROM audit").await;
            exec(&t.db, "UPDATE counters SET n = 0").await;
        }
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn nested_victim(tx: &Tx, meet: Arc<Barrier>) -> Result<(), Error> {
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 2").await?;
    meet.wait().await;
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1").await
}

#[safe_db_operation(timeout = "30s")]
async fn caller_of_a_victim(tx: &Tx, meet: Arc<Barrier>) -> Result<(), Error> {
    run(tx, "INSERT INTO audit (who) VALUES (7)").await?;
    // The nested operation loses the deadlock; its caller handles the error and goes on,
    // as it may after any nested failure. But the server has rolled back the whole
    // transaction, the caller's work included: nothing may be committed.
    let _ = nested_victim(tx, meet).await;
    run(tx, "INSERT INTO audit (who) VALUES (8)").await
}

#[safe_db_operation(timeout = "30s")]
async fn deadlock_winner(tx: &Tx, meet: Arc<Barrier>) -> Result<(), Error> {
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1").await?;
    // InnoDB picks as the victim the transaction that wrote less: this one writes more.
    for who in 100..110 {
        run(tx, &format!("INSERT INTO audit (who) VALUES ({who})")).await?;
    }
    meet.wait().await;
    // Let the other session block on row 1, then take row 2: a real deadlock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 2").await
}

#[safe_db_operation(timeout = "30s")]
async fn victim_with_a_queued_statement(tx: &Tx, meet: Arc<Barrier>) -> Result<(), Error> {
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 2").await?;
    meet.wait().await;
    // Waits for row 1, and meanwhile queues a write on the same `Tx`: when the server
    // picks this transaction as the deadlock's victim, the queued write must not run.
    let (locked, _) = tokio::join!(
        run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1"),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            run(tx, "INSERT INTO audit (who) VALUES (9)").await
        }
    );
    locked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_queued_behind_a_deadlock_does_not_slip_out() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "queued_deadlock", 2).await {
        let db = deadlock_schema(&t).await;
        let meet = Arc::new(Barrier::new(2));
        let (a, b) = (Arc::clone(&db), Arc::clone(&db));
        let (m1, m2) = (Arc::clone(&meet), Arc::clone(&meet));
        let victim = tokio::spawn(async move { victim_with_a_queued_statement(&*a, m1).await });
        let winner = tokio::spawn(async move { deadlock_winner(&*b, m2).await });
        let (victim, winner) = (victim.await.unwrap(), winner.await.unwrap());
        let (lost, won) = match (victim, winner) {
            (Err(e), Ok(())) => (e, true),
            // PostgreSQL picks the session whose wait found the cycle: the other one.
            (Ok(()), Err(e)) => (e, false),
            other => panic!("{:?}: exactly one session loses: {other:?}", t.backend),
        };
        assert_eq!(lost.kind(), ErrorKind::SerializationFailure, "{lost}");
        let audit = ids(&t.db, "SELECT who FROM audit WHERE who < 100 ORDER BY who").await;
        if won {
            // The queued INSERT of the rolled-back victim is not committed on its own.
            assert_eq!(audit, Vec::<i32>::new(), "{:?}", t.backend);
        } else {
            assert_eq!(audit, vec![9], "{:?}", t.backend);
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_in_a_nested_operation_ends_what_the_server_ended() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "nested_deadlock", 2).await {
        let db = deadlock_schema(&t).await;
        let meet = Arc::new(Barrier::new(2));
        let (a, b) = (Arc::clone(&db), Arc::clone(&db));
        let (m1, m2) = (Arc::clone(&meet), Arc::clone(&meet));
        let victim = tokio::spawn(async move { caller_of_a_victim(&*a, m1).await });
        let winner = tokio::spawn(async move { deadlock_winner(&*b, m2).await });
        let (victim, winner) = (victim.await.unwrap(), winner.await.unwrap());
        let audit = ids(&t.db, "SELECT who FROM audit WHERE who < 100 ORDER BY who").await;
        match (victim, winner) {
            // The caller lost: on MariaDB the server rolled back its whole transaction;
            // on PostgreSQL only the nested savepoint, but a conflict anywhere in the tree
            // fails the outermost operation (which retries it as a whole, when it may).
            // Either way nothing of it is committed. Before safe-db refused statements
            // after MariaDB's rollback, row 8 was committed on its own, in autocommit.
            (Err(e), Ok(())) => {
                assert_eq!(e.kind(), ErrorKind::SerializationFailure, "{e}");
                assert_eq!(
                    audit,
                    Vec::<i32>::new(),
                    "{:?}: the victim's rows",
                    t.backend
                );
            }
            // PostgreSQL may pick the other session: then the caller's work all stands.
            (Ok(()), Err(e)) if t.backend == Backend::Postgres => {
                assert_eq!(e.kind(), ErrorKind::SerializationFailure, "{e}");
                assert_eq!(audit, vec![7, 8]);
            }
            other => panic!("{:?}: {other:?}", t.backend),
        }
        // Each row moved once: by the winner, or by whichever of the two committed it.
        assert_eq!(
            ids(&t.db, "SELECT n FROM counters ORDER BY id").await,
            vec![1, 1],
            "{:?}",
            t.backend
        );
        // The pool's connections came back usable, outside any transaction.
        for _ in 0..4 {
            run_plain_insert_visible(&db, &t).await;
        }
        t.cleanup().await;
    }
}

/// A write on the pool by code that does not use safe-db, committed at once.
async fn run_plain_insert_visible(db: &DatabaseConnection, t: &TestDb) {
    static NEXT: AtomicU32 = AtomicU32::new(50_000);
    let id = NEXT.fetch_add(1, Ordering::SeqCst) as i32;
    t.assert_plain_write_committed(db, id).await;
}

#[safe_db_operation]
async fn write_then_ddl_then_fail(tx: &Tx, ddl: String) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'before')").await?;
    let refused = run(tx, &ddl).await;
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'after')").await?;
    // The body goes on past the refused statement, then fails: nothing may remain.
    Err(match refused {
        Ok(()) => Error::validation("the statement ran"),
        Err(e) => e,
    })
}

#[tokio::test]
async fn ddl_inside_an_operation_never_commits_what_came_before() {
    // Refused everywhere: statements that end the transaction or break its savepoints,
    // alone or after another statement in the same string.
    const EVERYWHERE: [&str; 4] = ["COMMIT", "SELECT 1; COMMIT", "SAVEPOINT x", "ROLLBACK"];
    // DDL: refused on MariaDB, run and rolled back with the rest elsewhere.
    const DDL: [&str; 4] = [
        "CREATE TABLE extra (a INTEGER)",
        "DROP TABLE counters",
        "ALTER TABLE counters ADD COLUMN b INTEGER",
        "TRUNCATE TABLE counters",
    ];
    // MariaDB's own ways to commit implicitly.
    const MARIADB: [&str; 6] = [
        "SET @@session.autocommit = 0",
        "SET STATEMENT max_statement_time = 10 FOR CREATE TABLE extra (a INTEGER)",
        "EXECUTE IMMEDIATE 'COMMIT'",
        "/*M!999999 SELECT 1, */ CREATE TABLE extra (a INTEGER)",
        "IF 1 THEN COMMIT; END IF",
        "SET NAMES utf8mb4, autocommit = 0",
    ];
    for t in TestDb::all("ddl", 2).await {
        let mariadb: &[&str] = if t.backend == Backend::MySql {
            &MARIADB
        } else {
            &[]
        };
        for ddl in EVERYWHERE.iter().chain(&DDL).chain(mariadb) {
            if t.backend == Backend::Sqlite && ddl.starts_with("TRUNCATE") {
                continue; // SQLite has no TRUNCATE
            }
            let err = write_then_ddl_then_fail(&t.db, (*ddl).to_owned())
                .await
                .unwrap_err();
            assert_eq!(
                t.agent_ids().await,
                Vec::<i32>::new(),
                "{:?}: {ddl}: {err}",
                t.backend
            );
            let refused = err.to_string();
            if t.backend == Backend::MySql || EVERYWHERE.contains(ddl) {
                // Refused before it was sent, with the reason.
                assert!(
                    refused.contains("is refused inside a safe-db operation"),
                    "{:?}: {ddl}: {refused}",
                    t.backend
                );
            } else {
                // PostgreSQL and SQLite roll DDL back with the rest.
                assert_eq!(refused, "the statement ran");
            }
        }
        // The schema is untouched everywhere.
        exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 1)").await;
        let missing = t.db.execute_unprepared("SELECT a FROM extra").await;
        assert!(missing.is_err(), "{:?}: table extra exists", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn uses_a_temporary_table(tx: &Tx) -> Result<Vec<i32>, Error> {
    run(tx, "CREATE TEMPORARY TABLE scratch (a INTEGER)").await?;
    run(tx, "INSERT INTO scratch (a) VALUES (4), (2)").await?;
    run(
        tx,
        "INSERT INTO agents (id, name) SELECT a, CONCAT('t', a) FROM scratch",
    )
    .await?;
    run(tx, "DROP TEMPORARY TABLE scratch").await?;
    Ok(safe_db_test_support::ids(tx, "SELECT id FROM agents ORDER BY id").await)
}

#[tokio::test]
async fn temporary_tables_are_not_refused_on_mariadb() {
    for t in TestDb::on(&[Backend::MySql], "temporary", 2).await {
        assert_eq!(uses_a_temporary_table(&t.db).await.unwrap(), vec![2, 4]);
        assert_eq!(t.agent_ids().await, vec![2, 4]);
        t.cleanup().await;
    }
}

#[safe_db_operation(read_only)]
async fn read_only_count(tx: &Tx) -> Result<usize, Error> {
    Ok(ids(tx, "SELECT id FROM agents").await.len())
}

#[safe_db_operation(isolation = "serializable")]
async fn serializable_write(tx: &Tx, id: i32) -> Result<(), Error> {
    run(
        tx,
        &format!("INSERT INTO agents (id, name) VALUES ({id}, 's{id}')"),
    )
    .await
}

#[safe_db_operation]
async fn plain_write(tx: &Tx, id: i32) -> Result<(), Error> {
    run(
        tx,
        &format!("INSERT INTO agents (id, name) VALUES ({id}, 'p{id}')"),
    )
    .await
}

/// What every session of the server is doing (for a failure's message).
async fn sessions(t: &TestDb) -> Vec<String> {
    let sql = match t.backend {
        Backend::MySql => {
            "SELECT CONCAT(ID, ' ', COMMAND, ' ', IFNULL(STATE, ''), ' ', IFNULL(INFO, ''), ' ', \
             TIME_MS) FROM information_schema.PROCESSLIST"
        }
        Backend::Postgres => {
            "SELECT concat(pid, ' ', state, ' ', query) FROM pg_stat_activity \
             WHERE datname = current_database()"
        }
        Backend::Sqlite => return Vec::new(),
    };
    let other = t.pool(1).await;
    let stmt = Statement::from_string(other.get_database_backend(), sql);
    let rows = other.query_all_raw(stmt).await.unwrap_or_default();
    rows.iter()
        .filter_map(|r| r.try_get_by_index::<String>(0).ok())
        .collect()
}

/// Runs `op` on a task of its own and aborts it after `delay`, as a client going away
/// does: the cancellation lands at whatever await point the operation has reached.
async fn abort_after<F>(op: F, delay: Duration)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = tokio::spawn(op);
    let started = Instant::now();
    while started.elapsed() < delay {
        std::hint::spin_loop();
    }
    task.abort();
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_cut_off_by_the_caller_leaves_the_connection_clean() {
    for t in TestDb::all("cut_begin", 1).await {
        // A pool of one: whatever a cancelled operation leaves on its connection, the
        // next user of the pool gets.
        let db = Arc::new(t.pool(1).await);
        for round in 0..120u32 {
            // Cancellation points spread over the operation's first 2.4 ms: acquiring,
            // SET TRANSACTION (MySQL), BEGIN, the body.
            let delay = Duration::from_micros(u64::from(round % 40) * 60);
            let base = 100 * (round as i32 + 1);
            let d = Arc::clone(&db);
            // A read-only operation cut off, then an unrelated writer (MySQL: a one-shot
            // SET TRANSACTION READ ONLY left behind fails it with 1792).
            abort_after(async move { read_only_count(&*d).await }, delay).await;
            if let Err(e) = plain_write(&db, base).await {
                panic!(
                    "{:?} round {round} delay {delay:?}: {e}\nsessions: {:?}",
                    t.backend,
                    sessions(&t).await
                );
            }
            // A plain operation cut off, then a serializable one (MySQL refuses to
            // change the isolation of a transaction in progress: 1568).
            let d = Arc::clone(&db);
            abort_after(async move { plain_write(&*d, base + 1).await }, delay).await;
            serializable_write(&db, base + 2)
                .await
                .unwrap_or_else(|e| panic!("{:?} round {round}: {e}", t.backend));
            // And code that does not use safe-db, on the same pool: its write is
            // committed at once, not swallowed by a transaction nobody ends.
            let d = Arc::clone(&db);
            abort_after(async move { plain_write(&*d, base + 3).await }, delay).await;
            run_plain_insert_visible(&db, &t).await;
            let rows = ids(
                &t.db,
                &format!("SELECT id FROM agents WHERE id IN ({base}, {})", base + 2),
            )
            .await;
            assert_eq!(rows, vec![base, base + 2], "{:?} round {round}", t.backend);
        }
        t.cleanup().await;
    }
}

#[safe_db_operation(timeout = "300ms")]
async fn sleeps(tx: &Tx, prepared: bool) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'sleeper')").await?;
    let backend = tx.get_database_backend();
    let (sql, arg) = match backend {
        DbBackend::Postgres => ("SELECT pg_sleep($1)", 8.0f64),
        _ => ("SELECT SLEEP(?)", 8.0),
    };
    if prepared {
        tx.query_one_raw(Statement::from_sql_and_values(backend, sql, [arg.into()]))
            .await?;
    } else {
        tx.execute_unprepared(&sql.replace("$1", "8").replace('?', "8"))
            .await?;
    }
    Ok(())
}

#[safe_db_operation]
async fn calls_a_sleeper(tx: &Tx, prepared: bool) -> Result<ErrorKind, Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'caller')").await?;
    // A nested timeout: the inner operation times out, rolls back its savepoint, and
    // the caller handles that and commits its own work.
    let inner = sleeps(tx, prepared).await.unwrap_err();
    Ok(inner.kind())
}

/// Statements of this test (its namespace) still running on the server that sleep.
async fn sleepers(t: &TestDb) -> usize {
    let sql = match t.backend {
        // The sleeping transaction wrote to this schema's `agents` first: it holds a lock.
        Backend::Postgres => {
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' \
             AND pid <> pg_backend_pid() AND pid IN (SELECT l.pid FROM pg_locks l \
             JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relname = 'agents')"
        }
        _ => {
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(%' \
             AND ID <> CONNECTION_ID() AND DB = DATABASE()"
        }
    };
    let stmt = Statement::from_string(t.db.get_database_backend(), sql);
    t.db.query_all_raw(stmt).await.expect("sleepers").len()
}

#[tokio::test]
async fn a_timeout_stops_the_running_statement_on_the_server() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "stops", 2).await {
        let db = t.pool(1).await;
        for prepared in [false, true] {
            let started = Instant::now();
            let err = sleeps(&db, prepared).await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            // Within its 300 ms and a margin; an 8 s statement left running would hold
            // the rollback (and the pool of one) for seconds.
            assert!(took < Duration::from_secs(2), "{:?}: {took:?}", t.backend);
            // The server stops the statement at its own bound (the time left at BEGIN,
            // rounded up to 100 ms on MariaDB), a moment after the caller has its answer:
            // the rollback goes on off the caller's path.
            let stopped_by = Instant::now() + Duration::from_secs(1);
            while sleepers(&t).await > 0 && Instant::now() < stopped_by {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(sleepers(&t).await, 0, "{:?}", t.backend);
            // The pool of one serves the next operation at once.
            let next = Instant::now();
            plain_write(&db, 9)
                .await
                .unwrap_or_else(|e| panic!("{:?} prepared {prepared}: {e}", t.backend));
            assert!(
                next.elapsed() < Duration::from_secs(1),
                "{:?}",
                next.elapsed()
            );
            assert_eq!(t.agent_ids().await, vec![9], "{:?}", t.backend);
            exec(&t.db, "DELETE FROM agents").await;
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_nested_timeout_rolls_back_only_its_savepoint() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "nested_timeout", 1).await {
        // The server's stop and the client's deadline race: either may end the statement.
        for round in 0..6 {
            let started = Instant::now();
            let inner = calls_a_sleeper(&t.db, round % 2 == 0).await.unwrap();
            assert_eq!(inner, ErrorKind::Timeout);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            // The caller's row committed; the sleeper's did not.
            assert_eq!(t.agent_ids().await, vec![2]);
            assert_eq!(sleepers(&t).await, 0);
            exec(&t.db, "DELETE FROM agents").await;
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn the_closure_form_refuses_the_same_statements() {
    for t in TestDb::all("closure_ddl", 1).await {
        // DDL on MariaDB; elsewhere a hand-written COMMIT, refused on every database.
        let (statement, named) = match t.backend {
            Backend::MySql => ("CREATE TABLE x (a INT)", "`CREATE TABLE` is refused"),
            _ => ("COMMIT", "`COMMIT` is refused"),
        };
        let result: Result<(), Error> = Options::new()
            .run(&t.db, async |tx: &Tx| {
                run(tx, "INSERT INTO agents (id, name) VALUES (1, 'a')").await?;
                run(tx, statement).await
            })
            .await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains(named), "{:?}: {err}", t.backend);
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(timeout = "300ms")]
async fn quick(tx: &Tx) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'quick')").await
}

#[safe_db_operation]
async fn slow_after_a_quick_nested_timeout(tx: &Tx) -> Result<(), Error> {
    quick(tx).await?;
    // The nested operation's 300 ms bound ended with it: the caller has none, and its
    // own statement may take longer.
    let sleep = match tx.get_database_backend() {
        DbBackend::Postgres => "SELECT pg_sleep(0.6)",
        _ => "SELECT SLEEP(0.6)",
    };
    run(tx, sleep).await?;
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'after')").await
}

#[tokio::test]
async fn a_nested_timeout_ends_with_its_operation() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "nested_bound_ends", 1).await {
        slow_after_a_quick_nested_timeout(&t.db)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.backend));
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// Writes, then sleeps with no safe-db timeout: the server is told nothing of any deadline.
#[safe_db_operation]
async fn writes_then_sleeps(tx: &Tx, id: i32, secs: u32) -> Result<(), Error> {
    plain_write(tx, id).await?;
    let sql = match tx.get_database_backend() {
        DbBackend::Postgres => format!("SELECT pg_sleep({secs})"),
        _ => format!("SELECT SLEEP({secs})"),
    };
    run(tx, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_abandoned_by_its_caller_does_not_hold_up_the_next_one() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "abandoned", 1).await {
        // A pool of one, guarded as DbConfig's pools are, with PostgreSQL told to check
        // that a running statement's client is still there (the setting the README
        // recommends), without TLS.
        let mut options = t.options(1);
        if t.backend == Backend::Postgres {
            // Without TLS: closing a TLS connection, sqlx (rustls) waits for the server's
            // next message, which comes when the statement ends (see the README).
            options.map_sqlx_postgres_opts(|o| {
                o.options([("client_connection_check_interval", "1000")])
                    .ssl_mode(sea_orm::sqlx::postgres::PgSslMode::Disable)
            });
        }
        let db = sea_orm::Database::connect(options).await.unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(300), writes_then_sleeps(&db, 1, 4)).await;
        assert!(gave_up.is_err(), "{:?}", t.backend);
        let gave_up_at = Instant::now();
        // Without the guard the next caller waited for the 4 s statement (3.7 s measured).
        // What the server and the pool look like 1 s in, for a failure's message.
        let snapshot = {
            let url = t.url.clone();
            let backend = t.backend;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let other = sea_orm::Database::connect(url).await.ok()?;
                let sql = match backend {
                    Backend::Postgres => {
                        "SELECT concat(pid, ' ', state, ' ', query) FROM pg_stat_activity \
                         WHERE datname = current_database()"
                    }
                    _ => {
                        "SELECT CONCAT(ID, ' ', COMMAND, ' ', IFNULL(INFO, '')) \
                         FROM information_schema.PROCESSLIST"
                    }
                };
                let rows = other
                    .query_all_raw(Statement::from_string(other.get_database_backend(), sql))
                    .await
                    .ok()?;
                Some(
                    rows.iter()
                        .filter_map(|r| r.try_get_by_index::<String>(0).ok())
                        .collect::<Vec<_>>(),
                )
            })
        };
        plain_write(&db, 2).await.unwrap();
        let waited = gave_up_at.elapsed();
        if waited >= Duration::from_millis(1500) {
            panic!(
                "{:?}: the next caller waited {waited:?}; sessions 1 s in: {:?}",
                t.backend,
                snapshot.await
            );
        }
        snapshot.abort();
        assert_eq!(t.agent_ids().await, vec![2], "{:?}", t.backend);
        // The abandoned statement: PostgreSQL stops it once its connection is closed and
        // the check notices; MariaDB runs it to its end.
        let mut running = sleepers(&t).await;
        while running > 0 && gave_up_at.elapsed() < Duration::from_millis(2500) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            running = sleepers(&t).await;
        }
        println!(
            "{:?}: abandoned statement still running after {:?}: {}",
            t.backend,
            gave_up_at.elapsed(),
            running > 0
        );
        if t.backend == Backend::Postgres {
            assert_eq!(running, 0, "pg_sleep still running after 2.5 s");
        }
        t.cleanup().await;
    }
}
