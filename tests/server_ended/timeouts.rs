//! A statement really running when the timeout fires: stopped on the server, and one
//! abandoned by its caller does not hold up the next user of the pool.

use super::*;

#[safe_db_operation(timeout = "300ms")]
async fn sleeps(tx: &Tx, prepared: bool) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'sleeper')").await?;
    let backend = tx.get_database_backend();
    let (sql, arg) = match backend {
        DbBackend::Postgres => ("SELECT pg_sleep($1)", 8.0f64),
        _ => ("SELECT SLEEP(?)", 8.0),
    };
    if prepared {
        tx.query_one_raw(Statement::from_sql_and_values(backend, sql, [arg.into()]))
            .await?;
    } else {
        tx.execute_unprepared(&sql.replace("$1", "8").replace('?', "8"))
            .await?;
    }
    Ok(())
}

#[safe_db_operation]
async fn calls_a_sleeper(tx: &Tx, prepared: bool) -> Result<ErrorKind, Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'caller')").await?;
    // A nested timeout: the inner operation times out, rolls back its savepoint, and
    // the caller handles that and commits its own work.
    let inner = sleeps(tx, prepared).await.unwrap_err();
    Ok(inner.kind())
}

/// Statements of this test (its namespace) still running on the server that sleep.
async fn sleepers(t: &TestDb) -> usize {
    let sql = match t.backend {
        // The sleeping transaction wrote to this schema's `agents` first: it holds a lock.
        Backend::Postgres => {
            "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep%' \
             AND pid <> pg_backend_pid() AND pid IN (SELECT l.pid FROM pg_locks l \
             JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relname = 'agents')"
        }
        _ => {
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE '%SLEEP(%' \
             AND ID <> CONNECTION_ID() AND DB = DATABASE()"
        }
    };
    let stmt = Statement::from_string(t.db.get_database_backend(), sql);
    t.db.query_all_raw(stmt).await.expect("sleepers").len()
}

#[tokio::test]
async fn a_timeout_stops_the_running_statement_on_the_server() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "stops", 2).await {
        let db = t.pool(1).await;
        for prepared in [false, true] {
            let started = Instant::now();
            let err = sleeps(&db, prepared).await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            // Within its 300 ms and a margin; an 8 s statement left running would hold
            // the rollback (and the pool of one) for seconds.
            assert!(took < Duration::from_secs(2), "{:?}: {took:?}", t.backend);
            // The server stops the statement at its own bound (the time left at BEGIN,
            // rounded up to 100 ms on MariaDB), a moment after the caller has its answer:
            // the rollback goes on off the caller's path.
            safe_db_test_support::eventually(Duration::from_secs(1), || async {
                sleepers(&t).await == 0
            })
            .await;
            assert_eq!(sleepers(&t).await, 0, "{:?}", t.backend);
            // The pool of one serves the next operation at once.
            let next = Instant::now();
            plain_write(&db, 9)
                .await
                .unwrap_or_else(|e| panic!("{:?} prepared {prepared}: {e}", t.backend));
            assert!(
                next.elapsed() < Duration::from_secs(1),
                "{:?}",
                next.elapsed()
            );
            assert_eq!(t.agent_ids().await, vec![9], "{:?}", t.backend);
            exec(&t.db, "DELETE FROM agents").await;
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_nested_timeout_rolls_back_only_its_savepoint() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "nested_timeout", 1).await {
        // The server's stop and the client's deadline race: either may end the statement.
        for round in 0..6 {
            let started = Instant::now();
            let inner = calls_a_sleeper(&t.db, round % 2 == 0).await.unwrap();
            assert_eq!(inner, ErrorKind::Timeout);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            // The caller's row committed; the sleeper's did not.
            assert_eq!(t.agent_ids().await, vec![2]);
            assert_eq!(sleepers(&t).await, 0);
            exec(&t.db, "DELETE FROM agents").await;
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn the_closure_form_refuses_the_same_statements() {
    for t in TestDb::all("closure_ddl", 1).await {
        // DDL on MariaDB; elsewhere a hand-written COMMIT, refused on every database.
        let (statement, named) = match t.backend {
            Backend::MySql => ("CREATE TABLE x (a INT)", "`CREATE TABLE` is refused"),
            _ => ("COMMIT", "`COMMIT` is refused"),
        };
        let result: Result<(), Error> = Options::new()
            .run(&t.db, async |tx: &Tx| {
                run(tx, "INSERT INTO agents (id, name) VALUES (1, 'a')").await?;
                run(tx, statement).await
            })
            .await;
        let err = result.unwrap_err();
        assert!(err.to_string().contains(named), "{:?}: {err}", t.backend);
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(timeout = "300ms")]
async fn quick(tx: &Tx) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'quick')").await
}

#[safe_db_operation]
async fn slow_after_a_quick_nested_timeout(tx: &Tx) -> Result<(), Error> {
    quick(tx).await?;
    // The nested operation's 300 ms bound ended with it: the caller has none, and its
    // own statement may take longer.
    let sleep = match tx.get_database_backend() {
        DbBackend::Postgres => "SELECT pg_sleep(0.6)",
        _ => "SELECT SLEEP(0.6)",
    };
    run(tx, sleep).await?;
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'after')").await
}

#[tokio::test]
async fn a_nested_timeout_ends_with_its_operation() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "nested_bound_ends", 1).await {
        slow_after_a_quick_nested_timeout(&t.db)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.backend));
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// Writes, then sleeps with no safe-db timeout: the server is told nothing of any deadline.
#[safe_db_operation]
async fn writes_then_sleeps(tx: &Tx, id: i32, secs: u32) -> Result<(), Error> {
    plain_write(tx, id).await?;
    let sql = match tx.get_database_backend() {
        DbBackend::Postgres => format!("SELECT pg_sleep({secs})"),
        _ => format!("SELECT SLEEP({secs})"),
    };
    run(tx, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_abandoned_by_its_caller_does_not_hold_up_the_next_one() {
    for t in TestDb::on(&[Backend::Postgres, Backend::MySql], "abandoned", 1).await {
        // A pool of one, guarded as DbConfig's pools are, with PostgreSQL told to check
        // that a running statement's client is still there (the setting the README
        // recommends), without TLS.
        let mut options = t.options(1);
        if t.backend == Backend::Postgres {
            // Without TLS: closing a TLS connection, sqlx (rustls) waits for the server's
            // next message, which comes when the statement ends (see the README).
            options.map_sqlx_postgres_opts(|o| {
                o.options([("client_connection_check_interval", "1000")])
                    .ssl_mode(sea_orm::sqlx::postgres::PgSslMode::Disable)
            });
        }
        let db = sea_orm::Database::connect(options).await.unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(300), writes_then_sleeps(&db, 1, 4)).await;
        assert!(gave_up.is_err(), "{:?}", t.backend);
        let gave_up_at = Instant::now();
        // Without the guard the next caller waited for the 4 s statement (3.7 s measured).
        // What the server and the pool look like 1 s in, for a failure's message.
        let snapshot = {
            let url = t.url.clone();
            let backend = t.backend;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let other = sea_orm::Database::connect(url).await.ok()?;
                let sql = match backend {
                    Backend::Postgres => {
                        "SELECT concat(pid, ' ', state, ' ', query) FROM pg_stat_activity \
                         WHERE datname = current_database()"
                    }
                    _ => {
                        "SELECT CONCAT(ID, ' ', COMMAND, ' ', IFNULL(INFO, '')) \
                         FROM information_schema.PROCESSLIST"
                    }
                };
                let rows = other
                    .query_all_raw(Statement::from_string(other.get_database_backend(), sql))
                    .await
                    .ok()?;
                Some(
                    rows.iter()
                        .filter_map(|r| r.try_get_by_index::<String>(0).ok())
                        .collect::<Vec<_>>(),
                )
            })
        };
        plain_write(&db, 2).await.unwrap();
        let waited = gave_up_at.elapsed();
        if waited >= Duration::from_millis(1500) {
            panic!(
                "{:?}: the next caller waited {waited:?}; sessions 1 s in: {:?}",
                t.backend,
                snapshot.await
            );
        }
        snapshot.abort();
        assert_eq!(t.agent_ids().await, vec![2], "{:?}", t.backend);
        // The abandoned statement: PostgreSQL stops it once its connection is closed and
        // the check notices; MariaDB runs it to its end.
        let mut running = sleepers(&t).await;
        while running > 0 && gave_up_at.elapsed() < Duration::from_millis(2500) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            running = sleepers(&t).await;
        }
        println!(
            "{:?}: abandoned statement still running after {:?}: {}",
            t.backend,
            gave_up_at.elapsed(),
            running > 0
        );
        if t.backend == Backend::Postgres {
            assert_eq!(running, 0, "pg_sleep still running after 2.5 s");
        }
        t.cleanup().await;
    }
}
