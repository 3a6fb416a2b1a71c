//! A lock wait timeout (1205) on a MariaDB server started with `innodb_rollback_on_timeout`
//! (`SAFE_DB_TEST_ROLLBACK_ON_TIMEOUT_URL`; `.ci/run` starts one on 3311): the server rolls
//! the *whole* transaction back and the session goes on in autocommit, so a body that
//! catches the error and goes on would commit its later statements one by one. safe-db asks
//! the server (`@@in_transaction`) after such an error and, the transaction gone, sends
//! nothing more and commits nothing: the operation fails with the 1205. Each case holds the
//! lock from a second session for real, and reads the table back.

use super::*;
use sea_orm::{DatabaseTransaction, TransactionTrait};
use std::sync::Mutex;

/// Waits for the row the other session holds, at most 1 s: fails with 1205.
const WAIT: &str =
    "SET STATEMENT innodb_lock_wait_timeout = 1 FOR UPDATE rot_lock SET n = n + 1 WHERE id = 1";

async fn insert(tx: &impl ConnectionTrait, id: i32) -> Result<(), Error> {
    let sql = format!("INSERT INTO rot_rows (id) VALUES ({id})");
    tx.execute_unprepared(&sql).await?;
    Ok(())
}

/// Takes the lock row in a transaction of another session, held until rolled back.
async fn hold(db: &DatabaseConnection) -> DatabaseTransaction {
    let holder = db.begin().await.expect("holder begins");
    exec(&holder, "UPDATE rot_lock SET n = n + 1 WHERE id = 1").await;
    holder
}

async fn tables(db: &DatabaseConnection) {
    exec(db, "DROP TABLE IF EXISTS rot_rows, rot_lock").await;
    exec(
        db,
        "CREATE TABLE rot_rows (id INT PRIMARY KEY) ENGINE=InnoDB",
    )
    .await;
    exec(
        db,
        "CREATE TABLE rot_lock (id INT PRIMARY KEY, n INT) ENGINE=InnoDB",
    )
    .await;
    exec(db, "INSERT INTO rot_lock VALUES (1, 0)").await;
}

async fn rows(db: &DatabaseConnection) -> Vec<i32> {
    ids(db, "SELECT id FROM rot_rows ORDER BY id").await
}

/// Writes, waits for the lock in vain, then (`write_after`) writes again: the second
/// write must not be sent, and the body returns `Ok` either way.
#[safe_db_operation]
async fn wait_then_go_on(tx: &Tx, write_after: bool) -> Result<(), Error> {
    insert(tx, 1).await?;
    let waited = run(tx, WAIT).await.expect_err("the lock is held");
    assert_eq!(waited.kind(), ErrorKind::Timeout, "{waited}");
    if write_after {
        let refused = insert(tx, 2).await.expect_err("the transaction is over");
        assert_eq!(refused.kind(), ErrorKind::Timeout, "{refused}");
    }
    Ok(())
}

/// The lock wait in a nested operation, which fails with it.
#[safe_db_operation]
async fn nested_wait(tx: &Tx) -> Result<(), Error> {
    insert(tx, 3).await?;
    run(tx, WAIT).await
}

/// Writes, calls [`nested_wait`], catches its failure and writes again.
#[safe_db_operation]
async fn catches_a_nested_wait(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    let inner = nested_wait(tx).await.expect_err("the lock is held");
    assert_eq!(inner.kind(), ErrorKind::Timeout, "{inner}");
    let _ = insert(tx, 2).await;
    Ok(())
}

/// The lock wait in a nested operation that stops waiting for it (a `timeout` around
/// the statement) and fails: the wait's answer, the 1205, is read before its savepoint's
/// rollback, after which the whole transaction is gone.
#[safe_db_operation]
async fn nested_abandoned_wait(tx: &Tx) -> Result<(), Error> {
    insert(tx, 3).await?;
    let waited = tokio::time::timeout(Duration::from_millis(200), run(tx, WAIT)).await;
    assert!(waited.is_err(), "the wait was cut off: {waited:?}");
    Err(Error::validation("gave up waiting"))
}

#[safe_db_operation]
async fn catches_a_nested_abandoned_wait(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await?;
    let inner = nested_abandoned_wait(tx).await.expect_err("it gave up");
    assert_eq!(inner.kind(), ErrorKind::Validation, "{inner}");
    let _ = insert(tx, 2).await;
    Ok(())
}

/// Writes, then drops a nested operation while it waits for the lock (a `timeout`
/// around the call), then writes again: the dropped level's rollback reads the wait's
/// answer first.
#[safe_db_operation]
async fn drops_a_nested_wait(tx: &Tx, after: Arc<Mutex<Option<ErrorKind>>>) -> Result<(), Error> {
    insert(tx, 1).await?;
    let cut = tokio::time::timeout(Duration::from_millis(200), nested_wait(tx)).await;
    assert!(cut.is_err(), "the nested operation was cut off: {cut:?}");
    *after.lock().unwrap() = insert(tx, 2).await.err().map(|e| e.kind());
    Ok(())
}

/// On a server with the default settings a lock wait timeout undoes its own statement
/// only: the savepoint's rollback, after asking, goes on, and the caller commits.
#[tokio::test]
async fn a_lock_wait_timeout_that_left_the_transaction_open_lets_the_caller_commit() {
    for t in TestDb::on(&[Backend::MySql], "rot_default", 4).await {
        let on = ids(&t.db, "SELECT @@innodb_rollback_on_timeout").await;
        if on != vec![0] {
            println!("skipped: the MariaDB server has innodb_rollback_on_timeout on");
            continue;
        }
        tables(&t.db).await;
        let holder = hold(&t.db).await;
        catches_a_nested_abandoned_wait(&t.db).await.unwrap();
        holder.rollback().await.unwrap();
        assert_eq!(
            rows(&t.db).await,
            vec![1, 2],
            "3 rolled back with its savepoint"
        );
        exec(&t.db, "DELETE FROM rot_rows").await;

        let holder = hold(&t.db).await;
        let after = Arc::default();
        drops_a_nested_wait(&t.db, Arc::clone(&after))
            .await
            .unwrap();
        holder.rollback().await.unwrap();
        assert_eq!(
            *after.lock().unwrap(),
            None,
            "the write after the dropped level"
        );
        assert_eq!(rows(&t.db).await, vec![1, 2]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_lock_wait_timeout_that_ended_the_transaction_commits_nothing() {
    let var = "SAFE_DB_TEST_ROLLBACK_ON_TIMEOUT_URL";
    let Some(url) = std::env::var(var).ok().filter(|u| !u.is_empty()) else {
        assert!(std::env::var("CI").is_err(), "CI is set but {var} is not");
        println!("skipped: {var} is not set");
        return;
    };
    let db = sea_orm::Database::connect(safe_db_test_support::pool_options(&url, 4))
        .await
        .expect("connect");
    let on = ids(&db, "SELECT @@innodb_rollback_on_timeout").await;
    assert_eq!(
        on,
        vec![1],
        "{var}: a server with innodb_rollback_on_timeout"
    );
    tables(&db).await;

    // The hazard, by hand: the row before the wait is rolled back by the server, the one
    // after it commits on its own.
    let holder = hold(&db).await;
    let txn = db.begin().await.unwrap();
    insert(&txn, 1).await.unwrap();
    assert!(txn.execute_unprepared(WAIT).await.is_err());
    insert(&txn, 2).await.unwrap();
    txn.commit().await.unwrap();
    holder.rollback().await.unwrap();
    assert_eq!(rows(&db).await, vec![2], "the server ended the transaction");
    exec(&db, "DELETE FROM rot_rows").await;

    // The body goes on after the error, with a write and without one: the operation
    // fails with the 1205, and nothing of it is in the table.
    for write_after in [true, false] {
        let holder = hold(&db).await;
        let err = wait_then_go_on(&db, write_after).await.unwrap_err();
        holder.rollback().await.unwrap();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert_eq!(
            rows(&db).await,
            Vec::<i32>::new(),
            "write after: {write_after}"
        );
    }

    // In a nested operation, propagated to a caller that catches it and goes on.
    let holder = hold(&db).await;
    let err = catches_a_nested_wait(&db).await.unwrap_err();
    holder.rollback().await.unwrap();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(rows(&db).await, Vec::<i32>::new());

    // Abandoned in a nested operation: the answer owed is read at its rollback.
    let holder = hold(&db).await;
    let err = catches_a_nested_abandoned_wait(&db).await.unwrap_err();
    holder.rollback().await.unwrap();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(rows(&db).await, Vec::<i32>::new());

    // A nested operation dropped while it waits: its rollback reads the 1205 and asks.
    let holder = hold(&db).await;
    let after = Arc::default();
    let err = drops_a_nested_wait(&db, Arc::clone(&after))
        .await
        .unwrap_err();
    holder.rollback().await.unwrap();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The write after it is refused with the 1205, not the `ROLLBACK TO`'s "SAVEPOINT
    // does not exist", which is no longer sent in the broken tree.
    assert_eq!(*after.lock().unwrap(), Some(ErrorKind::Timeout));
    assert_eq!(rows(&db).await, Vec::<i32>::new());

    // The pool serves plain code afterwards: a write commits.
    insert(&db, 9).await.unwrap();
    assert_eq!(rows(&db).await, vec![9]);
    exec(&db, "DROP TABLE rot_rows, rot_lock").await;
}
