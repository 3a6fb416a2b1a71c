//! The contract of `#[safe_db_operation]`, proven by reading the database back, on
//! SQLite always and on PostgreSQL and MariaDB when their URLs are set.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, agent, exec};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait, Set};

#[safe_db_operation]
async fn create_agent(tx: &Tx, id: i32, name: &str) -> Result<agent::Model, Error> {
    let model = agent::ActiveModel {
        id: Set(id),
        name: Set(name.to_owned()),
    };
    Ok(model.insert(tx).await?)
}

#[safe_db_operation]
async fn rename_agent(tx: &Tx, id: i32, name: String) -> Result<agent::Model, Error> {
    let found = agent::Entity::find_by_id(id).one(tx).await?;
    let agent = found.ok_or_else(|| Error::not_found("agent", id))?;
    let mut active: agent::ActiveModel = agent.into();
    active.name = Set(name);
    Ok(active.update(tx).await?)
}

/// Writes, then fails: nothing may remain.
#[safe_db_operation]
async fn create_then_fail(tx: &Tx, id: i32) -> Result<(), Error> {
    create_agent(tx, id, &format!("doomed-{id}")).await?;
    Err(Error::validation("refused after writing"))
}

#[safe_db_operation]
async fn create_then_panic(tx: &Tx, id: i32) -> Result<(), Error> {
    create_agent(tx, id, &format!("panicky-{id}")).await?;
    panic!("the body panicked after writing");
}

#[tokio::test]
async fn ok_commits() {
    for t in TestDb::all("ok_commits", 5).await {
        let made = create_agent(&t.db, 1, "ada").await.unwrap();
        assert_eq!(made.name, "ada");
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        let renamed = rename_agent(&t.db, 1, "grace".into()).await.unwrap();
        assert_eq!(renamed.name, "grace");
        assert_eq!(t.agent_name(1).await.as_deref(), Some("grace"));
        t.cleanup().await;
    }
}

#[tokio::test]
async fn err_rolls_back_and_returns_the_error_unchanged() {
    for t in TestDb::all("err_rolls_back", 5).await {
        let err = create_then_fail(&t.db, 7).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(err.to_string(), "refused after writing");
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);

        let err = rename_agent(&t.db, 99, "nobody".into()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn db_errors_are_classified() {
    for t in TestDb::all("classified", 5).await {
        create_agent(&t.db, 1, "ada").await.unwrap();
        let dup = create_agent(&t.db, 2, "ada").await.unwrap_err();
        assert_eq!(
            dup.kind(),
            ErrorKind::UniqueViolation,
            "{:?}: {dup}",
            t.backend
        );
        assert_eq!(t.agent_ids().await, vec![1]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn panic_rolls_back_and_the_pool_of_one_still_works() {
    for t in TestDb::all("panic", 1).await {
        let db = Arc::new(t.pool(1).await);
        for id in 1..=3 {
            let db2 = Arc::clone(&db);
            let joined = tokio::spawn(async move { create_then_panic(&*db2, id).await }).await;
            let panic = joined.unwrap_err().into_panic();
            assert_eq!(
                panic.downcast_ref::<&str>(),
                Some(&"the body panicked after writing")
            );
        }
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        // The one connection went back to the pool, outside any transaction.
        create_agent(&*db, 4, "after").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![4]);
        t.cleanup().await;
    }
}

/// Inserts `count` agents, one statement per await point, then commits.
#[safe_db_operation]
async fn insert_many(tx: &Tx, first: i32, count: i32) -> Result<(), DbErr> {
    for id in first..first + count {
        let sql = format!("INSERT INTO agents (id, name) VALUES ({id}, 'bulk-{id}')");
        tx.execute_unprepared(&sql).await?;
    }
    Ok(())
}

#[tokio::test]
async fn cancellation_at_any_point_commits_nothing_and_leaks_nothing() {
    for t in TestDb::all("cancel", 1).await {
        let db = t.pool(1).await;
        // Cancel after 0..N polls: before BEGIN, inside BEGIN, between and inside
        // statements, inside COMMIT. Whatever committed must be all of it or none.
        let mut committed = 0;
        for round in 0..60u32 {
            let first = 1000 + (round as i32) * 10;
            let fut = insert_many(&db, first, 5);
            let polls = round % 30;
            let outcome = safe_db_test_support::poll_then_drop(fut, polls).await;
            let rows: Vec<i32> = t
                .agent_ids()
                .await
                .into_iter()
                .filter(|id| (first..first + 5).contains(id))
                .collect();
            match outcome {
                Some(Ok(())) => {
                    committed += 1;
                    assert_eq!(rows.len(), 5, "round {round}: completed but rows {rows:?}");
                }
                Some(Err(e)) => panic!("round {round}: {e}"),
                None => assert!(
                    rows.is_empty() || rows.len() == 5,
                    "round {round}: partial commit {rows:?}"
                ),
            }
            // The single connection is free and clean again.
            insert_many(&db, 100_000 + round as i32, 1).await.unwrap();
        }
        assert!(committed > 0, "no round got far enough to commit");
        t.cleanup().await;
    }
}

#[tokio::test]
async fn cancellation_by_timeout_of_the_caller() {
    for t in TestDb::all("cancel_timeout", 1).await {
        let db = t.pool(1).await;
        for round in 0..20 {
            let fut = slow_insert(&db, round);
            let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
        }
        let slow: Vec<i32> = t.agent_ids().await;
        assert!(slow.is_empty(), "{slow:?}");
        insert_many(&db, 1, 1).await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1]);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn slow_insert(tx: &Tx, id: i32) -> Result<(), DbErr> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 's{id}')"
    ))
    .await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

#[safe_db_operation]
async fn outer_keeps_going_after_inner_failure(tx: &Tx) -> Result<(), Error> {
    create_agent(tx, 1, "outer").await?;
    let inner = create_then_fail(tx, 2).await;
    assert_eq!(inner.unwrap_err().kind(), ErrorKind::Validation);
    create_agent(tx, 3, "after-inner").await?;
    Ok(())
}

#[safe_db_operation]
async fn outer_fails_after_inner_success(tx: &Tx) -> Result<(), Error> {
    create_agent(tx, 10, "outer").await?;
    create_agent(tx, 11, "inner").await?;
    Err(Error::validation("outer fails last"))
}

#[tokio::test]
async fn nested_inner_failure_rolls_back_only_the_inner_work() {
    for t in TestDb::all("nested_inner", 5).await {
        outer_keeps_going_after_inner_failure(&t.db).await.unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 3], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn nested_outer_failure_rolls_back_everything() {
    for t in TestDb::all("nested_outer", 5).await {
        let err = outer_fails_after_inner_success(&t.db).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn note_for_missing_agent(tx: &Tx, inserted: &AtomicBool) -> Result<(), Error> {
    // The foreign key is deferred: this insert succeeds and COMMIT fails.
    tx.execute_unprepared("INSERT INTO notes (id, agent_id) VALUES (1, 424242)")
        .await?;
    inserted.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_failed_commit_is_an_error_and_nothing_is_kept() {
    for t in TestDb::all("failed_commit", 1).await {
        let inserted = AtomicBool::new(false);
        let err = note_for_missing_agent(&t.db, &inserted).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::ForeignKeyViolation,
            "{:?}: {err}",
            t.backend
        );
        // The body returned Ok and COMMIT failed, except on MySQL, which has no deferred
        // constraints: there the insert itself fails.
        assert_eq!(inserted.load(Ordering::SeqCst), t.backend != Backend::MySql);
        assert_eq!(t.note_ids().await, Vec::<i32>::new());
        // The connection (pool of one) is usable and outside any transaction.
        create_agent(&t.db, 5, "after").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![5]);
        t.cleanup().await;
    }
}

#[safe_db_operation(timeout = "100ms")]
async fn too_slow(tx: &Tx, id: i32) -> Result<(), Error> {
    create_agent(tx, id, "slow").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

#[tokio::test]
async fn timeout_rolls_back_and_returns_a_timeout_error() {
    for t in TestDb::all("timeout", 1).await {
        let started = std::time::Instant::now();
        let err = too_slow(&t.db, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(t.agent_ids().await, Vec::<i32>::new());
        create_agent(&t.db, 2, "after").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![2]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn timeout_interrupts_a_long_statement_on_postgres() {
    for t in TestDb::on(&[Backend::Postgres], "pg_sleep", 1).await {
        #[safe_db_operation(timeout = "300ms")]
        async fn sleepy(tx: &Tx) -> Result<(), Error> {
            create_agent(tx, 1, "sleepy").await?;
            tx.execute_unprepared("SELECT pg_sleep(10)").await?;
            Ok(())
        }
        let started = std::time::Instant::now();
        let err = sleepy(&t.db).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // The pool's one connection is reusable at once, and nothing is running on it.
        create_agent(&t.db, 2, "after").await.unwrap();
        assert_eq!(t.agent_ids().await, vec![2]);
        let running = safe_db_test_support::ids(
            &t.db,
            "SELECT count(*)::int FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(10)' AND state = 'active'",
        )
        .await;
        assert_eq!(running, vec![0]);
        t.cleanup().await;
    }
}

struct AgentService {
    prefix: String,
}

impl AgentService {
    #[safe_db_operation]
    async fn create(&self, tx: &Tx, id: i32) -> Result<agent::Model, Error> {
        create_agent(tx, id, &format!("{}-{id}", self.prefix)).await
    }
}

trait Registry {
    fn register(
        &self,
        db: &impl safe_db::Begin,
        id: i32,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send;
}

impl Registry for AgentService {
    #[safe_db_operation]
    async fn register(&self, tx: &Tx, id: i32) -> Result<(), Error> {
        self.create(tx, id).await?;
        Ok(())
    }
}

#[safe_db_operation]
async fn insert_entity<M>(tx: &Tx, model: M) -> Result<(), Error>
where
    M: ActiveModelTrait + sea_orm::ActiveModelBehavior + Send + 'static,
    <M::Entity as EntityTrait>::Model: sea_orm::IntoActiveModel<M>,
{
    model.insert(tx).await?;
    Ok(())
}

#[tokio::test]
async fn methods_trait_impls_generics_and_spawned_futures() {
    for t in TestDb::all("shapes", 5).await {
        let service = Arc::new(AgentService {
            prefix: "svc".into(),
        });
        service.create(&t.db, 1).await.unwrap();
        service.register(&t.db, 2).await.unwrap();
        insert_entity(
            &t.db,
            agent::ActiveModel {
                id: Set(3),
                name: Set("generic".into()),
            },
        )
        .await
        .unwrap();
        // The rewritten future is Send: it can be spawned.
        let db = Arc::new(t.pool(2).await);
        let (svc, db2) = (Arc::clone(&service), Arc::clone(&db));
        tokio::spawn(async move { svc.create(&*db2, 4).await })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(t.agent_ids().await, vec![1, 2, 3, 4], "{:?}", t.backend);
        assert_eq!(t.agent_name(2).await.as_deref(), Some("svc-2"));
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn read_then_write(tx: &Tx, task: i32) -> Result<(), Error> {
    let rows = safe_db_test_support::ids(tx, "SELECT n FROM counters WHERE id = 1").await;
    let n = rows[0];
    tokio::task::yield_now().await;
    tx.execute_unprepared(&format!("UPDATE counters SET n = {} WHERE id = 1", n + 1))
        .await?;
    create_agent(tx, task, &format!("task-{task}")).await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_read_then_write_on_one_sqlite_file_never_fails_with_database_is_locked() {
    let t = TestDb::sqlite("sqlite_writers", 8).await;
    exec(&t.db, "INSERT INTO counters (id, n) VALUES (1, 0)").await;
    let db = Arc::new(t.pool(8).await);
    let tasks: Vec<_> = (1..=8)
        .map(|task| {
            let db = Arc::clone(&db);
            tokio::spawn(async move {
                for round in 0..10 {
                    read_then_write(&*db, task * 100 + round).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        safe_db_test_support::ids(&t.db, "SELECT n FROM counters WHERE id = 1").await,
        vec![80],
        "every read-then-write was serialized by the write lock taken at BEGIN"
    );
    assert_eq!(t.agent_ids().await.len(), 80);
    t.cleanup().await;
}

#[tokio::test]
async fn the_closure_form_has_the_same_semantics() {
    for t in TestDb::all("closure", 5).await {
        let made = safe_db::transaction(&t.db, async |tx: &Tx| create_agent(tx, 1, "c").await)
            .await
            .unwrap();
        assert_eq!(made.id, 1);
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            create_agent(tx, 2, "gone").await?;
            Err::<(), _>(Error::validation("no"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn insert_slowly_then(tx: &Tx, id: i32, fail: bool) -> Result<(), Error> {
    create_agent(tx, id, &format!("sibling-{id}")).await?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    create_agent(tx, id + 100, &format!("sibling-{}", id + 100)).await?;
    if fail {
        return Err(Error::validation("this sibling fails"));
    }
    Ok(())
}

#[safe_db_operation]
async fn concurrent_siblings(tx: &Tx) -> Result<(), Error> {
    // sqlx keeps savepoints as a stack: siblings running at once would end each other's
    // savepoints. safe-db makes them take turns.
    let (failed, kept) = tokio::join!(
        insert_slowly_then(tx, 1, true),
        insert_slowly_then(tx, 2, false)
    );
    assert!(failed.is_err());
    kept
}

#[tokio::test]
async fn concurrent_nested_operations_on_one_tx_take_turns() {
    for t in TestDb::all("siblings", 2).await {
        for round in 0..5 {
            concurrent_siblings(&t.db).await.unwrap();
            assert_eq!(
                t.agent_ids().await,
                vec![2, 102],
                "{:?} round {round}",
                t.backend
            );
            safe_db_test_support::exec(&t.db, "DELETE FROM agents").await;
        }
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn insert_then_stream(tx: &Tx) -> Result<Vec<i32>, Error> {
    use futures_util::StreamExt;
    use sea_orm::{QueryOrder, StreamTrait};
    for id in [3, 1, 2] {
        tx.execute_unprepared(&format!(
            "INSERT INTO agents (id, name) VALUES ({id}, 'streamed{id}')"
        ))
        .await?;
    }
    let mut ids = Vec::new();
    {
        let mut rows = agent::Entity::find()
            .order_by_asc(agent::Column::Id)
            .stream(tx)
            .await?;
        while let Some(row) = rows.next().await {
            ids.push(row?.id);
        }
    }
    // A statement that would end the transaction is refused on a stream as elsewhere.
    let refused = tx
        .stream_raw(sea_orm::Statement::from_string(
            ConnectionTrait::get_database_backend(tx),
            "ROLLBACK",
        ))
        .await;
    assert!(refused.is_err());
    Ok(ids)
}

#[tokio::test]
async fn a_tx_streams_rows_with_the_checks_of_every_statement() {
    for t in TestDb::all("stream", 2).await {
        let ids = insert_then_stream(&t.db).await.unwrap();
        assert_eq!(ids, vec![1, 2, 3], "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, vec![1, 2, 3], "{:?}", t.backend);
        t.cleanup().await;
    }
}
