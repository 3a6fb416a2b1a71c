//! A statement the body stopped waiting for (a `timeout` around it) that fails on the
//! server afterwards: its failure counts as the body's own, read before the transaction's
//! next step (`runtime/src/tx/owed.rs`). On PostgreSQL the transaction is aborted, and a
//! COMMIT would answer `ROLLBACK` without an error; a MariaDB deadlock ends it, and every
//! later statement would be committed on its own. On MariaDB and SQLite any other error
//! undoes its own statement only, as when a body catches it.

use super::*;
use safe_db::Cause;

/// Inserts `id` again after 300 ms of work on the server (on SQLite, counting to three
/// million): a duplicate key, once the caller has stopped waiting.
fn late_duplicate(backend: Backend, id: i32) -> String {
    match backend {
        Backend::Postgres => {
            format!("INSERT INTO agents (id, name) SELECT {id}, 'again' FROM pg_sleep(0.3)")
        }
        Backend::MySql => format!(
            "INSERT INTO agents (id, name) SELECT {id}, 'again' FROM (SELECT SLEEP(0.3)) AS s"
        ),
        Backend::Sqlite => format!(
            "INSERT INTO agents (id, name) SELECT {id}, 'again' FROM (WITH RECURSIVE \
             c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
             SELECT count(*) FROM c)"
        ),
    }
}

/// `err` is `operation`'s refusal to commit after its abandoned statement failed.
fn assert_abandoned_failed(err: &Error, operation: &'static str) {
    assert_eq!(
        err.cause(),
        Some(&Cause::AbandonedStatementFailed { operation }),
        "{err}"
    );
}

/// Sends `sql` and stops waiting for it after 50 ms, as a caller-side `timeout` does.
async fn abandon(tx: &Tx, sql: &str) {
    let cut = tokio::time::timeout(Duration::from_millis(50), run(tx, sql)).await;
    assert!(cut.is_err(), "the statement answered within 50 ms");
}

#[safe_db_operation]
async fn abandons_then_returns_ok(tx: &Tx, backend: Backend) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'kept?')").await?;
    abandon(tx, &late_duplicate(backend, 1)).await;
    Ok(())
}

#[tokio::test]
async fn an_ok_after_an_abandoned_statement_failed_commits_only_where_the_server_does() {
    for t in TestDb::all("abandoned_flat", 2).await {
        let result = abandons_then_returns_ok(&t.db, t.backend).await;
        match t.backend {
            // The duplicate aborted the transaction: its COMMIT would roll back.
            Backend::Postgres => {
                let err = result.expect_err("reported committed, and rolled back");
                assert_abandoned_failed(&err, "abandons_then_returns_ok");
                assert_eq!(t.agent_ids().await, Vec::<i32>::new());
            }
            // A duplicate undoes its own statement only, as when a body catches it.
            _ => {
                result.unwrap_or_else(|e| panic!("{:?}: {e}", t.backend));
                assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
                assert_eq!(t.agent_name(1).await.as_deref(), Some("kept?"));
            }
        }
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn inner_abandons(tx: &Tx, backend: Backend) -> Result<(), Error> {
    abandon(tx, &late_duplicate(backend, 1)).await;
    Ok(())
}

#[safe_db_operation]
async fn outer_goes_on(tx: &Tx, backend: Backend) -> Result<Option<Error>, Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'outer')").await?;
    let inner = inner_abandons(tx, backend).await.err();
    // The caller handles its nested operation's failure and goes on.
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'after')").await?;
    Ok(inner)
}

#[tokio::test]
async fn a_nested_operation_whose_abandoned_statement_failed_rolls_back_its_savepoint_only() {
    for t in TestDb::all("abandoned_nested", 2).await {
        let inner = outer_goes_on(&t.db, t.backend)
            .await
            .expect("the caller commits its own work");
        match t.backend {
            Backend::Postgres => {
                let err = inner.expect("the nested operation reported Ok");
                assert_abandoned_failed(&err, "inner_abandons");
            }
            _ => assert!(inner.is_none(), "{inner:?}"),
        }
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// Locks row 2, then waits for row 1 (which the other session holds) and stops waiting
/// after 100 ms: the wait goes on in the server, and the other session then closes the
/// cycle. This one wrote less: the server picks it as the deadlock's victim, in the
/// statement nobody awaits any more. The body writes an audit row and returns `Ok`.
#[safe_db_operation(timeout = "30s")]
async fn victim_stops_waiting(
    tx: &Tx,
    locked: Arc<Barrier>,
    cycle: Arc<Barrier>,
) -> Result<(), Error> {
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 2").await?;
    locked.wait().await;
    let wait = run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1");
    let cut = tokio::time::timeout(Duration::from_millis(100), wait).await;
    assert!(cut.is_err(), "the lock was granted within 100 ms");
    cycle.wait().await;
    // Handled, as a body that goes on after its own errors does.
    let _ = run(tx, "INSERT INTO audit (who) VALUES (8)").await;
    Ok(())
}

#[safe_db_operation(timeout = "30s")]
async fn closes_the_cycle(tx: &Tx, locked: Arc<Barrier>, cycle: Arc<Barrier>) -> Result<(), Error> {
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1").await?;
    // InnoDB picks as the victim the transaction that wrote less: this one writes more.
    for who in 100..110 {
        run(tx, &format!("INSERT INTO audit (who) VALUES ({who})")).await?;
    }
    locked.wait().await;
    cycle.wait().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_in_an_abandoned_statement_leaves_nothing_of_the_victim() {
    for t in TestDb::on(
        &[Backend::Postgres, Backend::MySql],
        "abandoned_deadlock",
        2,
    )
    .await
    {
        let (db, locked, cycle) = deadlock_setup(&t).await;
        let victim = {
            let (db, locked, cycle) = (Arc::clone(&db), Arc::clone(&locked), Arc::clone(&cycle));
            tokio::spawn(async move { victim_stops_waiting(&*db, locked, cycle).await })
        };
        let winner = closes_the_cycle(&*db, locked, cycle).await;
        let victim = victim.await.unwrap();
        winner.expect("the heavier transaction wins");
        let err = victim.expect_err("the victim reported committed");
        assert_eq!(err.kind(), ErrorKind::SerializationFailure, "{err}");
        // The winner's work only: no audit row 8 committed on its own, no increment of
        // the victim's.
        let audit = ids(&t.db, "SELECT who FROM audit ORDER BY who").await;
        assert_eq!(audit, (100..110).collect::<Vec<_>>(), "{:?}", t.backend);
        let counters = ids(&t.db, "SELECT n FROM counters ORDER BY id").await;
        assert_eq!(counters, vec![1, 1], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// The deadlock tests' schema and pool (`deadlock.rs`), and the two barriers where the
/// sessions meet (both locks taken; the cycle about to close).
async fn deadlock_setup(t: &TestDb) -> (Arc<DatabaseConnection>, Arc<Barrier>, Arc<Barrier>) {
    let db = super::deadlock::deadlock_schema(t).await;
    (db, Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)))
}

/// Stops waiting for a 0.4 s statement 700 ms into a 1 s operation, then returns `Ok`:
/// the statement ends (well) at about 1.1 s, after the deadline.
#[safe_db_operation(timeout = "1s")]
async fn abandons_near_its_deadline(
    tx: &Tx,
    backend: Backend,
    started: Instant,
) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'a')").await?;
    tokio::time::sleep_until((started + Duration::from_millis(700)).into()).await;
    let sleep = match backend {
        Backend::Postgres => "SELECT pg_sleep(0.4)",
        _ => "SELECT SLEEP(0.4)",
    };
    let cut = tokio::time::timeout(Duration::from_millis(20), run(tx, sleep)).await;
    assert!(cut.is_err(), "the statement answered within 20 ms");
    Ok(())
}

/// The answer owed and the COMMIT share one bound: with the COMMIT unanswered (a frozen
/// proxy), the caller has its answer by the deadline plus the margin of 200 ms, not a
/// margin for each.
#[tokio::test]
async fn an_answer_owed_and_the_commit_share_the_commits_bound() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "abandoned_bound", 2).await {
        let proxy = safe_db_test_support::proxy::FaultProxy::start(&t.url).await;
        let db = t.pool_via(&proxy, 1).await;
        proxy.freeze_after("COMMIT");
        let started = Instant::now();
        let result = abandons_near_its_deadline(&db, t.backend, started).await;
        let took = started.elapsed();
        let err = result.expect_err("committed through a frozen proxy");
        assert_eq!(
            err.kind(),
            ErrorKind::CommitUnknown,
            "{:?}: {err}",
            t.backend
        );
        assert!(
            took < Duration::from_millis(1260),
            "{:?}: answered after {took:?} (deadline 1 s, margin 200 ms)",
            t.backend
        );
        drop(db);
        t.cleanup().await;
    }
}

static RETRIED_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Stops waiting for a lock after 100 ms, while the other session closes a deadlock
/// cycle on it: its statement becomes the victim. Returns `Err`.
#[safe_db_operation]
async fn nested_gives_up(tx: &Tx, locked: Arc<Barrier>, cycle: Arc<Barrier>) -> Result<(), Error> {
    locked.wait().await;
    let wait = run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1");
    let cut = tokio::time::timeout(Duration::from_millis(100), wait).await;
    assert!(cut.is_err(), "the lock was granted within 100 ms");
    cycle.wait().await;
    Err(Error::validation("gave up waiting"))
}

/// Calls `nested_gives_up` on its first attempt, handles its failure and goes on.
#[safe_db_operation(timeout = "30s", retries = 3)]
async fn caller_goes_on(tx: &Tx, locked: Arc<Barrier>, cycle: Arc<Barrier>) -> Result<(), Error> {
    let attempt = RETRIED_ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 2").await?;
    if attempt == 0 {
        let _ = nested_gives_up(tx, locked, cycle).await;
    }
    run(tx, "INSERT INTO audit (who) VALUES (8)").await
}

/// A deadlock in a nested operation's abandoned statement, read before its `ROLLBACK TO`:
/// on MariaDB it ended the whole transaction (the savepoint with it), on PostgreSQL it is a
/// conflict; either way the caller, which handles the nested failure, is re-run and
/// commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deadlock_owed_at_a_savepoints_rollback_is_retried() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "abandoned_retried", 2).await {
        RETRIED_ATTEMPTS.store(0, Ordering::SeqCst);
        let (db, locked, cycle) = deadlock_setup(&t).await;
        let victim = {
            let (db, locked, cycle) = (Arc::clone(&db), Arc::clone(&locked), Arc::clone(&cycle));
            tokio::spawn(async move { caller_goes_on(&*db, locked, cycle).await })
        };
        closes_the_cycle(&*db, locked, cycle)
            .await
            .expect("the heavier transaction wins");
        victim
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{:?}: not re-run: {e}", t.backend));
        assert_eq!(
            RETRIED_ATTEMPTS.load(Ordering::SeqCst),
            2,
            "{:?}",
            t.backend
        );
        let mut audit: Vec<i32> = (100..110).collect();
        audit.insert(0, 8);
        assert_eq!(
            ids(&t.db, "SELECT who FROM audit ORDER BY who").await,
            audit
        );
        assert_eq!(
            ids(&t.db, "SELECT n FROM counters ORDER BY id").await,
            vec![1, 2],
            "{:?}",
            t.backend
        );
        t.cleanup().await;
    }
}
