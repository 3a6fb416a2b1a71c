//! safe-db's own conditions carry a typed cause a caller can match on, on every database:
//! a refused statement names its keyword and why, a timeout its limit, a swallowed failure
//! its operation. Nothing refused is sent: the database is read back.

use std::time::Duration;

use safe_db::{Cause, Error, ErrorKind, Refusal, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb};
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

/// A hand-written COMMIT hidden where a lexer that does not read SQL as the server does
/// would miss it: MariaDB's `1--1` (no comment without a space after `--`), PostgreSQL's
/// typed literal `name '\'` (a standard string, not `E'…'`). Refused before it is sent, so
/// the operation's `Err` leaves nothing behind; the same text without the COMMIT runs, as
/// the server reads it.
#[tokio::test]
async fn a_commit_hidden_behind_the_servers_own_lexing_is_refused() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "hidden_commit", 2).await {
        let (hidden, plain, expected) = match t.backend {
            Backend::MySql => ("SELECT 1--1; COMMIT", "SELECT 1--1 AS x", 2),
            _ => (
                "SELECT name'\\'; COMMIT; SELECT '--'",
                "SELECT length(name'\\') AS x",
                1,
            ),
        };
        let err = write_then(&t.db, hidden).await.expect_err(hidden);
        assert!(
            matches!(err.cause(), Some(Cause::Refused { keyword, .. }) if keyword == "COMMIT"),
            "{:?}: {err}",
            t.backend
        );
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        // The server reads the text as the refusal did: one statement, the arithmetic or
        // the backslash as code and text.
        let row =
            t.db.query_one_raw(sea_orm::Statement::from_string(
                t.db.get_database_backend(),
                plain,
            ))
            .await
            .unwrap()
            .unwrap();
        let x: i64 = row
            .try_get_by_index::<i64>(0)
            .or_else(|_| row.try_get_by_index::<i32>(0).map(i64::from))
            .unwrap();
        assert_eq!(x, expected, "{:?}: {plain}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(timeout = "5s")]
async fn run_in_time(tx: &Tx, sql: &str) -> Result<Vec<i64>, Error> {
    let rows = tx
        .query_all_raw(sea_orm::Statement::from_string(
            tx.get_database_backend(),
            sql,
        ))
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            row.try_get_by_index::<i64>(0)
                .or_else(|_| row.try_get_by_index::<i32>(0).map(i64::from))
                .unwrap()
        })
        .collect())
}

#[safe_db_operation(timeout = "5s")]
async fn execute_in_time(tx: &Tx, sql: &str) -> Result<(), Error> {
    tx.execute_unprepared(sql).await?;
    Ok(())
}

/// safe-db never changes what a statement means or stores: with a `timeout` on MariaDB
/// (where it used to rewrite each statement to carry the server-side bound), the texts
/// that rewrite broke mean what they mean without it. A block comment holding an UPDATE
/// stays a comment (the bound once closed it early and the UPDATE ran); a value holding
/// `;` and a line break after `5--3` is stored as written.
#[tokio::test]
async fn with_a_timeout_a_statement_means_and_stores_what_it_says() {
    for t in TestDb::on(&[Backend::MySql], "means_what_it_says", 2).await {
        t.db.execute_unprepared("CREATE TABLE said (id INT PRIMARY KEY, v INT, body TEXT)")
            .await
            .unwrap();
        t.db.execute_unprepared("INSERT INTO said (id, v) VALUES (1, 1)")
            .await
            .unwrap();
        let select = "SELECT 1--1 AS x UNION /* UPDATE said SET v = 666 WHERE id = 1; */ SELECT 5";
        let with_timeout = run_in_time(&t.db, select).await.unwrap();
        assert_eq!(
            with_timeout,
            vec![2, 5],
            "1--1 is 1 - -1, the comment a comment"
        );
        let v = safe_db_test_support::ids(&t.db, "SELECT v FROM said WHERE id = 1").await;
        assert_eq!(v, vec![1], "the commented-out UPDATE never ran");
        let insert = "INSERT INTO said (id, v, body) VALUES (5--3, 0, 'line one\\n; SELECT 2')";
        execute_in_time(&t.db, insert).await.unwrap();
        let row =
            t.db.query_one_raw(sea_orm::Statement::from_string(
                t.db.get_database_backend(),
                "SELECT body FROM said WHERE id = 8",
            ))
            .await
            .unwrap()
            .expect("the row 5 - -3 = 8");
        let body: String = row.try_get_by_index(0).unwrap();
        assert_eq!(body, "line one\n; SELECT 2", "stored as written");
        t.cleanup().await;
    }
}
