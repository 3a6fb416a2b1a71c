//! Peers that hang rather than die: a proxy forwards a message to the real server and then
//! freezes the connection (the server carries the message out; its answer never comes
//! back). Every wait ends by its deadline plus the stated margin, the outcome reported is
//! the truth (read back from the server directly), and a connection whose state is unknown
//! is never reused.

use std::time::{Duration, Instant};

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::proxy::FaultProxy;
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DatabaseConnection};

/// What the issue allows past the deadline (the runtime's own margin is 200 ms).
const MARGIN: Duration = Duration::from_millis(250);

#[safe_db_operation(timeout = "1s", retries = 3)]
async fn insert_in_time(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation]
async fn insert(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation(timeout = "1s")]
async fn insert_then_fail(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Err(Error::new(ErrorKind::Validation, "the body gives up"))
}

/// The pool serves again after the frozen connection: a new operation commits for real.
async fn serves_again(t: &TestDb, db: &DatabaseConnection, id: i32) {
    let started = Instant::now();
    insert(db, id)
        .await
        .unwrap_or_else(|e| panic!("{:?}: the pool after a frozen connection: {e}", t.backend));
    assert!(
        t.agent_ids().await.contains(&id),
        "{:?}: the write after is committed",
        t.backend
    );
    // The frozen connection was closed, not waited for: the next caller got a new one.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}: the next caller waited {:?}",
        t.backend,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_a_frozen_connection_is_commit_unknown_by_the_deadline() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "frozen_commit", 1).await {
        let proxy = FaultProxy::start(&t.url).await;
        let db = t.pool_via(&proxy, 1).await;
        proxy.freeze_after("COMMIT");
        let started = Instant::now();
        let result = insert_in_time(&db, 1).await;
        let took = started.elapsed();
        assert_eq!(proxy.frozen(), 1, "{:?}", t.backend);
        let err = result.expect_err("the COMMIT's answer never came");
        assert_eq!(
            err.kind(),
            ErrorKind::CommitUnknown,
            "{:?}: {err}",
            t.backend
        );
        assert!(
            took <= Duration::from_secs(1) + MARGIN,
            "{:?}: the caller waited {took:?} for a 1 s operation",
            t.backend
        );
        // The server got the COMMIT: the row is there, written once (never re-run).
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        serves_again(&t, &db, 2).await;
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_on_a_frozen_connection_times_out_by_the_deadline() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "frozen_statement", 1).await {
        let proxy = FaultProxy::start(&t.url).await;
        let db = t.pool_via(&proxy, 1).await;
        proxy.freeze_after("INSERT INTO agents");
        let started = Instant::now();
        let result = insert_in_time(&db, 1).await;
        let took = started.elapsed();
        let err = result.expect_err("the statement's answer never came");
        assert_eq!(err.kind(), ErrorKind::Timeout, "{:?}: {err}", t.backend);
        assert!(
            took <= Duration::from_secs(1) + MARGIN,
            "{:?}: the caller waited {took:?} for a 1 s operation",
            t.backend
        );
        // The frozen connection is closed (within the 500 ms given to what it owes), and
        // the server rolls its transaction back: nothing of the `Err` is ever committed.
        let closed_by = Instant::now() + Duration::from_secs(3);
        while proxy.closed() == 0 && Instant::now() < closed_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            proxy.closed(),
            1,
            "{:?}: the frozen connection is closed",
            t.backend
        );
        serves_again(&t, &db, 2).await;
        assert_eq!(t.agent_ids().await, vec![2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_on_a_frozen_connection_is_bounded_and_the_connection_closed() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "frozen_rollback", 1).await {
        let proxy = FaultProxy::start(&t.url).await;
        let db = t.pool_via(&proxy, 1).await;
        proxy.freeze_after("ROLLBACK");
        let started = Instant::now();
        let result = insert_then_fail(&db, 1).await;
        let took = started.elapsed();
        let err = result.expect_err("the body failed");
        assert_eq!(err.kind(), ErrorKind::Validation, "{:?}: {err}", t.backend);
        assert!(
            took <= Duration::from_secs(1) + MARGIN,
            "{:?}: the caller waited {took:?} for a 1 s operation",
            t.backend
        );
        assert_eq!(proxy.frozen(), 1, "{:?}", t.backend);
        serves_again(&t, &db, 2).await;
        // The ROLLBACK never answered; the connection was closed and the server rolled
        // the transaction back with it.
        assert_eq!(t.agent_ids().await, vec![2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_timeout_a_frozen_commit_is_bounded_by_the_step_timeout() {
    safe_db::set_step_timeout(Duration::from_millis(1500));
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "frozen_step", 1).await {
        let proxy = FaultProxy::start(&t.url).await;
        let db = t.pool_via(&proxy, 1).await;
        proxy.freeze_after("COMMIT");
        let started = Instant::now();
        let err = insert(&db, 1)
            .await
            .expect_err("the COMMIT's answer never came");
        let took = started.elapsed();
        assert_eq!(
            err.kind(),
            ErrorKind::CommitUnknown,
            "{:?}: {err}",
            t.backend
        );
        assert!(
            took >= Duration::from_millis(1500) && took <= Duration::from_millis(1500) + MARGIN,
            "{:?}: took {took:?}",
            t.backend
        );
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        serves_again(&t, &db, 2).await;
        t.cleanup().await;
    }
}
