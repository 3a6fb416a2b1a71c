//! The axum integration: every route and error mapping in-process, a real socket, a
//! client that goes away, a streaming body, 200 concurrent renames, and an audit
//! middleware whose copy of the extensions outlives the request.

use std::sync::Arc;
use std::time::Duration;

#[path = "../common/mod.rs"]
mod common;
mod deadlines;
mod layer;

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
            // The rollback runs off the request's path: waited for, up to 5 s.
            let in_tx = || {
                safe_db_test_support::ids(
                    &t.db,
                    "SELECT count(*)::int FROM pg_locks l \
                     JOIN pg_class c ON c.oid = l.relation \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = current_schema() AND c.relname = 'agents' \
                     AND l.pid <> pg_backend_pid()",
                )
            };
            safe_db_test_support::eventually(Duration::from_secs(5), || async {
                in_tx().await == vec![0]
            })
            .await;
            assert_eq!(in_tx().await, vec![0]);
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

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    addr
}
