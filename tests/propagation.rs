//! Propagation (`requires_new`, `mandatory`, `durable`, `savepoint = false`), proven by
//! reading the database back, on SQLite always and on PostgreSQL and MariaDB when their
//! URLs are set. The compile-time half (what each option lets callers pass, and which
//! options contradict each other) is in tests/ui.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use safe_db::{Error, ErrorKind, Options, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, ids};
use sea_orm::{ConnectionTrait, Database};

#[safe_db_operation]
async fn add_agent(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'agent{id}')"
    ))
    .await?;
    Ok(())
}

/// The audit row that must survive its caller's rollback.
#[safe_db_operation(requires_new)]
async fn audit(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!("INSERT INTO counters (id, n) VALUES ({id}, 1)"))
        .await?;
    Ok(())
}

/// `requires_new`, bounded: on SQLite it waits for its caller's write lock.
#[safe_db_operation(requires_new, timeout = "500ms")]
async fn audit_bounded(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!("INSERT INTO counters (id, n) VALUES ({id}, 1)"))
        .await?;
    Ok(())
}

/// Writes, then audits, then fails: only the audit row may remain.
#[safe_db_operation]
async fn write_audit_fail(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await?;
    audit(tx, 100 + id).await?;
    Err(Error::validation("refused after auditing"))
}

/// Audits, reads, fails. (On SQLite a `requires_new` write must come before its caller
/// takes a lock: a `read_only` caller that has not read yet.)
#[safe_db_operation(read_only)]
async fn audit_read_fail(tx: &Tx, id: i32) -> Result<(), Error> {
    audit(tx, 100 + id).await?;
    tx.execute_unprepared("SELECT COUNT(*) FROM agents").await?;
    Err(Error::validation("refused after auditing"))
}

#[tokio::test]
async fn requires_new_survives_the_callers_rollback() {
    for t in TestDb::all("requires_new_survives", 5).await {
        let err = audit_read_fail(&t.db, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{:?}: {err}", t.backend);
        assert_eq!(
            ids(&t.db, "SELECT id FROM counters").await,
            vec![101],
            "{:?}",
            t.backend
        );
        if t.backend != Backend::Sqlite {
            let err = write_audit_fail(&t.db, 2).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Validation, "{:?}: {err}", t.backend);
            assert_eq!(
                ids(&t.db, "SELECT id FROM counters ORDER BY id").await,
                vec![101, 102],
                "{:?}: the audit row is committed",
                t.backend
            );
            assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        }
        t.cleanup().await;
    }
}

/// SQLite has one writer: a `requires_new` write under a writing caller fails (here at
/// its timeout), never hangs, and the caller goes on.
#[tokio::test]
async fn on_sqlite_requires_new_cannot_write_under_a_writing_caller() {
    let t = TestDb::sqlite("requires_new_sqlite_writer", 5).await;
    let started = Instant::now();
    let inner = safe_db::transaction(&t.db, async |tx: &Tx| {
        add_agent(tx, 1).await?;
        let inner = audit_bounded(tx, 101).await;
        Ok::<_, Error>(inner)
    })
    .await
    .unwrap();
    let err = inner.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(t.agent_ids().await, vec![1], "the caller committed");
    assert!(ids(&t.db, "SELECT id FROM counters").await.is_empty());
    t.cleanup().await;
}

#[tokio::test]
async fn requires_new_is_visible_to_others_before_the_caller_ends() {
    for t in TestDb::all("requires_new_visible", 5).await {
        let other = t.pool(1).await;
        let options = if t.backend == Backend::Sqlite {
            Options::new().read_only()
        } else {
            Options::new()
        };
        let seen = options
            .run(&t.db, async |tx: &Tx| {
                if t.backend != Backend::Sqlite {
                    add_agent(tx, 1).await?;
                }
                audit(tx, 101).await?;
                // Committed already: another connection sees it while the caller is open.
                let seen = ids(&other, "SELECT id FROM counters").await;
                let mine = ids(tx, "SELECT id FROM agents").await;
                Ok::<_, Error>((seen, mine))
            })
            .await
            .unwrap();
        assert_eq!(seen.0, vec![101], "{:?}", t.backend);
        assert!(
            ids(&other, "SELECT id FROM agents").await.len() == seen.1.len(),
            "{:?}",
            t.backend
        );
        other.close().await.unwrap();
        t.cleanup().await;
    }
}

/// The classic trap: a pool of one, held by the caller. The operation fails with
/// `PoolExhausted` within the pool's acquire timeout, and the caller still commits.
#[tokio::test]
async fn requires_new_on_an_exhausted_pool_fails_within_the_acquire_timeout() {
    for t in TestDb::all("requires_new_exhausted", 1).await {
        let mut options = t.options(1);
        options.acquire_timeout(Duration::from_millis(700));
        let pool = Database::connect(options).await.unwrap();
        let started = Instant::now();
        let inner = Options::new()
            .read_only()
            .run(&pool, async |tx: &Tx| {
                let inner = audit(tx, 101).await;
                tx.execute_unprepared("SELECT 1").await?;
                Ok::<_, Error>(inner)
            })
            .await
            .unwrap();
        let err = inner.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::PoolExhausted,
            "{:?}: {err}",
            t.backend
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}: {:?}",
            t.backend,
            started.elapsed()
        );
        // The connection went back: the pool of one serves the next caller.
        add_agent(&pool, 1).await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        assert!(ids(&t.db, "SELECT id FROM counters").await.is_empty());
        pool.close().await.unwrap();
        t.cleanup().await;
    }
}

#[safe_db_operation(requires_new)]
async fn audit_then_notify(tx: &Tx, id: i32, ran: Arc<AtomicBool>) -> Result<(), Error> {
    tx.execute_unprepared(&format!("INSERT INTO counters (id, n) VALUES ({id}, 1)"))
        .await?;
    tx.on_commit(async move { ran.store(true, Ordering::SeqCst) });
    Ok(())
}

#[tokio::test]
async fn requires_new_runs_its_callbacks_after_its_own_commit() {
    for t in TestDb::all("requires_new_callbacks", 5).await {
        let ran = Arc::new(AtomicBool::new(false));
        let during = Options::new()
            .read_only()
            .run(&t.db, async |tx: &Tx| {
                audit_then_notify(tx, 101, Arc::clone(&ran)).await?;
                // Before the caller ends: the callback ran after the audit's commit.
                let during = ran.load(Ordering::SeqCst);
                Err::<(), _>(Error::validation(format!("rolled back; during: {during}")))
            })
            .await
            .unwrap_err();
        assert!(during.to_string().contains("during: true"), "{during}");
        assert_eq!(ids(&t.db, "SELECT id FROM counters").await, vec![101]);
        t.cleanup().await;
    }
}

/// Joins its caller's transaction: no savepoint, and the caller's depth.
#[safe_db_operation(savepoint = false)]
async fn joined_add(tx: &Tx, id: i32, depth: Arc<std::sync::Mutex<Vec<u32>>>) -> Result<(), Error> {
    depth.lock().unwrap().push(tx.depth());
    add_agent(tx, id).await
}

/// Writes in its caller's transaction, then fails.
#[safe_db_operation(savepoint = false)]
async fn joined_add_then_fail(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await?;
    Err(Error::validation(
        "failed after writing, without a savepoint",
    ))
}

#[tokio::test]
async fn savepoint_false_joins_the_callers_transaction() {
    for t in TestDb::all("savepoint_false_joins", 5).await {
        let depths = Arc::new(std::sync::Mutex::new(Vec::new()));
        let joined_before = safe_db::Stats::snapshot().joined;
        safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            joined_add(tx, 2, Arc::clone(&depths)).await
        })
        .await
        .unwrap();
        // Counted as joined, not as committed: it commits with its caller.
        assert!(safe_db::Stats::snapshot().joined > joined_before);
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        // Called with a connection it begins its own transaction, at depth 0 too.
        joined_add(&t.db, 3, Arc::clone(&depths)).await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 2, 3], "{:?}", t.backend);
        assert_eq!(*depths.lock().unwrap(), vec![0, 0], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_swallowed_savepoint_false_failure_commits_nothing() {
    for t in TestDb::all("savepoint_false_swallowed", 5).await {
        let later = Arc::new(std::sync::Mutex::new(None));
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            // A failure with a write behind it, swallowed…
            let _ = joined_add_then_fail(tx, 2).await;
            // …and a later statement: refused.
            *later.lock().unwrap() = Some(add_agent(tx, 3).await.is_err());
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("joined_add_then_fail"),
            "{:?}: {err}",
            t.backend
        );
        assert_eq!(*later.lock().unwrap(), Some(true), "{:?}", t.backend);
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);

        // A database error (a unique violation) swallowed the same way.
        add_agent(&t.db, 9).await.unwrap();
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            let dup = joined_add(tx, 9, Default::default()).await.unwrap_err();
            assert_eq!(dup.kind(), ErrorKind::UniqueViolation);
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("joined_add"),
            "{:?}: {err}",
            t.backend
        );
        assert_eq!(t.agent_ids().await, vec![9], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// A nested caller (a savepoint) that swallows a `savepoint = false` failure.
#[safe_db_operation]
async fn middle(tx: &Tx) -> Result<(), Error> {
    add_agent(tx, 2).await?;
    let _ = joined_add_then_fail(tx, 3).await;
    Ok(())
}

/// Only the level that was joined is doomed: its own caller may handle that and commit.
#[tokio::test]
async fn savepoint_false_dooms_only_the_level_it_joined() {
    for t in TestDb::all("savepoint_false_level", 5).await {
        safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            let err = middle(tx).await.unwrap_err();
            assert!(err.to_string().contains("joined_add_then_fail"), "{err}");
            add_agent(tx, 4).await
        })
        .await
        .unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 4], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(savepoint = false)]
async fn joined_add_then_wait(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

/// Dropped half-way by the caller's own `select!`, it dooms the caller too.
#[tokio::test]
async fn a_cancelled_savepoint_false_operation_commits_nothing() {
    for t in TestDb::all("savepoint_false_cancelled", 5).await {
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            tokio::select! {
                _ = joined_add_then_wait(tx, 2) => unreachable!("it waits 5 s"),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("joined_add_then_wait"),
            "{:?}: {err}",
            t.backend
        );
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(mandatory)]
async fn mandatory_add(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await
}

#[safe_db_operation(mandatory, savepoint = false)]
async fn mandatory_joined_add(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await
}

#[tokio::test]
async fn mandatory_runs_inside_the_callers_transaction() {
    for t in TestDb::all("mandatory", 5).await {
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            mandatory_add(tx, 1).await?;
            mandatory_joined_add(tx, 2).await?;
            // Its savepoint: a failure of its own rolls back only its own work.
            assert_eq!(
                mandatory_add(tx, 1).await.unwrap_err().kind(),
                ErrorKind::UniqueViolation
            );
            Err::<(), _>(Error::validation("the caller rolls back"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        safe_db::transaction(&t.db, async |tx: &Tx| {
            mandatory_add(tx, 1).await?;
            mandatory_joined_add(tx, 2).await
        })
        .await
        .unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(durable, retries = 2)]
async fn durable_add(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await
}

#[tokio::test]
async fn durable_ok_means_committed() {
    for t in TestDb::all("durable", 5).await {
        let other = t.pool(1).await;
        durable_add(&t.db, 1).await.unwrap();
        assert_eq!(ids(&other, "SELECT id FROM agents").await, vec![1]);
        let db = safe_db::Db::new(t.db.clone(), None);
        durable_add(&db, 2).await.unwrap();
        assert_eq!(
            ids(&other, "SELECT id FROM agents ORDER BY id").await,
            vec![1, 2]
        );
        other.close().await.unwrap();
        t.cleanup().await;
    }
}

/// The closure form: `Options::requires_new` and `Options::savepoint(false)`.
#[tokio::test]
async fn the_closure_form_has_the_same_propagation() {
    for t in TestDb::all("propagation_closures", 5).await {
        let caller = if t.backend == Backend::Sqlite {
            Options::new().read_only()
        } else {
            Options::new()
        };
        let err = caller
            .run(&t.db, async |tx: &Tx| {
                Options::new()
                    .requires_new()
                    .run(tx, async |own: &Tx| {
                        assert_eq!(own.depth(), 0);
                        own.execute_unprepared("INSERT INTO counters (id, n) VALUES (1, 1)")
                            .await
                    })
                    .await?;
                Err::<(), _>(Error::validation("the caller rolls back"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(ids(&t.db, "SELECT id FROM counters").await, vec![1]);

        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            let _ = Options::new()
                .savepoint(false)
                .run(tx, async |joined: &Tx| {
                    assert_eq!(joined.depth(), 0);
                    add_agent(joined, 2).await?;
                    Err::<(), _>(Error::validation("fails without a savepoint"))
                })
                .await;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("savepoint = false"), "{err}");
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(savepoint = false)]
async fn joined_add_then_panic(tx: &Tx, id: i32) -> Result<(), Error> {
    add_agent(tx, id).await?;
    panic!("the joined body panicked after writing");
}

/// A panic in a joined operation, caught by its caller, still leaves nothing committed;
/// and a `requires_new` operation is refused in the doomed transaction too.
#[tokio::test]
async fn a_caught_savepoint_false_panic_commits_nothing() {
    use futures_util::FutureExt;
    for t in TestDb::all("savepoint_false_panic", 5).await {
        let audited = Arc::new(std::sync::Mutex::new(None));
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            let caught = std::panic::AssertUnwindSafe(joined_add_then_panic(tx, 2))
                .catch_unwind()
                .await;
            assert!(caught.is_err());
            *audited.lock().unwrap() = Some(audit(tx, 101).await.map_err(|e| e.to_string()));
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("joined_add_then_panic"), "{err}");
        let audited = audited.lock().unwrap().clone().unwrap();
        assert!(
            audited
                .as_ref()
                .is_err_and(|e| e.contains("joined_add_then_panic")),
            "{:?}: {audited:?}",
            t.backend
        );
        assert!(t.agent_ids().await.is_empty(), "{:?}", t.backend);
        assert!(ids(&t.db, "SELECT id FROM counters").await.is_empty());
        t.cleanup().await;
    }
}

/// In the closure form, `savepoint(false)` with `read_only` keeps its savepoint: the
/// write is refused, and the failure rolls back only the operation's own work.
#[tokio::test]
async fn closure_form_savepoint_false_with_read_only_keeps_its_savepoint() {
    for t in TestDb::on(
        &[Backend::Postgres, Backend::MySql],
        "savepoint_false_ro",
        5,
    )
    .await
    {
        safe_db::transaction(&t.db, async |tx: &Tx| {
            add_agent(tx, 1).await?;
            let refused = Options::new()
                .savepoint(false)
                .read_only()
                .run(tx, async |inner: &Tx| {
                    assert_eq!(inner.depth(), 1, "a savepoint of its own");
                    add_agent(inner, 2).await
                })
                .await
                .unwrap_err();
            assert_eq!(refused.kind(), ErrorKind::ReadOnly, "{refused}");
            add_agent(tx, 3).await
        })
        .await
        .unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 3], "{:?}", t.backend);
        t.cleanup().await;
    }
}
