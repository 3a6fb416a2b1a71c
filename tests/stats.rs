//! The plain counters, for services with no metrics exporter. One test in this binary, so
//! the process-wide counts are this test's alone.

use std::time::Duration;

use safe_db::{Error, Stats, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use sea_orm::ConnectionTrait;

// 500 ms: room for every case on a loaded machine (50 ms was tight); "slow" sleeps 1 s.
#[safe_db_operation(timeout = "500ms")]
async fn op(tx: &Tx, id: i32, how: &'static str) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, '{how}{id}')"
    ))
    .await?;
    match how {
        "error" => Err(Error::validation("no")),
        "panic" => panic!("planned"),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        }
        "nested" => leaf(tx, id + 1).await,
        _ => Ok(()),
    }
}

#[safe_db_operation]
async fn leaf(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'leaf')"
    ))
    .await?;
    Ok(())
}

#[tokio::test]
async fn counters_count_each_outcome_once() {
    let t = TestDb::sqlite("stats", 2).await;
    let before = Stats::snapshot();
    op(&t.db, 1, "commit").await.unwrap();
    op(&t.db, 2, "nested").await.unwrap();
    op(&t.db, 4, "error").await.unwrap_err();
    op(&t.db, 5, "slow").await.unwrap_err();
    let db = std::sync::Arc::new(t.pool(1).await);
    let db2 = std::sync::Arc::clone(&db);
    assert!(
        tokio::spawn(async move { op(&*db2, 6, "panic").await })
            .await
            .is_err()
    );
    op(&*db, 7, "commit").await.unwrap();
    let cancelled_mid_way = tokio::time::timeout(Duration::from_millis(20), async {
        safe_db::transaction(&*db, async |tx: &Tx| {
            tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (8, 'x')")
                .await?;
            std::future::pending::<Result<(), Error>>().await
        })
        .await
    });
    assert!(cancelled_mid_way.await.is_err());
    // A transaction that cannot begin (its pool is closed) rolls nothing back.
    let closed = t.pool(1).await;
    closed.clone().close().await.unwrap();
    op(&closed, 9, "commit").await.unwrap_err();
    let after = Stats::snapshot();

    assert_eq!(after.started - before.started, 9);
    assert_eq!(
        after.committed - before.committed,
        4,
        "1, 2 and 3 nested, 7"
    );
    assert_eq!(after.rolled_back - before.rolled_back, 1);
    assert_eq!(after.not_begun - before.not_begun, 1);
    assert_eq!(after.timed_out - before.timed_out, 1);
    assert_eq!(after.panicked - before.panicked, 1);
    assert_eq!(after.cancelled - before.cancelled, 1);
    assert_eq!(after.active, before.active);
    assert_eq!(t.agent_ids().await, vec![1, 2, 3, 7]);
    t.cleanup().await;
}
