//! What a safe-db operation leaves on a pooled connection for the code after it, safe-db's
//! or not: nothing. MariaDB's statement bound, set with a `timeout` for the transaction, is
//! given back to the session's own value, after an operation that commits, one whose body
//! fails, one that times out, and a nested one with a timeout of its own.

use std::time::Duration;

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

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
