//! The axum integration: every route and error mapping in-process, a real socket, a
//! client that goes away, a streaming body, 200 concurrent renames, and an audit
//! middleware whose copy of the extensions outlives the request.

use std::sync::Arc;
use std::time::Duration;

mod common;

use agents_api::{self, create_agent, routes, with_transactions};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use common::call;
use safe_db::axum::{RequestTx, TxLayer};
use safe_db::{Db, Error};
use safe_db_test_support::{Backend, TestDb};
use serde_json::{Value, json};

/// A namespace with the API's schema (ids assigned by the database).
async fn api_db(test: &str, backends: &[Backend], pool: u32) -> Vec<(TestDb, Db)> {
    let mut out = Vec::new();
    for t in TestDb::empty_on(backends, test, pool).await {
        agents_api::migrate(&t.db).await.unwrap();
        let db = Db::new(t.pool(pool).await, None);
        out.push((t, db));
    }
    out
}

const ALL: &[Backend] = &[Backend::Sqlite, Backend::Postgres, Backend::MySql];

async fn names(t: &TestDb) -> Vec<(i32, String)> {
    let stmt = sea_orm::Statement::from_string(
        sea_orm::ConnectionTrait::get_database_backend(&t.db),
        "SELECT id, name FROM agents ORDER BY id",
    );
    sea_orm::ConnectionTrait::query_all_raw(&t.db, stmt)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_route_and_error_mapping() {
    for (t, db) in api_db("web_routes", ALL, 5).await {
        let app = agents_api::app(db);
        let b = t.backend;

        let (status, ada, _) = call(&app, "POST", "/agents", Some(json!({"name": "Ada"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{b:?} {ada}");
        let id = ada["id"].as_i64().unwrap();
        assert_eq!(names(&t).await, vec![(id as i32, "Ada".into())]);

        let (status, got, _) = call(&app, "GET", &format!("/agents/{id}"), None).await;
        assert_eq!(
            (status, got["name"].as_str()),
            (StatusCode::OK, Some("Ada"))
        );

        let (status, renamed, _) = call(
            &app,
            "PATCH",
            &format!("/agents/{id}"),
            Some(json!({"name": "Ada Lovelace"})),
        )
        .await;
        assert_eq!(
            (status, renamed["name"].as_str()),
            (StatusCode::OK, Some("Ada Lovelace"))
        );
        assert_eq!(names(&t).await, vec![(id as i32, "Ada Lovelace".into())]);

        for name in ["Grace", "Alan", "Edsger"] {
            call(&app, "POST", "/agents", Some(json!({ "name": name }))).await;
        }
        let (status, page, _) = call(&app, "GET", "/agents?page=1&per_page=2", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["total"], 4);
        let page_names: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(page_names, ["Alan", "Edsger"]);

        // Errors: status, problem+json body, and nothing written.
        let (status, problem, content_type) = call(&app, "GET", "/agents/9999", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        assert_eq!(
            problem,
            json!({"type": "urn:safe-db:problem:not-found", "title": "Not Found", "status": 404, "detail": "agent 9999 not found"})
        );

        let (status, problem, _) =
            call(&app, "POST", "/agents", Some(json!({"name": "Grace"}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{b:?} {problem}");
        assert_eq!(
            problem["detail"],
            "The resource conflicts with an existing one."
        );
        let leaked = problem.to_string().to_lowercase();
        assert!(
            !leaked.contains("agents") && !leaked.contains("unique") && !leaked.contains("insert"),
            "{problem}"
        );

        let (status, problem, _) = call(&app, "POST", "/agents", Some(json!({"name": "  "}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            problem["detail"],
            "an agent's name must have 1 to 100 characters"
        );

        let (status, _, _) = call(&app, "GET", "/agents?per_page=0", None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

        let (status, _, _) = call(&app, "PATCH", "/agents/9999", Some(json!({"name": "x"}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, body, _) = call(&app, "DELETE", &format!("/agents/{id}"), None).await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        let (status, _, _) = call(&app, "DELETE", &format!("/agents/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(names(&t).await.len(), 3);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_request_that_fails_after_writing_leaves_nothing_behind() {
    for (t, db) in api_db("web_batch", ALL, 5).await {
        let app = agents_api::app(db);
        // The third name repeats the first: the whole batch is one request transaction.
        let (status, _, _) =
            call(&app, "POST", "/agents/batch", Some(json!(["a", "b", "a"]))).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(names(&t).await, vec![], "{:?}", t.backend);
        let (status, created, _) =
            call(&app, "POST", "/agents/batch", Some(json!(["a", "b"]))).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(names(&t).await.len(), 2);
        t.cleanup().await;
    }
}

/// Writes, then answers with the status it is asked for: the request's transaction
/// commits on 2xx/3xx only.
async fn write_then(
    tx: RequestTx,
    axum::extract::Path(code): axum::extract::Path<u16>,
) -> Result<StatusCode, Error> {
    create_agent(&tx, &format!("status-{code}")).await?;
    Ok(StatusCode::from_u16(code).unwrap())
}

async fn write_then_panic(tx: RequestTx) -> StatusCode {
    create_agent(&tx, "panicked").await.unwrap();
    panic!("handler panicked after writing");
}

async fn write_then_hang(tx: RequestTx) -> StatusCode {
    create_agent(&tx, "abandoned").await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    StatusCode::OK
}

async fn write_then_stream(tx: RequestTx) -> Result<Body, Error> {
    create_agent(&tx, "streamed").await?;
    let chunks = futures_util::stream::unfold(0, |n| async move {
        if n == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(format!("chunk {n}\n")), n + 1))
    });
    Ok(Body::from_stream(chunks))
}

/// Registers an after-commit callback on the request's transaction, then answers `code`.
async fn write_with_callback(
    tx: RequestTx,
    axum::extract::Path(code): axum::extract::Path<u16>,
) -> Result<StatusCode, Error> {
    create_agent(&tx, &format!("hooked-{code}")).await?;
    tx.get()
        .await?
        .on_commit(async move { CALLBACKS.lock().unwrap().push(code) });
    Ok(StatusCode::from_u16(code).unwrap())
}

static CALLBACKS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A handler that never touches the database but hands a copy of the request's
/// extensions to background work that outlives the request.
async fn background_without_database(request: Request<Body>) -> StatusCode {
    let extensions = request.extensions().clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(extensions);
    });
    StatusCode::ACCEPTED
}

/// What the spawned task of `write_then_keep` got when it used the request's
/// transaction after the request.
static LATE_USE: std::sync::Mutex<Option<Result<(), String>>> = std::sync::Mutex::new(None);

/// Writes, then keeps the RequestTx in a spawned task that uses it after the request.
async fn write_then_keep(tx: RequestTx) -> Result<StatusCode, Error> {
    create_agent(&tx, "kept-too-long").await?;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let late = create_agent(&tx, "written-late").await;
        *LATE_USE.lock().unwrap() = Some(late.map(drop).map_err(|e| e.to_string()));
    });
    Ok(StatusCode::OK)
}

fn test_app(db: Db) -> Router {
    with_transactions(
        routes()
            .route("/hooked/{code}", post(write_with_callback))
            .route("/status/{code}", post(write_then))
            .route("/panic", post(write_then_panic))
            .route("/hang", post(write_then_hang))
            .route("/stream", post(write_then_stream))
            .route("/background", post(background_without_database))
            .route("/keep", post(write_then_keep)),
        db,
    )
}

#[tokio::test]
async fn commits_on_success_rolls_back_on_4xx_5xx_and_panic() {
    for (t, db) in api_db("web_status", ALL, 5).await {
        let app = test_app(db);
        for code in [200u16, 201, 204, 303, 400, 404, 409, 500, 503] {
            let (status, _, _) = call(&app, "POST", &format!("/status/{code}"), None).await;
            assert_eq!(status.as_u16(), code);
        }
        let kept: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            kept,
            ["status-200", "status-201", "status-204", "status-303"],
            "{:?}",
            t.backend
        );

        // After-commit callbacks run after the request's commit, and only then.
        CALLBACKS.lock().unwrap().clear();
        for code in [201u16, 409] {
            call(&app, "POST", &format!("/hooked/{code}"), None).await;
        }
        assert_eq!(*CALLBACKS.lock().unwrap(), vec![201]);
        assert!(names(&t).await.iter().any(|(_, n)| n == "hooked-201"));
        assert!(names(&t).await.iter().all(|(_, n)| n != "hooked-409"));

        let panicked = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "POST", "/panic", None).await }
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
        assert!(names(&t).await.iter().all(|(_, n)| n != "panicked"));
        t.cleanup().await;
    }
}

async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_real_socket_with_a_client_that_goes_away_and_a_streaming_body() {
    for (t, db) in api_db("web_socket", &[Backend::Sqlite, Backend::Postgres], 5).await {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(axum::serve(listener, test_app(db.clone())).into_future());

        let body = r#"{"name":"socket"}"#;
        let answer = raw_http(addr, &format!(
            "POST /agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        assert!(names(&t).await.iter().any(|(_, n)| n == "socket"));

        // A client that sends its request and goes away: the write is rolled back.
        {
            use tokio::io::AsyncWriteExt;
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            names(&t).await.iter().all(|(_, n)| n != "abandoned"),
            "{:?}",
            t.backend
        );
        if t.backend == Backend::Postgres {
            // Rolled back, not merely invisible: no session is left inside a transaction
            // that wrote to this test's table (other tests' sessions share the database,
            // so count the locks on this schema's `agents`, not every idle session).
            let in_tx = safe_db_test_support::ids(
                &t.db,
                "SELECT count(*)::int FROM pg_locks l \
                 JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relname = 'agents' \
                 AND l.pid <> pg_backend_pid()",
            )
            .await;
            assert_eq!(in_tx, vec![0]);
        }

        // A streaming body: the transaction is committed before the body is sent, so
        // the row is visible to others while the body still streams.
        let client = tokio::spawn(raw_http(
            addr,
            "POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!client.is_finished(), "the body is still streaming");
        assert!(
            names(&t).await.iter().any(|(_, n)| n == "streamed"),
            "committed before the body was sent"
        );
        let streamed = client.await.unwrap();
        assert!(streamed.contains("chunk 2"), "{streamed}");

        server.abort();
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_renames_end_consistent_with_no_500s() {
    for (t, db) in api_db("web_concurrent", ALL, 10).await {
        let app = agents_api::app(db);
        for name in ["r0", "r1", "r2", "r3", "r4"] {
            call(&app, "POST", "/agents", Some(json!({ "name": name }))).await;
        }
        let app = Arc::new(app);
        let requests: Vec<_> = (0..200)
            .map(|i| {
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    let id = i % 5 + 1;
                    call(
                        &app,
                        "PATCH",
                        &format!("/agents/{id}"),
                        Some(json!({ "name": format!("renamed-{i}") })),
                    )
                    .await
                    .0
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for r in requests {
            statuses.push(r.await.unwrap());
        }
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{:?}: {statuses:?}",
            t.backend
        );
        // Each agent ends with the name of one of the requests that targeted it.
        let rows = names(&t).await;
        assert_eq!(rows.len(), 5);
        for (id, name) in rows {
            let i: i32 = name.strip_prefix("renamed-").unwrap().parse().unwrap();
            assert_eq!(i % 5 + 1, id, "{name} on agent {id}");
        }
        t.cleanup().await;
    }
}

#[tokio::test]
async fn request_tx_without_the_layer_is_a_clear_500() {
    let t = TestDb::sqlite("web_no_layer", 2).await;
    let app: Router = Router::new().route("/status/{code}", post(write_then));
    let (status, problem, _) = call(&app, "POST", "/status/200", None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(problem["detail"], "An internal error occurred.");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_request_whose_transaction_began_is_affected_by_what_outlives_it() {
    for (t, db) in api_db("web_outlive", ALL, 5).await {
        let app = test_app(db);
        // No transaction: copies of the extensions in background work change nothing.
        let (status, _, _) = call(&app, "POST", "/background", None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{:?}", t.backend);

        // A transaction kept past its request: the request fails (it cannot be committed
        // under the copy), and the copy's later use fails instead of reporting Ok for work
        // that is never committed.
        *LATE_USE.lock().unwrap() = None;
        let (status, _, _) = call(&app, "POST", "/keep", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{:?}", t.backend);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let late = LATE_USE.lock().unwrap().clone().expect("the task ran");
        let err = late.expect_err("a statement after the request must fail");
        assert!(err.contains("used after its request ended"), "{err}");
        assert_eq!(names(&t).await, vec![], "{:?}", t.backend);
        t.cleanup().await;
    }
}

// ---- request deadlines ----

/// Writes, then runs a statement of `secs` seconds in the request's transaction.
async fn write_then_sleep(
    tx: RequestTx,
    axum::extract::Path(secs): axum::extract::Path<u32>,
) -> Result<StatusCode, Error> {
    create_agent(&tx, &format!("sleeper-{secs}")).await?;
    let request_tx = tx.get().await?;
    let sql = match sea_orm::ConnectionTrait::get_database_backend(request_tx) {
        sea_orm::DbBackend::Postgres => format!("SELECT pg_sleep({secs})"),
        _ => format!("SELECT SLEEP({secs})"),
    };
    sea_orm::ConnectionTrait::execute_unprepared(request_tx, &sql).await?;
    Ok(StatusCode::OK)
}

static SLOW_CALLBACKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Writes, and registers an after-commit callback that takes 600 ms.
async fn write_with_slow_callback(tx: RequestTx) -> Result<StatusCode, Error> {
    create_agent(&tx, "slow-callback").await?;
    tx.get().await?.on_commit(async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        SLOW_CALLBACKS.lock().unwrap().push("ran".into());
    });
    Ok(StatusCode::OK)
}

/// A tower timeout of 300 ms, its error answered with 408.
fn tower_timeout() -> (
    axum::error_handling::HandleErrorLayer<
        impl Fn(tower::BoxError) -> std::future::Ready<StatusCode> + Clone,
        (),
    >,
    tower::timeout::TimeoutLayer,
) {
    (
        axum::error_handling::HandleErrorLayer::new(|_: tower::BoxError| {
            std::future::ready(StatusCode::REQUEST_TIMEOUT)
        }),
        tower::timeout::TimeoutLayer::new(Duration::from_millis(300)),
    )
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    addr
}

fn post_request(path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_deadline_rolls_back_and_stops_the_statement_on_the_server() {
    // SQLite has no statement that sleeps.
    for (t, db) in api_db("web_deadline", &[Backend::Postgres, Backend::MySql], 2).await {
        let app = Router::new()
            .route("/sleep/{secs}", post(write_then_sleep))
            .layer(TxLayer::new(db).timeout(Duration::from_millis(300)));
        let addr = serve(app).await;
        let started = std::time::Instant::now();
        let answer = raw_http(addr, &post_request("/sleep/8")).await;
        let took = started.elapsed();
        assert!(
            answer.starts_with("HTTP/1.1 504"),
            "{:?}: {answer}",
            t.backend
        );
        assert!(answer.contains("application/problem+json"), "{answer}");
        // Within the deadline and a margin: the server stopped the 8 s statement, so the
        // rollback did not wait for it.
        assert!(took < Duration::from_secs(2), "{:?}: {took:?}", t.backend);
        assert_eq!(names(&t).await, vec![], "{:?}", t.backend);
        // The pool serves the next request at once, and it commits.
        let answer = raw_http(addr, &post_request("/sleep/0")).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{:?}: {answer}",
            t.backend
        );
        let kept: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(kept, ["sleeper-0"], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_timeout_inside_tx_layer_rolls_back_without_waiting_for_the_statement() {
    // SQLite has no statement that sleeps.
    for (t, db) in api_db("web_tower_inside", &[Backend::Postgres, Backend::MySql], 2).await {
        // The route's own layer runs inside TxLayer: its timeout drops the handler, and
        // TxLayer rolls the transaction back.
        let app = Router::new()
            .route(
                "/sleep/{secs}",
                post(write_then_sleep).layer(tower_timeout()),
            )
            .layer(TxLayer::new(db));
        let addr = serve(app).await;
        let started = std::time::Instant::now();
        let answer = raw_http(addr, &post_request("/sleep/2")).await;
        let took = started.elapsed();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{:?}: {answer}",
            t.backend
        );
        assert_eq!(names(&t).await, vec![], "{:?}", t.backend);
        // The rollback does not wait behind the statement the timeout abandoned (the
        // server was not told to stop it; TxLayer::timeout tells it): the transaction is
        // dropped, its rollback queued, and the pool closes the busy connection.
        assert!(
            took < Duration::from_millis(1500),
            "{:?}: {took:?}",
            t.backend
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_timeout_outside_tx_layer_can_answer_timeout_for_a_commit() {
    for (t, db) in api_db("web_tower_outside", ALL, 2).await {
        SLOW_CALLBACKS.lock().unwrap().clear();
        let app = Router::new()
            .route("/slow-callback", post(write_with_slow_callback))
            .layer(TxLayer::new(db))
            .layer(tower_timeout());
        let addr = serve(app).await;
        let answer = raw_http(addr, &post_request("/slow-callback")).await;
        // The hazard the docs warn of: the client is told the request timed out...
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        // ...yet it committed, and its callback still runs, exactly once.
        let kept: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(kept, ["slow-callback"], "{:?}", t.backend);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(*SLOW_CALLBACKS.lock().unwrap(), ["ran"], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_request_is_one_operation_whose_span_holds_the_handler_and_its_nested_operations() {
    let (t, db) = api_db("web_span", &[Backend::Sqlite], 2).await.remove(0);
    let app = test_app(db);
    let (captured, guard) = safe_db_test_support::capture::start();
    call(&app, "POST", "/status/201", None).await;
    call(&app, "POST", "/status/409", None).await;
    drop(guard);
    let spans: Vec<_> = captured
        .spans()
        .into_iter()
        .filter(|s| s.name == "safe_db.operation")
        .collect();
    let named = |name: &str| {
        spans
            .iter()
            .filter(|s| s.fields.get("operation").map(String::as_str) == Some(name))
            .cloned()
            .collect::<Vec<_>>()
    };
    let requests = named("request");
    assert_eq!(requests.len(), 2, "{}", captured.all_text());
    // Begun like any operation (its attempt and depth recorded), ended through the same
    // commit and rollback, with the real reason for the rollback.
    assert_eq!(requests[0].fields["outcome"], "committed");
    assert_eq!(requests[0].fields["attempt"], "1");
    assert_eq!(requests[0].fields["depth"], "0");
    assert_eq!(requests[1].fields["outcome"], "rolled_back");
    assert_eq!(
        requests[1].fields["reason"],
        "the response was 409 Conflict"
    );
    // The handler runs in the request's span: its nested operations are children.
    let nested = named("create_agent");
    assert_eq!(nested.len(), 2, "{}", captured.all_text());
    assert!(
        nested
            .iter()
            .all(|s| s.parent_operation.as_deref() == Some("request")),
        "{nested:?}"
    );
    let kept: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
    assert_eq!(kept, ["status-201"]);
    t.cleanup().await;
}

/// Reads the request transaction's isolation level, as the server reports it.
async fn show_isolation(tx: RequestTx) -> Result<String, Error> {
    let tx = tx.get().await?;
    let row = sea_orm::ConnectionTrait::query_one_raw(
        tx,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_setting('transaction_isolation') || ' ' || \
             current_setting('transaction_read_only')",
        ),
    )
    .await?
    .expect("one row");
    Ok(row.try_get_by_index::<String>(0)?)
}

#[tokio::test]
async fn the_layer_sets_isolation_and_read_only_on_the_server() {
    for (t, db) in api_db("web_layer_options", &[Backend::Postgres], 2).await {
        let plain = Router::new()
            .route("/show", post(show_isolation))
            .layer(TxLayer::new(db.clone()));
        let (_, body, _) = call(&plain, "POST", "/show", None).await;
        assert_eq!(body, Value::String("read committed off".into()));
        let strict = Router::new().route("/show", post(show_isolation)).layer(
            TxLayer::new(db)
                .isolation(safe_db::Isolation::Serializable)
                .read_only(),
        );
        let (_, body, _) = call(&strict, "POST", "/show", None).await;
        assert_eq!(body, Value::String("serializable on".into()));
        t.cleanup().await;
    }
}

/// Sends `request` over a real socket and returns the status line, the content type and
/// the body.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> (String, String, Value) {
    let answer = raw_http(addr, request).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let body = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, content_type, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_problem_response_over_a_real_socket() {
    for (t, db) in api_db("web_rejections", &[Backend::Sqlite], 2).await {
        let addr = serve(agents_api::app(db)).await;
        let json = |method: &str, path: &str, body: &str| {
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let cases = [
            (
                "malformed JSON",
                json("POST", "/agents", "{\"name\": "),
                "400",
            ),
            ("a missing field", json("POST", "/agents", "{}"), "422"),
            (
                "no JSON content type",
                "POST /agents HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\
                 \r\n\r\n{}"
                    .to_owned(),
                "415",
            ),
            ("a bad path parameter", get("/agents/abc"), "400"),
            ("a bad query string", get("/agents?page=minus-one"), "400"),
            (
                "an unknown agent (safe-db's own)",
                get("/agents/999"),
                "404",
            ),
            ("an unknown path (axum's router)", get("/nowhere"), "404"),
        ];
        for (what, request, code) in cases {
            let (status, content_type, body) = exchange(addr, &request).await;
            assert!(status.contains(code), "{what}: {status}");
            assert_eq!(content_type, "application/problem+json", "{what}");
            assert_eq!(
                body["status"],
                code.parse::<u16>().unwrap(),
                "{what}: {body}"
            );
            assert!(
                body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{what}: {body}"
            );
        }
        // Nothing was written by any of them.
        assert!(names(&t).await.is_empty());
        t.cleanup().await;
    }
}

/// Audited in a transaction of its own: it stays when the request rolls back.
#[safe_db::safe_db_operation(requires_new)]
async fn audit(tx: &safe_db::Tx, what: &str) -> Result<(), Error> {
    create_agent(tx, what).await.map(drop)
}

/// Joins the request's transaction without a savepoint, writes, then fails.
#[safe_db::safe_db_operation(savepoint = false)]
async fn write_then_fail_joined(tx: &safe_db::Tx, name: &str) -> Result<(), Error> {
    create_agent(tx, name).await?;
    Err(Error::validation(
        "failed after writing, without a savepoint",
    ))
}

/// Audits, writes in the request's transaction, then answers 409: only the audit stays.
async fn audited_conflict(tx: RequestTx) -> Result<StatusCode, Error> {
    audit(&tx, "audit-row").await?;
    create_agent(&tx, "request-row").await?;
    Ok(StatusCode::CONFLICT)
}

/// Swallows a `savepoint = false` failure and answers 200: the request must not commit.
async fn swallowed_joined_failure(tx: RequestTx) -> Result<StatusCode, Error> {
    create_agent(&tx, "request-row").await?;
    let _ = write_then_fail_joined(&tx, "joined-row").await;
    Ok(StatusCode::OK)
}

#[tokio::test]
async fn propagation_through_the_request_transaction() {
    for (t, db) in api_db("web_propagation", ALL, 5).await {
        let app = with_transactions(
            routes()
                .route("/audited", post(audited_conflict))
                .route("/swallowed", post(swallowed_joined_failure)),
            db,
        );
        let (status, _, _) = call(&app, "POST", "/audited", None).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let rows: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(rows, vec!["audit-row"], "{:?}", t.backend);

        let (status, body, _) = call(&app, "POST", "/swallowed", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        let rows: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(
            rows,
            vec!["audit-row"],
            "{:?}: nothing of the request",
            t.backend
        );
        t.cleanup().await;
    }
}

/// What `audit_log` got when it asked its copy of the extensions for the request's
/// transaction after the response, one entry per request.
static AUDITED: std::sync::Mutex<Vec<Result<(), String>>> = std::sync::Mutex::new(Vec::new());

/// An audit logger, as a middleware inside `TxLayer`: it copies the request's extensions
/// (where `TxLayer` put the request's transaction) and logs from a task of its own, 50 ms
/// after the response, so the copy outlives the request. It then tries to take the
/// request's transaction from its copy, which must fail.
async fn audit_log(
    request: Request<Body>,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let extensions = request.extensions().clone();
    let response = next.run(request).await;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.extensions = extensions;
        let late =
            <RequestTx as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &())
                .await;
        AUDITED
            .lock()
            .unwrap()
            .push(late.map(drop).map_err(|e| e.to_string()));
    });
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_middleware_that_copies_the_extensions_does_not_hold_the_transaction() {
    for (t, db) in api_db("web_audit", ALL, 5).await {
        // Only a live RequestTx keeps the request from committing; a copy of the request's
        // extensions, alive when the handler has returned, is no holder.
        let app = with_transactions(routes().layer(axum::middleware::from_fn(audit_log)), db);
        let addr = serve(app).await;
        AUDITED.lock().unwrap().clear();
        let body = r#"{"name":"audited"}"#;
        let answer = raw_http(addr, &format!(
            "POST /agents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "{:?}: {answer}",
            t.backend
        );
        let kept: Vec<String> = names(&t).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(kept, ["audited"], "{:?}", t.backend);
        // The copy was still alive when the request committed; used after the request,
        // it gives no transaction.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let audited = AUDITED.lock().unwrap().clone();
        assert_eq!(audited.len(), 1, "{:?}", t.backend);
        let err = audited[0]
            .clone()
            .expect_err("no transaction after the request");
        assert!(err.contains("used after its request ended"), "{err}");
        t.cleanup().await;
    }
}
