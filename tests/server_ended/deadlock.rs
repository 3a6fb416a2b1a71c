//! Deadlocks the server really detects, between two sessions: the victim's transaction is
//! ended by the server, and nothing of it (or of a body that goes on) is committed.

use super::*;

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
pub(super) async fn deadlock_schema(t: &TestDb) -> Arc<DatabaseConnection> {
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
