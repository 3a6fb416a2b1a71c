//! safe-db's own conditions carry a typed cause a caller can match on, on every database:
//! a refused statement names its keyword and why, a timeout its limit, a swallowed failure
//! its operation. Nothing refused is sent: the database is read back.

use std::time::Duration;

use safe_db::{Cause, Error, ErrorKind, Refusal, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use sea_orm::ConnectionTrait;

#[safe_db_operation]
async fn write_then(tx: &Tx, then: &str) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'kept?')")
        .await?;
    tx.execute_unprepared(then).await?;
    Ok(())
}

#[safe_db_operation(timeout = "100ms")]
async fn too_slow(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (2, 'late')")
        .await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(())
}

#[tokio::test]
async fn each_condition_safe_db_raises_has_a_typed_cause() {
    for t in TestDb::all("causes", 2).await {
        for (sql, keyword, reason) in [
            ("COMMIT", "COMMIT", Refusal::EndsTransaction),
            (
                "ROLLBACK TO SAVEPOINT x",
                "ROLLBACK TO",
                Refusal::ManagesSavepoint,
            ),
            ("SAVEPOINT x", "SAVEPOINT", Refusal::ManagesSavepoint),
        ] {
            let err = write_then(&t.db, sql).await.expect_err(sql);
            assert_eq!(
                err.cause(),
                Some(&Cause::Refused {
                    keyword: keyword.to_owned(),
                    reason
                }),
                "{:?}: {sql}: {err}",
                t.backend
            );
            assert_eq!(err.kind(), ErrorKind::Database);
            assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        }
        let err = too_slow(&t.db).await.expect_err("over its timeout");
        assert_eq!(
            err.cause(),
            Some(&Cause::TimedOut {
                operation: "too_slow",
                limit: Duration::from_millis(100)
            }),
            "{:?}: {err}",
            t.backend
        );
        assert_eq!(err.kind(), ErrorKind::Timeout);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        t.cleanup().await;
    }
}
