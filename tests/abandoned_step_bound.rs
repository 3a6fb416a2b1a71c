//! The wait for the answer of a statement the body stopped waiting for, before the body's
//! next statement, is the body's: bounded by the operation's `timeout` only, not by the
//! protocol's step bound (`set_step_timeout`, process-wide: hence a binary of its own).

use std::time::Duration;

use safe_db::{Error, Tx, safe_db_operation, set_step_timeout};
use safe_db_test_support::{Backend, TestDb};
use sea_orm::ConnectionTrait;

async fn run(tx: &Tx, sql: &str) -> Result<(), Error> {
    tx.execute_unprepared(sql).await?;
    Ok(())
}

#[safe_db_operation]
async fn gives_up_on_a_report_then_goes_on(tx: &Tx, backend: Backend) -> Result<(), Error> {
    run(tx, "INSERT INTO agents (id, name) VALUES (1, 'a')").await?;
    let slow = match backend {
        Backend::Postgres => "SELECT pg_sleep(0.8)",
        Backend::MySql => "SELECT SLEEP(0.8)",
        // Counting to five million: longer than the step bound in a debug build.
        Backend::Sqlite => {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < 5000000) SELECT count(*) FROM c"
        }
    };
    let cut = tokio::time::timeout(Duration::from_millis(50), run(tx, slow)).await;
    assert!(cut.is_err(), "the report answered within 50 ms");
    // Waits behind the report, longer than the step bound (0.3 s).
    run(tx, "INSERT INTO agents (id, name) VALUES (2, 'b')").await
}

#[tokio::test]
async fn a_body_statement_waits_for_an_abandoned_one_beyond_the_step_bound() {
    set_step_timeout(Duration::from_millis(300));
    for t in TestDb::all("abandoned_step", 2).await {
        let started = std::time::Instant::now();
        gives_up_on_a_report_then_goes_on(&t.db, t.backend)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", t.backend));
        assert!(
            started.elapsed() > Duration::from_millis(300),
            "{:?}: the report ended within the step bound",
            t.backend
        );
        assert_eq!(t.agent_ids().await, vec![1, 2], "{:?}", t.backend);
        t.cleanup().await;
    }
}
