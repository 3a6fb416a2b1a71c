//! A nested operation cancelled at any point, while its caller goes on: the caller's
//! transaction must either commit exactly its own work or fail, never half of it, and the
//! connection must come back to the pool clean.

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use sea_orm::ConnectionTrait;

async fn insert(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'a{id}')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation]
async fn inner(tx: &Tx, id: i32) -> Result<(), Error> {
    insert(tx, id).await?;
    insert(tx, id + 1).await
}

#[safe_db_operation]
async fn outer(tx: &Tx, base: i32, polls: u32) -> Result<bool, Error> {
    insert(tx, base).await?;
    let finished = safe_db_test_support::poll_then_drop(inner(tx, base + 10), polls).await;
    insert(tx, base + 1).await?;
    Ok(matches!(finished, Some(Ok(()))))
}

#[tokio::test]
async fn a_cancelled_nested_operation_never_half_commits_its_caller() {
    for t in TestDb::all("nested_cancel", 1).await {
        let db = t.pool(1).await;
        for polls in 0..12u32 {
            let base = 1000 * (polls as i32 + 1);
            let result = outer(&db, base, polls).await;
            let rows: Vec<i32> = t
                .agent_ids()
                .await
                .into_iter()
                .filter(|id| (base..base + 100).contains(id))
                .collect();
            match result {
                Ok(true) => assert_eq!(
                    rows,
                    vec![base, base + 1, base + 10, base + 11],
                    "{:?} polls {polls}",
                    t.backend
                ),
                Ok(false) => {
                    assert_eq!(rows, vec![base, base + 1], "{:?} polls {polls}", t.backend)
                }
                Err(e) => assert_eq!(
                    rows,
                    Vec::<i32>::new(),
                    "{:?} polls {polls}: {e}",
                    t.backend
                ),
            }
            // The connection is clean: a new operation commits for real.
            let after = base + 50;
            safe_db::transaction(&db, async |tx: &Tx| insert(tx, after).await)
                .await
                .unwrap_or_else(|e| panic!("{:?} polls {polls}: {e}", t.backend));
            let committed = safe_db_test_support::ids(
                &t.db,
                &format!("SELECT id FROM agents WHERE id = {after}"),
            )
            .await;
            assert_eq!(committed, vec![after], "{:?} polls {polls}", t.backend);
        }
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn child_write(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'child')"
    ))
    .await?;
    Ok(())
}

/// A body that swallows a failed statement (PostgreSQL then aborts the transaction), calls
/// a nested operation anyway (its SAVEPOINT fails), and goes on writing.
#[safe_db_operation]
async fn goes_on_after_a_failed_savepoint(tx: &Tx) -> Result<(), Error> {
    let _ = tx
        .execute_unprepared("INSERT INTO agents (id, name) VALUES (1, NULL)")
        .await;
    let _ = child_write(tx, 2).await;
    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (3, 'after')")
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_savepoint_that_fails_to_begin_leaves_nothing_committed() {
    for t in TestDb::on(
        &[safe_db_test_support::Backend::Postgres],
        "failed_savepoint",
        1,
    )
    .await
    {
        // SeaORM counts the savepoint as open before it has run: dropping it after its
        // failure queues a rollback at the enclosing level. The tree is broken, so the
        // later statement is refused instead of running in autocommit.
        let result = goes_on_after_a_failed_savepoint(&t.db).await;
        assert!(result.is_err(), "{result:?}");
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        t.cleanup().await;
    }
}
