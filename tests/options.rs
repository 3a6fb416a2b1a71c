//! The options, proven by behaviour: isolation read back from the server, read-only
//! writes refused, retries under real contention, and their combinations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use safe_db::{Error, ErrorKind, Isolation, Options, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, exec, ids};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tokio::sync::Barrier;

async fn text(tx: &Tx, sql: &str) -> String {
    let row = tx
        .query_one_raw(Statement::from_string(tx.get_database_backend(), sql))
        .await
        .unwrap()
        .expect("one row");
    row.try_get_by_index(0).unwrap()
}

/// The isolation level the server applies to the current transaction.
async fn isolation_in_force(tx: &Tx) -> Option<String> {
    match tx.get_database_backend() {
        DbBackend::Postgres => Some(text(tx, "SHOW transaction_isolation").await),
        DbBackend::MySql => {
            // The level of the running transaction (the session variables show only the
            // session default): InnoDB lists it once the transaction has written.
            tx.execute_unprepared("INSERT INTO counters (id, n) VALUES (-1, 0)")
                .await
                .unwrap();
            // InnoDB refreshes this table's cache at most every 100 ms.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let level = text(
                tx,
                "SELECT trx_isolation_level FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id = CONNECTION_ID()",
            )
            .await;
            tx.execute_unprepared("DELETE FROM counters WHERE id = -1")
                .await
                .unwrap();
            Some(level)
        }
        _ => None,
    }
}

#[safe_db_operation(isolation = "serializable")]
async fn serializable(tx: &Tx) -> Result<Option<String>, Error> {
    Ok(isolation_in_force(tx).await)
}

#[safe_db_operation(isolation = "repeatable_read")]
async fn repeatable_read(tx: &Tx) -> Result<Option<String>, Error> {
    Ok(isolation_in_force(tx).await)
}

#[safe_db_operation(isolation = "read_committed")]
async fn read_committed(tx: &Tx) -> Result<Option<String>, Error> {
    Ok(isolation_in_force(tx).await)
}

#[safe_db_operation(isolation = "read_uncommitted")]
async fn read_uncommitted(tx: &Tx) -> Result<Option<String>, Error> {
    Ok(isolation_in_force(tx).await)
}

#[tokio::test]
async fn each_isolation_level_is_in_force() {
    for t in TestDb::all("isolation", 2).await {
        let seen = [
            serializable(&t.db).await.unwrap(),
            repeatable_read(&t.db).await.unwrap(),
            read_committed(&t.db).await.unwrap(),
            read_uncommitted(&t.db).await.unwrap(),
        ];
        let seen: Vec<Option<String>> = seen
            .into_iter()
            .map(|s| s.map(|s| s.to_lowercase().replace(['-', '_'], " ")))
            .collect();
        match t.backend {
            // SQLite has no isolation levels; the option is accepted and ignored.
            Backend::Sqlite => assert_eq!(seen, vec![None, None, None, None]),
            _ => assert_eq!(
                seen,
                [
                    "serializable",
                    "repeatable read",
                    "read committed",
                    "read uncommitted"
                ]
                .map(|s| Some(s.to_owned()))
                .to_vec(),
                "{:?}",
                t.backend
            ),
        }
        // The closure form's builder sets the same.
        let level = Options::new()
            .isolation(Isolation::Serializable)
            .run(&t.db, async |tx: &Tx| {
                Ok::<_, Error>(isolation_in_force(tx).await)
            })
            .await
            .unwrap();
        assert_eq!(level.is_some(), t.backend != Backend::Sqlite);
        t.cleanup().await;
    }
}

#[safe_db_operation(read_only)]
async fn write_in_read_only(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'ro')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation(read_only)]
async fn read_in_read_only(tx: &Tx) -> Result<Vec<i32>, Error> {
    Ok(ids(tx, "SELECT id FROM agents ORDER BY id").await)
}

#[tokio::test]
async fn read_only_refuses_writes_where_the_database_can() {
    for t in TestDb::all("read_only", 2).await {
        exec(&t.db, "INSERT INTO agents (id, name) VALUES (1, 'a')").await;
        assert_eq!(read_in_read_only(&t.db).await.unwrap(), vec![1]);
        let result = write_in_read_only(&t.db, 2).await;
        match t.backend {
            Backend::Sqlite => {
                // Documented: SQLite has no read-only transactions; the transaction only
                // begins DEFERRED, and the write goes through.
                result.unwrap();
                assert_eq!(t.agent_ids().await, vec![1, 2]);
            }
            _ => {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::ReadOnly, "{:?}: {err}", t.backend);
                assert_eq!(t.agent_ids().await, vec![1], "nothing written");
            }
        }
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn writer_calling_read_only_operations(tx: &Tx) -> Result<(ErrorKind, Vec<i32>), Error> {
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'a')")
        .await?;
    // A read_only operation never writes, whoever calls it: here in a savepoint of a
    // transaction that may.
    let refused = write_in_read_only(tx, 5).await.unwrap_err().kind();
    let seen = read_in_read_only(tx).await?;
    // After it, the caller may write again.
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (2, 'b')")
        .await?;
    Ok((refused, seen))
}

#[tokio::test]
async fn a_read_only_operation_never_writes_even_when_nested() {
    // SQLite has no read-only transactions (see above).
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "read_only_nested", 2).await {
        let (refused, seen) = writer_calling_read_only_operations(&t.db)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.backend));
        assert_eq!(refused, ErrorKind::ReadOnly, "{:?}", t.backend);
        assert_eq!(seen, vec![1], "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// A serializable read-modify-write of one counter row, slow enough to conflict.
async fn bump(tx: &Tx) -> Result<(), Error> {
    let n = ids(tx, "SELECT n FROM counters WHERE id = 1").await[0];
    tokio::time::sleep(Duration::from_millis(2)).await;
    tx.execute_unprepared(&format!("UPDATE counters SET n = {} WHERE id = 1", n + 1))
        .await?;
    Ok(())
}

#[safe_db_operation(isolation = "serializable", retries = 100, timeout = "60s")]
async fn bump_with_retries(tx: &Tx) -> Result<(), Error> {
    bump(tx).await
}

#[safe_db_operation(isolation = "serializable")]
async fn bump_without_retries(tx: &Tx) -> Result<(), Error> {
    bump(tx).await
}

const TASKS: usize = 16;
const PER_TASK: usize = 5;

async fn contend(db: Arc<sea_orm::DatabaseConnection>, retries: bool) -> Vec<Result<(), Error>> {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..PER_TASK {
                    out.push(if retries {
                        bump_with_retries(&*db).await
                    } else {
                        bump_without_retries(&*db).await
                    });
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_make_every_conflicting_operation_succeed_on_postgres() {
    for t in TestDb::on(&[Backend::Postgres], "retries_pg", 2).await {
        let db = Arc::new(t.pool(TASKS as u32 + 1).await);
        exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 0)").await;

        let without = contend(Arc::clone(&db), false).await;
        let failed: Vec<&Error> = without.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            !failed.is_empty(),
            "16 serializable writers never conflicted"
        );
        assert!(
            failed
                .iter()
                .all(|e| e.kind() == ErrorKind::SerializationFailure),
            "{failed:?}"
        );
        let counted = ids(&t.db, "SELECT n FROM counters WHERE id = 1").await[0];
        assert_eq!(counted as usize, without.len() - failed.len());

        exec(&t.db, "UPDATE counters SET n = 0 WHERE id = 1").await;
        let with = contend(Arc::clone(&db), true).await;
        let errors: Vec<&Error> = with.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            ids(&t.db, "SELECT n FROM counters WHERE id = 1").await,
            vec![(TASKS * PER_TASK) as i32]
        );
        t.cleanup().await;
    }
}

/// Locks `first`, waits until the other task holds its first lock (on the first attempt
/// only), then locks `second`: two of these in opposite order deadlock.
async fn lock_two(
    tx: &Tx,
    first: i32,
    second: i32,
    meet: &Barrier,
    attempts: &AtomicU32,
) -> Result<(), Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    tx.execute_unprepared(&format!("UPDATE counters SET n = n + 1 WHERE id = {first}"))
        .await?;
    if attempt == 1 {
        meet.wait().await;
    }
    tx.execute_unprepared(&format!(
        "UPDATE counters SET n = n + 1 WHERE id = {second}"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation(retries = 5, timeout = "30s")]
async fn lock_two_with_retries(
    tx: &Tx,
    first: i32,
    second: i32,
    meet: Arc<Barrier>,
    attempts: Arc<AtomicU32>,
) -> Result<(), Error> {
    lock_two(tx, first, second, &meet, &attempts).await
}

#[safe_db_operation(timeout = "30s")]
async fn lock_two_once(
    tx: &Tx,
    first: i32,
    second: i32,
    meet: Arc<Barrier>,
    attempts: Arc<AtomicU32>,
) -> Result<(), Error> {
    lock_two(tx, first, second, &meet, &attempts).await
}

async fn deadlock(
    db: &Arc<sea_orm::DatabaseConnection>,
    retries: bool,
) -> (Vec<Result<(), Error>>, u32) {
    let meet = Arc::new(Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let run = |first, second| {
        let (db, meet, attempts) = (
            Arc::clone(db),
            Arc::clone(&meet),
            Arc::new(AtomicU32::new(0)),
        );
        let total = Arc::clone(&attempts);
        tokio::spawn(async move {
            let result = if retries {
                lock_two_with_retries(&*db, first, second, meet, Arc::clone(&attempts)).await
            } else {
                lock_two_once(&*db, first, second, meet, Arc::clone(&attempts)).await
            };
            (result, total.load(Ordering::SeqCst))
        })
    };
    let (a, b) = (run(1, 2), run(2, 1));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    attempts.store(a.1 + b.1, Ordering::SeqCst);
    (vec![a.0, b.0], attempts.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_deadlock_is_retried() {
    // SQLite writers take the write lock at BEGIN: they queue, never deadlock.
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "deadlock", 2).await {
        exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 0), (2, 0)").await;
        let db = Arc::new(t.pool(4).await);

        let (once, _) = deadlock(&db, false).await;
        let failed: Vec<&Error> = once.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(failed.len(), 1, "{:?}: {once:?}", t.backend);
        assert_eq!(
            failed[0].kind(),
            ErrorKind::SerializationFailure,
            "{}",
            failed[0]
        );
        // The winner's two increments are committed, the victim's are not.
        assert_eq!(
            ids(&t.db, "SELECT n FROM counters ORDER BY id").await,
            vec![1, 1]
        );

        let (retried, attempts) = deadlock(&db, true).await;
        assert!(retried.iter().all(Result::is_ok), "{retried:?}");
        assert!(
            attempts >= 3,
            "the deadlock victim was re-run ({attempts} attempts)"
        );
        assert_eq!(
            ids(&t.db, "SELECT n FROM counters ORDER BY id").await,
            vec![3, 3]
        );
        t.cleanup().await;
    }
}

#[safe_db_operation(retries = 3)]
async fn swallows_a_conflict(tx: &Tx, attempts: Arc<AtomicU32>) -> Result<(), Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({attempt}, 'a{attempt}')"
    ))
    .await?;
    if attempt < 3 {
        // A retryable failure the body turns into success: this transaction can no longer
        // be trusted (MySQL has rolled it back, PostgreSQL has aborted it), so safe-db
        // re-runs the operation instead of reporting a commit that did not happen.
        let _ = nested_conflict(tx).await;
    }
    Ok(())
}

#[safe_db_operation]
async fn nested_conflict(tx: &Tx) -> Result<(), Error> {
    // Raise a serialization failure the portable way: a statement error whose code the
    // classifier reads as retryable.
    let sql = match tx.get_database_backend() {
        DbBackend::Postgres => {
            "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$"
        }
        DbBackend::MySql => {
            "SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'forced', MYSQL_ERRNO = 1213"
        }
        _ => "SELECT raise(ABORT, 'forced')",
    };
    tx.execute_unprepared(sql).await?;
    Ok(())
}

#[tokio::test]
async fn a_swallowed_conflict_is_retried_not_committed() {
    // SQLite has no statement that reports a conflict on demand (`raise()` is not a busy
    // error), so this runs on the servers.
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "swallowed", 2).await {
        let attempts = Arc::new(AtomicU32::new(0));
        swallows_a_conflict(&t.db, Arc::clone(&attempts))
            .await
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        // Only the attempt that committed left its row.
        assert_eq!(t.agent_ids().await, vec![3], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn swallows_a_failed_statement(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'kept?')")
        .await?;
    let _ = tx
        .execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'dup')")
        .await;
    Ok(())
}

#[tokio::test]
async fn an_ok_after_a_failed_statement_is_not_a_silent_rollback_on_postgres() {
    for t in TestDb::all("aborted", 2).await {
        let result = swallows_a_failed_statement(&t.db).await;
        match t.backend {
            Backend::Postgres => {
                // PostgreSQL aborted the transaction at the failed statement: COMMIT would
                // roll back. safe-db says so instead of returning Ok.
                let err = result.unwrap_err();
                assert!(err.to_string().contains("nothing was committed"), "{err}");
                assert_eq!(t.agent_ids().await, Vec::<i32>::new());
            }
            _ => {
                // SQLite and MySQL undo only the failed statement: the rest commits.
                result.unwrap();
                assert_eq!(t.agent_ids().await, vec![1]);
            }
        }
        t.cleanup().await;
    }
}

#[safe_db_operation(retries = 5)]
async fn nested_with_retries(tx: &Tx, attempts: Arc<AtomicU32>) -> Result<(), Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    nested_conflict(tx).await
}

#[safe_db_operation]
async fn outer_calls_retrying_inner(tx: &Tx, attempts: Arc<AtomicU32>) -> Result<(), Error> {
    nested_with_retries(tx, attempts).await
}

#[tokio::test]
async fn only_the_outermost_operation_retries() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "nested_retry", 2).await {
        let attempts = Arc::new(AtomicU32::new(0));
        let err = outer_calls_retrying_inner(&t.db, Arc::clone(&attempts))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SerializationFailure, "{err}");
        // The inner operation ran once: it shares the outer transaction, which has no
        // retries, so the failure reaches the caller.
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        t.cleanup().await;
    }
}

#[safe_db_operation(retries = 1000, timeout = "300ms")]
async fn always_conflicts(tx: &Tx) -> Result<(), Error> {
    nested_conflict(tx).await
}

#[tokio::test]
async fn retries_stop_at_the_timeout() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "retry_timeout", 2).await {
        let started = std::time::Instant::now();
        let err = always_conflicts(&t.db).await.unwrap_err();
        // The last conflict is returned once the next back-off would overrun the deadline.
        assert!(
            matches!(
                err.kind(),
                ErrorKind::SerializationFailure | ErrorKind::Timeout
            ),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "{:?}",
            started.elapsed()
        );
        t.cleanup().await;
    }
}
