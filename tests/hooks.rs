//! After-commit callbacks (`tx.on_commit`): exactly once after a real COMMIT, in order,
//! outside the transaction; never after a rollback of any kind.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, ids};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

/// What the callbacks saw, in the order they ran.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

async fn insert(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum End {
    Ok,
    Err,
    Panic,
    SlowForCancel,
}

#[safe_db_operation]
async fn register(tx: &Tx, id: i32, log: Log, end: End) -> Result<(), Error> {
    insert(tx, id).await?;
    let entry = log.clone();
    tx.on_commit(async move { entry.push(format!("committed {id}")) });
    match end {
        End::Ok => Ok(()),
        End::Err => Err(Error::validation("no")),
        End::Panic => panic!("body panicked"),
        End::SlowForCancel => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        }
    }
}

#[tokio::test]
async fn callbacks_run_once_after_commit_and_never_after_a_rollback() {
    for t in TestDb::all("hooks_basic", 2).await {
        let log = Log::default();
        register(&t.db, 1, log.clone(), End::Ok).await.unwrap();
        assert_eq!(log.entries(), ["committed 1"]);

        assert!(register(&t.db, 2, log.clone(), End::Err).await.is_err());
        let db = Arc::new(t.pool(1).await);
        let (db2, log2) = (Arc::clone(&db), log.clone());
        let panicked = tokio::spawn(async move { register(&*db2, 3, log2, End::Panic).await });
        assert!(panicked.await.unwrap_err().is_panic());
        let cancelled = tokio::time::timeout(
            Duration::from_millis(50),
            register(&*db, 4, log.clone(), End::SlowForCancel),
        )
        .await;
        assert!(cancelled.is_err());

        assert_eq!(log.entries(), ["committed 1"], "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, vec![1]);
        t.cleanup().await;
    }
}

#[safe_db_operation(timeout = "100ms")]
async fn register_too_slowly(tx: &Tx, log: Log) -> Result<(), Error> {
    insert(tx, 5).await?;
    tx.on_commit(async move { log.push("timed out but ran") });
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

#[safe_db_operation]
async fn note_for_missing_agent(tx: &Tx, log: Log) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO notes (id, agent_id) VALUES (1, 424242)")
        .await?;
    tx.on_commit(async move { log.push("failed commit but ran") });
    Ok(())
}

#[tokio::test]
async fn no_callback_after_a_timeout_or_a_failed_commit() {
    for t in TestDb::all("hooks_failed", 2).await {
        let log = Log::default();
        let err = register_too_slowly(&t.db, log.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        let err = note_for_missing_agent(&t.db, log.clone())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ForeignKeyViolation);
        assert_eq!(log.entries(), Vec::<String>::new(), "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn inner(tx: &Tx, id: i32, log: Log, fail: bool) -> Result<(), Error> {
    insert(tx, id).await?;
    tx.on_commit(async move { log.push(format!("inner {id}")) });
    if fail {
        return Err(Error::validation("inner fails"));
    }
    Ok(())
}

#[safe_db_operation]
async fn hangs(tx: &Tx, id: i32, log: Log) -> Result<(), Error> {
    insert(tx, id).await?;
    tx.on_commit(async move { log.push(format!("hung {id}")) });
    std::future::pending::<()>().await;
    Ok(())
}

#[safe_db_operation]
async fn outer(tx: &Tx, log: Log) -> Result<(), Error> {
    let first = log.clone();
    tx.on_commit(async move { first.push("outer first") });
    inner(tx, 1, log.clone(), false).await?;
    assert!(inner(tx, 2, log.clone(), true).await.is_err());
    // A callback registered in a savepoint that is dropped mid-way goes with it.
    let dropped = tokio::time::timeout(Duration::from_millis(50), hangs(tx, 3, log.clone())).await;
    assert!(dropped.is_err(), "{dropped:?}");
    let last = log.clone();
    tx.on_commit(async move { last.push("outer last") });
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_savepoint_drops_its_callbacks_and_the_others_run_in_order() {
    for t in TestDb::all("hooks_nested", 2).await {
        let log = Log::default();
        outer(&t.db, log.clone()).await.unwrap();
        assert_eq!(
            log.entries(),
            ["outer first", "inner 1", "outer last"],
            "{:?}",
            t.backend
        );
        assert_eq!(t.agent_ids().await, vec![1]);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn outer_fails_after_inner_registered(tx: &Tx, log: Log) -> Result<(), Error> {
    inner(tx, 1, log, false).await?;
    Err(Error::validation("outer fails"))
}

#[tokio::test]
async fn a_released_savepoint_callback_still_waits_for_the_outer_commit() {
    for t in TestDb::all("hooks_outer_fails", 2).await {
        let log = Log::default();
        assert!(
            outer_fails_after_inner_registered(&t.db, log.clone())
                .await
                .is_err()
        );
        assert_eq!(log.entries(), Vec::<String>::new());
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        t.cleanup().await;
    }
}

fn explode() {
    panic!("callback panicked");
}

#[safe_db_operation]
async fn register_with_bad_callbacks(tx: &Tx, log: Log) -> Result<(), Error> {
    insert(tx, 1).await?;
    let (a, b, c, d) = (log.clone(), log.clone(), log.clone(), log.clone());
    tx.on_commit(async move {
        a.push("first");
        Err::<(), _>("mail server down")
    });
    tx.on_commit(async move {
        b.push("second");
        explode();
    });
    tx.on_commit(async move { c.push("third") });
    // A block that only panics has the never type under edition 2024.
    tx.on_commit(async { panic!("callback panicked") });
    tx.on_commit(async move {
        d.push("fifth");
        panic!("callback panicked");
    });
    Ok(())
}

#[tokio::test]
async fn a_failing_or_panicking_callback_leaves_the_commit_and_the_next_callbacks() {
    for t in TestDb::all("hooks_bad", 2).await {
        let log = Log::default();
        register_with_bad_callbacks(&t.db, log.clone())
            .await
            .unwrap();
        assert_eq!(log.entries(), ["first", "second", "third", "fifth"]);
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// The callback runs outside the transaction: with a pool of one connection it can run
/// a new operation, which sees the committed row.
/// The pool, for work the callback does after the commit. Wrapped in a type of the
/// application's: a parameter typed as a connection is rejected at compile time, since
/// queries on it would run outside the transaction.
struct AfterCommit {
    db: Arc<DatabaseConnection>,
}

#[safe_db_operation]
async fn register_then_follow_up(tx: &Tx, after: AfterCommit, log: Log) -> Result<(), Error> {
    let db = after.db;
    insert(tx, 1).await?;
    tx.on_commit(async move {
        let seen = safe_db::transaction(&*db, async |tx: &Tx| {
            insert(tx, 2).await?;
            Ok::<_, Error>(ids(tx, "SELECT id FROM agents ORDER BY id").await)
        })
        .await;
        log.push(format!("{seen:?}"));
    });
    Ok(())
}

#[tokio::test]
async fn a_callback_may_start_a_new_operation() {
    for t in TestDb::all("hooks_follow_up", 1).await {
        let db = Arc::new(t.pool(1).await);
        let log = Log::default();
        register_then_follow_up(
            &*db,
            AfterCommit {
                db: Arc::clone(&db),
            },
            log.clone(),
        )
        .await
        .unwrap();
        assert_eq!(log.entries(), ["Ok([1, 2])"], "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, vec![1, 2]);
        t.cleanup().await;
    }
}

#[safe_db_operation(retries = 3)]
async fn conflicts_twice(tx: &Tx, attempts: Arc<AtomicU32>, log: Log) -> Result<(), Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    insert(tx, attempt as i32).await?;
    tx.on_commit(async move { log.push(format!("attempt {attempt}")) });
    if attempt < 3 {
        let sql = match tx.get_database_backend() {
            DbBackend::Postgres => {
                "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$"
            }
            _ => "SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'forced', MYSQL_ERRNO = 1213",
        };
        tx.execute_unprepared(sql).await?;
    }
    Ok(())
}

#[tokio::test]
async fn under_retries_only_the_attempt_that_committed_runs_its_callbacks() {
    // SQLite cannot raise a conflict on demand: this runs on the servers.
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "hooks_retry", 2).await {
        let (attempts, log) = (Arc::new(AtomicU32::new(0)), Log::default());
        conflicts_twice(&t.db, Arc::clone(&attempts), log.clone())
            .await
            .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(log.entries(), ["attempt 3"], "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, vec![3]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn the_closure_form_runs_callbacks_the_same_way() {
    for t in TestDb::all("hooks_closure", 2).await {
        let log = Log::default();
        let l = log.clone();
        safe_db::transaction(&t.db, async |tx: &Tx| {
            insert(tx, 1).await?;
            let l = l.clone();
            tx.on_commit(async move { l.push("closure committed") });
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let l = log.clone();
        let _ = safe_db::transaction(&t.db, async |tx: &Tx| {
            insert(tx, 2).await?;
            let l = l.clone();
            tx.on_commit(async move { l.push("closure rolled back") });
            Err::<(), _>(Error::validation("no"))
        })
        .await;
        assert_eq!(log.entries(), ["closure committed"]);
        assert_eq!(t.agent_ids().await, vec![1]);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn register_with_slow_callbacks(
    tx: &Tx,
    id: i32,
    log: Log,
    started: Arc<tokio::sync::Notify>,
) -> Result<(), Error> {
    insert(tx, id).await?;
    for n in 0..3 {
        let (entry, started) = (log.clone(), Arc::clone(&started));
        tx.on_commit(async move {
            started.notify_one();
            tokio::time::sleep(Duration::from_millis(100)).await;
            entry.push(format!("callback {n} of {id}"));
        });
    }
    Ok(())
}

#[tokio::test]
async fn callbacks_all_run_once_even_when_the_caller_goes_away_after_the_commit() {
    for t in TestDb::all("hooks_dropped", 2).await {
        let log = Log::default();
        let started = Arc::new(tokio::sync::Notify::new());
        // The caller gives up as soon as the first callback starts: after the COMMIT.
        tokio::select! {
            _ = register_with_slow_callbacks(&t.db, 1, log.clone(), Arc::clone(&started)) => {
                panic!("the callbacks take 300 ms; the caller left before")
            }
            () = started.notified() => {}
        }
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        // Run off the caller's path: waited for (up to 5 s), then a moment more, so that
        // a callback run twice would show.
        safe_db_test_support::eventually(Duration::from_secs(5), || async {
            log.entries().len() >= 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            log.entries(),
            ["callback 0 of 1", "callback 1 of 1", "callback 2 of 1"],
            "{:?}",
            t.backend
        );
        t.cleanup().await;
    }
}
