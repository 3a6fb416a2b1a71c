//! The same mistake gets the same `ErrorKind` on SQLite, PostgreSQL and MariaDB: each
//! common mistake is really made on each database, inside an operation, and the
//! operation's error is classified. Where a database cannot make a mistake the way the
//! others do, the comment says what is done instead.

use std::sync::Arc;

use safe_db::{Error, ErrorKind, Options, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, exec};
use sea_orm::ConnectionTrait;
use tokio::sync::Barrier;

async fn run(tx: &Tx, sql: &str) -> Result<(), Error> {
    tx.execute_unprepared(sql).await?;
    Ok(())
}

/// Runs `sql` in an operation on `db` and returns its error's kind; the operation must
/// fail and leave nothing behind.
async fn kind_of(t: &TestDb, sql: &str) -> ErrorKind {
    let result = Options::new()
        .run(&t.db, async |tx: &Tx| {
            run(tx, "INSERT INTO agents (id, name) VALUES (900, 'marker')").await?;
            run(tx, sql).await
        })
        .await;
    let err = result.expect_err(sql);
    assert_eq!(
        t.agent_ids().await,
        Vec::<i32>::new(),
        "{:?}: {sql}",
        t.backend
    );
    err.kind()
}

fn typed_table(backend: Backend) -> &'static str {
    match backend {
        // SQLite enforces neither lengths nor ranges by type, and converts text to
        // numbers where it can: a STRICT table with the same limits written as checks
        // makes the same mistakes mistakes there too.
        Backend::Sqlite => {
            "CREATE TABLE typed (id INTEGER PRIMARY KEY, \
             small INTEGER CHECK (small BETWEEN -32768 AND 32767), \
             code TEXT CHECK (length(code) <= 5), \
             qty INTEGER NOT NULL DEFAULT 0 CHECK (qty >= 0)) STRICT"
        }
        _ => {
            "CREATE TABLE typed (id INTEGER PRIMARY KEY, small SMALLINT, code VARCHAR(5), \
             qty INTEGER NOT NULL DEFAULT 0 CHECK (qty >= 0))"
        }
    }
}

#[tokio::test]
async fn each_common_mistake_has_the_same_kind_on_every_database() {
    use ErrorKind::*;
    for t in TestDb::all("mistakes", 2).await {
        exec(&t.db, typed_table(t.backend)).await;
        exec(&t.db, "INSERT INTO agents (id, name) VALUES (1, 'taken')").await;
        exec(&t.db, "DELETE FROM agents").await;
        let cases: &[(&str, ErrorKind, &str)] = &[
            (
                "unique",
                UniqueViolation,
                "INSERT INTO agents (id, name) VALUES (1, 'twin'), (2, 'twin')",
            ),
            // Deferred on PostgreSQL and SQLite: raised by the COMMIT.
            (
                "foreign key",
                ForeignKeyViolation,
                "INSERT INTO notes (id, agent_id) VALUES (1, 999)",
            ),
            (
                "not null",
                Validation,
                "INSERT INTO typed (id, qty) VALUES (1, NULL)",
            ),
            (
                "check",
                Validation,
                "INSERT INTO typed (id, qty) VALUES (1, -1)",
            ),
            (
                "too long",
                Validation,
                "INSERT INTO typed (id, code) VALUES (1, 'toolong')",
            ),
            (
                "out of range",
                Validation,
                "INSERT INTO typed (id, small) VALUES (1, 70000)",
            ),
            (
                "bad number",
                Validation,
                "INSERT INTO typed (id, qty) VALUES (1, 'abc')",
            ),
            // SQLite's 1/0 is NULL, which the NOT NULL column refuses.
            (
                "division by zero",
                Validation,
                "INSERT INTO typed (id, qty) VALUES (1, 1/0)",
            ),
        ];
        for (mistake, expected, sql) in cases {
            let kind = kind_of(&t, sql).await;
            assert_eq!(kind, *expected, "{:?}: {mistake}: {sql}", t.backend);
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_write_in_a_read_only_transaction_is_read_only_everywhere() {
    for t in TestDb::all("read_only_kind", 2).await {
        let db = match t.backend {
            // safe-db's read_only does not stop SQLite writes; a database opened
            // read-only does, with SQLITE_READONLY.
            Backend::Sqlite => {
                let url = t.url.replace("mode=rwc", "mode=ro");
                sea_orm::Database::connect(safe_db_test_support::pool_options(&url, 1))
                    .await
                    .unwrap()
            }
            _ => t.pool(1).await,
        };
        let result: Result<(), Error> = Options::new()
            .read_only()
            .run(&db, async |tx: &Tx| {
                run(tx, "INSERT INTO agents (id, name) VALUES (1, 'no')").await
            })
            .await;
        assert_eq!(
            result.unwrap_err().kind(),
            ErrorKind::ReadOnly,
            "{:?}",
            t.backend
        );
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        t.cleanup().await;
    }
}

/// Holds a lock on counter 1 until told to let go.
#[safe_db_operation]
async fn hold_lock(tx: &Tx, held: Arc<Barrier>, done: Arc<Barrier>) -> Result<(), Error> {
    run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1").await?;
    held.wait().await;
    done.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_that_runs_out_is_a_timeout_on_the_servers() {
    // SQLite: a writer that waits past busy_timeout gets SQLITE_BUSY, which is its only
    // way to report a conflict, so it is a retryable SerializationFailure there.
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "lock_wait", 2).await {
        exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 0)").await;
        let db = Arc::new(t.pool(2).await);
        let (held, done) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (d, h, o) = (Arc::clone(&db), Arc::clone(&held), Arc::clone(&done));
        let holder = tokio::spawn(async move { hold_lock(&*d, h, o).await });
        held.wait().await;
        // A short lock wait, for this transaction or statement only.
        let update = "UPDATE counters SET n = n + 10 WHERE id = 1";
        let result: Result<(), Error> = Options::new()
            .run(&*db, async |tx: &Tx| match tx.get_database_backend() {
                sea_orm::DbBackend::MySql => {
                    let sql = format!("SET STATEMENT innodb_lock_wait_timeout = 1 FOR {update}");
                    run(tx, &sql).await
                }
                _ => {
                    run(tx, "SET LOCAL lock_timeout = '200ms'").await?;
                    run(tx, update).await
                }
            })
            .await;
        done.wait().await;
        holder.await.unwrap().unwrap();
        assert_eq!(
            result.unwrap_err().kind(),
            ErrorKind::Timeout,
            "{:?}",
            t.backend
        );
        assert_eq!(
            safe_db_test_support::ids(&t.db, "SELECT n FROM counters").await,
            vec![1]
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_serialization_race_is_a_serialization_failure_on_the_servers() {
    // A repeatable-read transaction updates a row that another one changed and committed
    // since its snapshot: PostgreSQL refuses it (40001); MariaDB does under
    // innodb_snapshot_isolation (1020, the default from 11.6; off before, when it
    // silently updates the newer row). SQLite serializes writers at BEGIN: no such race.
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "serialization", 2).await {
        exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 0)").await;
        let db = Arc::new(t.pool(1).await);
        if t.backend == Backend::MySql {
            // The pool's one connection, for the rest of the test.
            exec(&*db, "SET SESSION innodb_snapshot_isolation = ON").await;
        }
        let (read, written) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let (r, w) = (Arc::clone(&read), Arc::clone(&written));
        let other = t.pool(1).await;
        let writer = tokio::spawn(async move {
            r.wait().await;
            exec(&other, "UPDATE counters SET n = 10 WHERE id = 1").await;
            w.wait().await;
        });
        let result: Result<(), Error> = Options::new()
            .isolation(safe_db::Isolation::RepeatableRead)
            .run(&*db, async |tx: &Tx| {
                safe_db_test_support::ids(tx, "SELECT n FROM counters").await;
                read.wait().await;
                written.wait().await;
                run(tx, "UPDATE counters SET n = n + 1 WHERE id = 1").await
            })
            .await;
        writer.await.unwrap();
        let err = result.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::SerializationFailure,
            "{:?}: {err}",
            t.backend
        );
        assert_eq!(
            safe_db_test_support::ids(&t.db, "SELECT n FROM counters").await,
            vec![10]
        );
        t.cleanup().await;
    }
}
