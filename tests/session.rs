//! What a safe-db operation leaves on a pooled connection for the code after it, safe-db's
//! or not: nothing. MariaDB's statement bound, set with a `timeout` for the transaction, is
//! given back to the session's own value, after an operation that commits, one whose body
//! fails, one that times out, and a nested one with a timeout of its own. A transaction
//! written by hand with SeaORM on the same connection begins and commits for real after
//! every way an operation can end (sqlx, which counts the transactions safe-db begins on
//! PostgreSQL, counts none by then).

use std::time::Duration;

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

#[safe_db_operation(timeout = "2s")]
async fn bounded(tx: &Tx, fail: bool) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'a')")
        .await?;
    if fail {
        return Err(Error::validation("the body fails"));
    }
    tx.execute_unprepared("DELETE FROM agents").await?;
    Ok(())
}

#[safe_db_operation(timeout = "100ms")]
async fn overruns(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("SELECT 1").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[safe_db_operation(timeout = "1s")]
async fn inner(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("SELECT 1").await?;
    Ok(())
}

#[safe_db_operation]
async fn outer_sees(tx: &Tx) -> Result<f64, Error> {
    inner(tx).await?;
    session_bound(tx).await
}

async fn session_bound(db: &impl ConnectionTrait) -> Result<f64, Error> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT CAST(@@max_statement_time AS DOUBLE)",
        ))
        .await?
        .expect("a row");
    Ok(row.try_get_by_index(0)?)
}

async fn own_bound(db: &DatabaseConnection) -> f64 {
    session_bound(db).await.unwrap()
}

#[tokio::test]
async fn the_sessions_own_statement_bound_is_given_back() {
    for t in TestDb::on(&[Backend::MySql], "session_bound", 1).await {
        // A pool of one: every operation below takes the connection this was set on.
        t.db.execute_unprepared("SET SESSION max_statement_time = 7")
            .await
            .unwrap();
        assert_eq!(own_bound(&t.db).await, 7.0);
        bounded(&t.db, false).await.unwrap();
        assert_eq!(own_bound(&t.db).await, 7.0, "after a commit");
        bounded(&t.db, true).await.unwrap_err();
        assert_eq!(own_bound(&t.db).await, 7.0, "after a failed body");
        overruns(&t.db).await.unwrap_err();
        // The timed-out one is rolled back off the caller's path: give it that moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(own_bound(&t.db).await, 7.0, "after a timeout");
        // Inside an operation without a timeout, after a nested one with its own.
        assert_eq!(
            outer_sees(&t.db).await.unwrap(),
            7.0,
            "inside, after a nested one"
        );
        assert_eq!(own_bound(&t.db).await, 7.0, "after all");
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn write_then(tx: &Tx, id: i32, fail: bool) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'op{id}')"
    ))
    .await?;
    if fail {
        return Err(Error::validation("the body fails"));
    }
    Ok(())
}

/// Refused at COMMIT: its foreign key is checked then.
#[safe_db_operation]
async fn orphan(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO children (id, parent) VALUES (1, 999)")
        .await?;
    Ok(())
}

/// Still waiting for the server when its caller gives up.
#[safe_db_operation]
async fn waits(tx: &Tx) -> Result<(), Error> {
    let sql = match tx.get_database_backend() {
        DbBackend::Postgres => "SELECT pg_sleep(1)",
        _ => "SELECT SLEEP(1)",
    };
    tx.execute_unprepared(sql).await?;
    Ok(())
}

/// A transaction by hand on the pool (of one connection): it must begin, not find itself
/// inside one, and commit.
async fn hand_written_commits(t: &TestDb, id: i32, after: &str) {
    let txn =
        t.db.begin()
            .await
            .unwrap_or_else(|e| panic!("BEGIN {after}: {e}"));
    txn.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'hand{id}')"
    ))
    .await
    .unwrap_or_else(|e| panic!("INSERT {after}: {e}"));
    txn.commit()
        .await
        .unwrap_or_else(|e| panic!("COMMIT {after}: {e}"));
    assert!(
        t.agent_ids().await.contains(&id),
        "{:?}: {after}",
        t.backend
    );
    if t.backend == Backend::Postgres {
        let conn = t.db.get_postgres_connection_pool().acquire().await.unwrap();
        assert!(
            !sea_orm::sqlx::Connection::is_in_transaction(&*conn),
            "sqlx counts a transaction {after}"
        );
    }
}

#[tokio::test]
async fn a_transaction_by_hand_on_the_same_connection_begins_after_every_end() {
    for t in TestDb::on(
        &[Backend::Sqlite, Backend::Postgres, Backend::MySql],
        "session_hand",
        1,
    )
    .await
    {
        write_then(&t.db, 1, false).await.unwrap();
        hand_written_commits(&t, 101, "after a commit").await;
        write_then(&t.db, 2, true).await.unwrap_err();
        hand_written_commits(&t, 102, "after a failed body").await;
        // A COMMIT refused for a foreign key checked then (MariaDB has no deferred
        // constraints: its COMMIT is refused only by a Galera certification,
        // tests/galera).
        if t.backend != Backend::MySql {
            t.db.execute_unprepared(
                "CREATE TABLE parents (id INT PRIMARY KEY); \
                 CREATE TABLE children (id INT, parent INT REFERENCES parents (id) \
                 DEFERRABLE INITIALLY DEFERRED)",
            )
            .await
            .unwrap();
            let refused = orphan(&t.db).await.unwrap_err();
            assert!(
                refused.to_string().to_lowercase().contains("foreign key"),
                "{:?}: {refused}",
                t.backend
            );
            hand_written_commits(&t, 103, "after a refused COMMIT").await;
            let orphans = safe_db_test_support::ids(&t.db, "SELECT id FROM children").await;
            assert!(orphans.is_empty(), "{:?}", t.backend);
        }
        if t.backend != Backend::Sqlite {
            let cut = tokio::time::timeout(Duration::from_millis(100), waits(&t.db)).await;
            assert!(cut.is_err(), "the caller gave up");
            // Rolled back off the caller's path: the pool's one connection comes back.
            hand_written_commits(&t, 104, "after a cancelled operation").await;
        }
        // Nothing of an operation that did not commit.
        assert!(!t.agent_ids().await.contains(&2), "{:?}", t.backend);
        t.cleanup().await;
    }
}
