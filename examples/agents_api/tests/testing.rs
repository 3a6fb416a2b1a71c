//! The agent registry tested the way a user of safe-db would test it, with
//! `safe_db::testing`: each test in a transaction that is rolled back (service functions
//! and HTTP handlers alike), after-commit callbacks captured and run on demand, failures
//! injected into chosen statements and commits, and a PostgreSQL database per test from a
//! template. Each test reads the real database afterwards: nothing may be left behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

mod common;

use agents_api::{app, create_agent, get_agent, list_agents, rename_agent};
use axum::http::StatusCode;
use common::call;
use safe_db::testing::{Failure, Faults, Template, TestTx};
use safe_db::{Db, Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, capture, server_url};
use sea_orm::ConnectionTrait;
use serde_json::json;

const ALL: &[Backend] = &[Backend::Sqlite, Backend::Postgres, Backend::MySql];

async fn api_db(test: &str) -> Vec<TestDb> {
    let mut out = Vec::new();
    for t in TestDb::empty_on(ALL, test, 5).await {
        agents_api::migrate(&t.db).await.unwrap();
        out.push(t);
    }
    out
}

/// What is really in the table, outside any test transaction.
async fn committed_names(t: &TestDb) -> Vec<String> {
    let stmt = sea_orm::Statement::from_string(
        t.db.get_database_backend(),
        "SELECT name FROM agents ORDER BY name",
    );
    t.db.query_all_raw(stmt)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index::<String>(0).unwrap())
        .collect()
}

#[tokio::test]
async fn service_functions_in_a_test_transaction_leave_nothing() {
    for t in api_db("testing_service").await {
        let test = TestTx::begin(&t.db).await.unwrap();
        let ada = create_agent(&test, "ada").await.unwrap();
        rename_agent(&test, ada.id, "grace".into()).await.unwrap();
        // Inside the test everything is as committed: reads see it.
        assert_eq!(get_agent(&test, ada.id).await.unwrap().name, "grace");
        assert_eq!(list_agents(&test, 0, 10).await.unwrap().items.len(), 1);
        // A failure rolls back only its own savepoint, as in production.
        let dup = create_agent(&test, "grace").await.unwrap_err();
        assert_eq!(dup.kind(), ErrorKind::UniqueViolation);
        create_agent(&test, "linus").await.unwrap();
        test.rollback().await.unwrap();
        assert!(committed_names(&t).await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_test_that_panics_leaves_nothing() {
    for t in api_db("testing_panic").await {
        let db = t.db.clone();
        let outcome = tokio::spawn(async move {
            let test = TestTx::begin(&db).await.unwrap();
            create_agent(&test, "ada").await.unwrap();
            panic!("an assertion failed mid-test");
        })
        .await;
        assert!(outcome.unwrap_err().is_panic());
        // The connection went back rolled back: the pool serves plain writes at once.
        create_agent(&t.db, "after").await.unwrap();
        assert_eq!(committed_names(&t).await, vec!["after"], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn http_handlers_in_a_test_transaction_leave_nothing() {
    for t in api_db("testing_http").await {
        let test = TestTx::begin(&t.db).await.unwrap();
        let router = app(test.db());
        let (status, created, _) =
            call(&router, "POST", "/agents", Some(json!({"name": "ada"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_i64().unwrap();
        // Another request sees what the first "committed" (a savepoint of the test).
        let (status, shown, _) = call(&router, "GET", &format!("/agents/{id}"), None).await;
        assert_eq!(
            (status, shown["name"].as_str()),
            (StatusCode::OK, Some("ada"))
        );
        // A request answered 409 rolls back its own work only.
        let (status, _, _) =
            call(&router, "POST", "/agents/batch", Some(json!(["b", "ada"]))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (_, list, _) = call(&router, "GET", "/agents", None).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
        drop(router);
        test.rollback().await.unwrap();
        assert!(committed_names(&t).await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// Registers an agent and, once committed, counts a welcome.
#[safe_db_operation]
async fn register(tx: &Tx, name: &str, welcomes: Arc<AtomicU32>) -> Result<(), Error> {
    create_agent(tx, name).await?;
    tx.on_commit(async move {
        welcomes.fetch_add(1, Ordering::SeqCst);
    });
    Ok(())
}

#[tokio::test]
async fn after_commit_callbacks_are_captured_and_run_on_demand() {
    for t in api_db("testing_callbacks").await {
        let welcomes = Arc::new(AtomicU32::new(0));
        let test = TestTx::begin(&t.db).await.unwrap();
        register(&test, "ada", Arc::clone(&welcomes)).await.unwrap();
        // A registration that fails takes its callback with it.
        register(&test, "ada", Arc::clone(&welcomes))
            .await
            .unwrap_err();
        assert_eq!(test.captured(), 1);
        assert_eq!(welcomes.load(Ordering::SeqCst), 0, "nothing committed yet");
        assert_eq!(test.run_captured().await, vec![Ok(())]);
        assert_eq!(welcomes.load(Ordering::SeqCst), 1);
        assert_eq!(test.captured(), 0);
        test.rollback().await.unwrap();
        assert!(committed_names(&t).await.is_empty());
        t.cleanup().await;
    }
}

/// Registers several agents, retrying conflicts.
#[safe_db_operation(retries = 3)]
async fn register_all(tx: &Tx, names: Vec<String>) -> Result<usize, Error> {
    for name in &names {
        create_agent(tx, name).await?;
    }
    Ok(names.len())
}

/// An injected serialization failure, deadlock or failed commit is retried; nothing is
/// duplicated, and the rows are committed once.
#[tokio::test]
async fn injected_conflicts_are_retried_by_the_code_under_test() {
    for t in api_db("testing_retry").await {
        let names = vec!["a".to_owned(), "b".to_owned()];
        // The first insert fails once (a serialization failure: the nested operation cannot
        // retry, so the outer one does), then the outer commit fails once (a deadlock):
        // three attempts, one commit.
        let faults = Faults::new()
            .fail_statement("create_agent", 1, Failure::SerializationFailure)
            .times(1)
            .fail_commit("register_all", Failure::Deadlock)
            .times(1);
        let created = faults
            .run(register_all(&t.db, names.clone()))
            .await
            .unwrap();
        assert_eq!(created, 2);
        assert_eq!(faults.fired(), 2, "{:?}", t.backend);
        assert_eq!(committed_names(&t).await, vec!["a", "b"], "{:?}", t.backend);

        // More failures than retries: the error, classified, and nothing left.
        let faults = Faults::new().fail_statement("create_agent", 1, Failure::Deadlock);
        let err = faults
            .run(register_all(&t.db, vec!["c".to_owned()]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SerializationFailure, "{err}");
        assert_eq!(
            faults.fired(),
            4,
            "{:?}: 1 attempt and 3 retries",
            t.backend
        );
        assert_eq!(committed_names(&t).await, vec!["a", "b"], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// Each failure reaches the client as the right status, and the request leaves nothing.
#[tokio::test]
async fn injected_failures_map_to_the_right_http_status() {
    for t in api_db("testing_status").await {
        let db = Db::new(t.pool(3).await, None);
        let router = app(db);
        for (failure, status) in [
            (Failure::UniqueViolation, StatusCode::CONFLICT),
            (Failure::Deadlock, StatusCode::SERVICE_UNAVAILABLE),
            (
                Failure::SerializationFailure,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (Failure::Timeout, StatusCode::GATEWAY_TIMEOUT),
            (Failure::LostConnection, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            // The handler's INSERT is the request operation's first statement.
            let faults = Faults::new().fail_statement("request", 1, failure);
            let (got, body, _) = faults
                .run(call(
                    &router,
                    "POST",
                    "/agents",
                    Some(json!({"name": "ada"})),
                ))
                .await;
            assert_eq!(got, status, "{:?} {failure:?}: {body}", t.backend);
            assert!(
                committed_names(&t).await.is_empty(),
                "{:?} {failure:?}",
                t.backend
            );
        }
        // A failed commit of the request's transaction: an error status, nothing kept.
        let faults = Faults::new().fail_commit("request", Failure::SerializationFailure);
        let (got, _, _) = faults
            .run(call(
                &router,
                "POST",
                "/agents",
                Some(json!({"name": "ada"})),
            ))
            .await;
        assert_eq!(got, StatusCode::SERVICE_UNAVAILABLE, "{:?}", t.backend);
        assert!(committed_names(&t).await.is_empty(), "{:?}", t.backend);
        // With no faults the same request commits.
        let (got, _, _) = call(&router, "POST", "/agents", Some(json!({"name": "ada"}))).await;
        assert_eq!(got, StatusCode::CREATED);
        assert_eq!(committed_names(&t).await, vec!["ada"], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// A database per test, copied from a template migrated once: real commits, then gone.
#[tokio::test]
async fn a_postgres_database_per_test_from_a_template() {
    let Some(url) = server_url(Backend::Postgres) else {
        return;
    };
    // Named after the process: a name taken by a database the kit did not make is refused.
    let name = format!("safe_db_agents_{}", std::process::id());
    let template = Template::prepare(&url, &name, async |db| agents_api::migrate(db).await)
        .await
        .unwrap();
    let started = Instant::now();
    let first = template.create().await.unwrap();
    let second = template.create().await.unwrap();
    eprintln!("two databases from the template in {:?}", started.elapsed());
    create_agent(&first.db, "only-in-first").await.unwrap();
    let in_second = list_agents(&second.db, 0, 10).await.unwrap();
    assert!(in_second.items.is_empty(), "each test has its own database");
    let names = list_agents(&first.db, 0, 10).await.unwrap();
    assert_eq!(names.items.len(), 1, "committed for real");
    let (a, b) = (first.name.clone(), second.name.clone());
    first.drop_database().await.unwrap();
    second.drop_database().await.unwrap();
    template.drop_template().await.unwrap();
    let admin = sea_orm::Database::connect(url.as_str()).await.unwrap();
    let left = safe_db_test_support::ids(
        &admin,
        &format!("SELECT COUNT(*)::int FROM pg_database WHERE datname IN ('{a}', '{b}')"),
    )
    .await;
    assert_eq!(left, vec![0], "the test databases were dropped");
}

/// Issue 29: a template prepared on a runtime that is gone serves every later runtime (each
/// `#[tokio::test]` has its own): it keeps no pool of the runtime that prepared it.
#[test]
fn a_template_serves_the_runtimes_after_the_one_that_prepared_it() {
    let Some(url) = server_url(Backend::Postgres) else {
        return;
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // Prepared on a thread of its own, whose runtime is dropped with it.
    // Named after the process: two runs of the suite on one server (two checkouts) would
    // otherwise drop each other's template.
    let name = format!("safe_db_runtimes_{}", std::process::id());
    let template = std::thread::spawn(move || {
        runtime()
            .block_on(Template::prepare(&url, &name, async |db| {
                agents_api::migrate(db).await
            }))
            .unwrap()
    })
    .join()
    .unwrap();
    // 50 runtimes, 5 at a time, as tests running in parallel: each ends while others are
    // still using the template.
    std::thread::scope(|threads| {
        for thread in 0..5 {
            let template = &template;
            threads.spawn(move || {
                for n in 0..10 {
                    runtime().block_on(async {
                        let test = template
                            .create()
                            .await
                            .unwrap_or_else(|e| panic!("copy {n} of thread {thread}: {e}"));
                        create_agent(&test.db, "ada").await.unwrap();
                        let agents = list_agents(&test.db, 0, 10).await.unwrap();
                        assert_eq!(agents.items.len(), 1);
                        test.drop_database()
                            .await
                            .unwrap_or_else(|e| panic!("drop {n} of thread {thread}: {e}"));
                    });
                }
            });
        }
    });
    runtime().block_on(template.drop_template()).unwrap();
}

/// Issue 30, item 7: the template's admin URL goes through safe-db's URL parser. Its
/// password is in no span or event (SeaORM's connect span records the URL it is given),
/// and a URL that cannot be used is named, never repeated.
#[tokio::test]
async fn a_template_never_shows_its_admin_password() {
    const PASSWORD: &str = "never-print-this-pw";
    for bad in [
        format!("oracle://app:{PASSWORD}@db/x"),
        format!("app:{PASSWORD}@db"),
        format!("postgres://app:{PASSWORD}@db:notaport/x"),
        format!("mysql://app:{PASSWORD}@127.0.0.1:1/x"),
    ] {
        let Err(err) = Template::prepare(&bad, "safe_db_never_made", async |_| Ok(())).await else {
            panic!("a template was prepared from a URL that cannot be used");
        };
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
    let Some(url) = server_url(Backend::Postgres) else {
        return;
    };
    // The server trusts local connections: any password is accepted.
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let url = format!("{scheme}://{user}:{PASSWORD}@{host}");
    let (captured, guard) = capture::start();
    let name = format!("safe_db_secret_{}", std::process::id());
    let template = Template::prepare(&url, &name, async |db| agents_api::migrate(db).await)
        .await
        .unwrap();
    let test = template.create().await.unwrap();
    create_agent(&test.db, "ada").await.unwrap();
    test.drop_database().await.unwrap();
    template.drop_template().await.unwrap();
    drop(guard);
    // SeaORM's connect span records the URL (without the password).
    let server = host.split('/').next().unwrap();
    assert!(
        captured.all_text().contains(server),
        "no span recorded the URL"
    );
    assert!(
        !captured.all_text().contains(PASSWORD),
        "the admin password is in a span or event"
    );
}

/// A service that keeps a `Db`, as services do.
#[derive(Clone)]
struct Registry {
    db: Db,
}

impl Registry {
    /// Registers an agent; once committed, a callback (holding the service) runs.
    #[safe_db_operation]
    async fn register(&self, tx: &Tx, name: &str) -> Result<(), Error> {
        create_agent(tx, name).await?;
        let me = self.clone();
        tx.on_commit(async move { drop(me) });
        Ok(())
    }

    /// Registers an agent, then looks it up through the kept `Db`, from inside the
    /// operation (production would take a second connection for that).
    #[safe_db_operation]
    async fn register_and_look_up(&self, tx: &Tx, name: &str) -> Result<(), Error> {
        let made = create_agent(tx, name).await?;
        get_agent(&self.db, made.id).await.map(drop)
    }
}

/// A captured callback that holds the test's own `Db` does not keep the test's
/// transaction (and its connection) alive once the test is over.
#[tokio::test]
async fn a_callback_holding_the_tests_db_does_not_keep_it_open() {
    for t in api_db("testing_cycle").await {
        let pool = t.pool(1).await;
        let test = TestTx::begin(&pool).await.unwrap();
        let registry = Registry { db: test.db() };
        registry.register(&test, "ada").await.unwrap();
        assert_eq!(test.captured(), 1);
        drop(registry);
        drop(test);
        // The pool of one has its connection back, rolled back: a plain write commits.
        let started = Instant::now();
        create_agent(&pool, "after").await.unwrap();
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
        assert_eq!(committed_names(&t).await, vec!["after"], "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// An operation on `test.db()` begun from inside another operation of the test fails
/// with an error saying why, instead of waiting for ever.
#[tokio::test]
async fn a_nested_use_of_the_tests_db_fails_instead_of_hanging() {
    let t = TestDb::sqlite("testing_turns", 2).await;
    agents_api::migrate(&t.db).await.ok();
    let test = TestTx::begin(&t.db).await.unwrap();
    let registry = Registry { db: test.db() };
    let err = registry
        .register_and_look_up(&test, "ada")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("take turns"), "{err}");
    drop(registry);
    test.rollback().await.unwrap();
    assert!(
        committed_names(&t).await.is_empty(),
        "nothing of the test remains"
    );
    t.cleanup().await;
}

/// Registers an agent and a welcome, then fails, joined to its caller without a
/// savepoint: the caller's transaction can no longer commit.
#[safe_db_operation(savepoint = false)]
async fn register_then_fail(tx: &Tx, name: &str, welcomes: Arc<AtomicU32>) -> Result<(), Error> {
    create_agent(tx, name).await?;
    tx.on_commit(async move {
        welcomes.fetch_add(1, Ordering::SeqCst);
    });
    Err(Error::validation("refused after the write"))
}

/// In production a failed `savepoint = false` operation dooms the level it joined, which
/// never commits, so its callback never runs: in a test it is not captured either.
#[tokio::test]
async fn a_failed_joined_operation_leaves_no_callback_to_run() {
    for t in api_db("testing_joined_callback").await {
        let welcomes = Arc::new(AtomicU32::new(0));
        let test = TestTx::begin(&t.db).await.unwrap();
        let err = register_then_fail(&test, "ada", Arc::clone(&welcomes))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(test.captured(), 0, "{:?}", t.backend);
        assert!(test.run_captured().await.is_empty(), "{:?}", t.backend);
        assert_eq!(welcomes.load(Ordering::SeqCst), 0, "{:?}", t.backend);
        drop(test);
        // As in production: called with the connection, nothing is committed, nothing runs.
        register_then_fail(&t.db, "ada", Arc::clone(&welcomes))
            .await
            .unwrap_err();
        assert_eq!(welcomes.load(Ordering::SeqCst), 0, "{:?}", t.backend);
        assert!(committed_names(&t).await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// A lost connection injected at the commit on SQLite is `Unavailable`, as a real one
/// there (no server holds the outcome): never `CommitUnknown`.
#[tokio::test]
async fn an_injected_lost_connection_at_commit_on_sqlite_is_unavailable() {
    for t in TestDb::empty_on(&[Backend::Sqlite], "testing_lost_commit", 2).await {
        agents_api::migrate(&t.db).await.unwrap();
        let faults = Faults::new().fail_commit("create_agent", Failure::LostConnection);
        let err = faults.run(create_agent(&t.db, "ada")).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert_eq!(faults.fired(), 1);
        assert!(committed_names(&t).await.is_empty());
        t.cleanup().await;
    }
}

#[test]
#[should_panic(expected = "`Faults::times(2)` must follow a fault")]
fn times_before_any_fault_is_refused() {
    let _ = Faults::new().times(2);
}

/// Registers an agent in a transaction of its own, whatever its caller does.
#[safe_db_operation(requires_new)]
async fn register_independently(tx: &Tx, name: &str) -> Result<(), Error> {
    use sea_orm::{ActiveModelTrait, Set};
    let model = agents_api::agent::ActiveModel {
        name: Set(name.to_owned()),
        ..Default::default()
    };
    model.insert(tx).await?;
    Ok(())
}

/// Read-only, so that on SQLite (one writer) the `requires_new` operation may write.
#[safe_db_operation(read_only, retries = 3)]
async fn register_through(tx: &Tx, name: &str, attempts: &AtomicU32) -> Result<(), Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    register_independently(tx, name).await?;
    Ok(())
}

/// A conflict lost by a `requires_new` operation, passed on with `?`, is retried by its
/// caller: the transaction that lost it rolled back, so the caller may re-run. A failure
/// that is not a conflict still returns at once.
#[tokio::test]
async fn a_conflict_passed_on_from_a_requires_new_operation_is_retried() {
    for t in api_db("testing_requires_new_retry").await {
        let attempts = AtomicU32::new(0);
        let faults = Faults::new()
            .fail_statement("register_independently", 1, Failure::SerializationFailure)
            .times(1);
        faults
            .run(register_through(&t.db, "ada", &attempts))
            .await
            .unwrap();
        assert_eq!(faults.fired(), 1, "{:?}", t.backend);
        assert_eq!(attempts.load(Ordering::SeqCst), 2, "{:?}", t.backend);
        assert_eq!(committed_names(&t).await, vec!["ada"], "{:?}", t.backend);

        let attempts = AtomicU32::new(0);
        let faults =
            Faults::new().fail_statement("register_independently", 1, Failure::UniqueViolation);
        let err = faults
            .run(register_through(&t.db, "grace", &attempts))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UniqueViolation, "{err}");
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "{:?}", t.backend);
        assert_eq!(committed_names(&t).await, vec!["ada"], "{:?}", t.backend);
        t.cleanup().await;
    }
}
