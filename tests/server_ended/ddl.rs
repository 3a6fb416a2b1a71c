//! Statements that commit implicitly (MariaDB's DDL) and temporary tables.

use super::*;

#[safe_db_operation]
async fn write_then_ddl_then_fail(tx: &Tx, ddl: String) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'before')").await?;
    let refused = run(tx, &ddl).await;
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'after')").await?;
    // The body goes on past the refused statement, then fails: nothing may remain.
    Err(match refused {
        Ok(()) => Error::validation("the statement ran"),
        Err(e) => e,
    })
}

#[tokio::test]
async fn ddl_inside_an_operation_never_commits_what_came_before() {
    // Refused everywhere: statements that end the transaction or break its savepoints,
    // alone or after another statement in the same string.
    const EVERYWHERE: [&str; 4] = ["COMMIT", "SELECT 1; COMMIT", "SAVEPOINT x", "ROLLBACK"];
    // DDL: refused on MariaDB, run and rolled back with the rest elsewhere.
    const DDL: [&str; 4] = [
        "CREATE TABLE extra (a INTEGER)",
        "DROP TABLE counters",
        "ALTER TABLE counters ADD COLUMN b INTEGER",
        "TRUNCATE TABLE counters",
    ];
    // MariaDB's own ways to commit implicitly.
    const MARIADB: [&str; 6] = [
        "SET @@session.autocommit = 0",
        "SET STATEMENT max_statement_time = 10 FOR CREATE TABLE extra (a INTEGER)",
        "EXECUTE IMMEDIATE 'COMMIT'",
        "/*M!999999 SELECT 1, */ CREATE TABLE extra (a INTEGER)",
        "IF 1 THEN COMMIT; END IF",
        "SET NAMES utf8mb4, autocommit = 0",
    ];
    for t in TestDb::all("ddl", 2).await {
        let mariadb: &[&str] = if t.backend == Backend::MySql {
            &MARIADB
        } else {
            &[]
        };
        for ddl in EVERYWHERE.iter().chain(&DDL).chain(mariadb) {
            if t.backend == Backend::Sqlite && ddl.starts_with("TRUNCATE") {
                continue; // SQLite has no TRUNCATE
            }
            let err = write_then_ddl_then_fail(&t.db, (*ddl).to_owned())
                .await
                .unwrap_err();
            assert_eq!(
                t.agent_ids().await,
                Vec::<i32>::new(),
                "{:?}: {ddl}: {err}",
                t.backend
            );
            let refused = err.to_string();
            if t.backend == Backend::MySql || EVERYWHERE.contains(ddl) {
                // Refused before it was sent, with the reason.
                assert!(
                    refused.contains("is refused inside a safe-db operation"),
                    "{:?}: {ddl}: {refused}",
                    t.backend
                );
            } else {
                // PostgreSQL and SQLite roll DDL back with the rest.
                assert_eq!(refused, "the statement ran");
            }
        }
        // The schema is untouched everywhere.
        exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 1)").await;
        let missing = t.db.execute_unprepared("SELECT a FROM extra").await;
        assert!(missing.is_err(), "{:?}: table extra exists", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn uses_a_temporary_table(tx: &Tx) -> Result<Vec<i32>, Error> {
    run(tx, "CREATE TEMPORARY TABLE scratch (a INTEGER)").await?;
    run(tx, "INSERT INTO scratch (a) VALUES (4), (2)").await?;
    run(
        tx,
        "INSERT INTO agents (id, name) SELECT a, CONCAT('t', a) FROM scratch",
    )
    .await?;
    run(tx, "DROP TEMPORARY TABLE scratch").await?;
    Ok(safe_db_test_support::ids(tx, "SELECT id FROM agents ORDER BY id").await)
}

#[tokio::test]
async fn temporary_tables_are_not_refused_on_mariadb() {
    for t in TestDb::on(&[Backend::MySql], "temporary", 2).await {
        assert_eq!(uses_a_temporary_table(&t.db).await.unwrap(), vec![2, 4]);
        assert_eq!(t.agent_ids().await, vec![2, 4]);
        t.cleanup().await;
    }
}
