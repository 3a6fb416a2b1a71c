//! What the layer is on the server and in traces: one operation per request with its
//! span, isolation and read-only in force, and every rejection a problem response.

use super::*;

#[tokio::test]
async fn a_request_is_one_operation_whose_span_holds_the_handler_and_its_nested_operations() {
    let (t, db) = api_db("web_span", &[Backend::Sqlite], 2).await.remove(0);
    let app = test_app(db);
    let (captured, guard) = safe_db_test_support::capture::start();
    call(&app, "POST", "/status/201", None).await;
    call(&app, "POST", "/status/409", None).await;
    // A handler that takes no `RequestTx` (a read on the pool) makes no request span.
    call(&app, "GET", "/agents/1", None).await;
    drop(guard);
    let named = |name: &str| captured.operations(name);
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
    let reads = named("get_agent");
    assert_eq!(reads.len(), 1, "{}", captured.all_text());
    assert_eq!(reads[0].parent_operation, None, "{reads:?}");
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

/// Takes its `RequestTx`, then does its work in a span of its own (as a
/// `#[tracing::instrument]`ed helper would), calling an operation with the `RequestTx`.
async fn write_in_a_step(tx: RequestTx) -> Result<StatusCode, Error> {
    use tracing::Instrument;
    let step = tracing::info_span!("handler_step");
    async { create_agent(&tx, "stepped").await }
        .instrument(step)
        .await?;
    Ok(StatusCode::CREATED)
}

#[tokio::test]
async fn the_handler_runs_in_the_request_span_and_its_own_spans_keep_their_children() {
    let (t, db) = api_db("web_span_steps", &[Backend::Sqlite], 2)
        .await
        .remove(0);
    let app = with_transactions(routes().route("/step", post(write_in_a_step)), db);
    let (captured, guard) = safe_db_test_support::capture::start();
    let (status, _, _) = call(&app, "POST", "/step", None).await;
    drop(guard);
    assert_eq!(status, StatusCode::CREATED);
    let spans = captured.spans();
    let named = |name: &str| spans.iter().find(|s| s.name == name).cloned();
    // The handler's own span, made in the poll that took the `RequestTx`, is the
    // request's child, as it was when the request span was made on arrival.
    let step = named("handler_step").expect("the handler's span");
    assert_eq!(
        step.parent_operation.as_deref(),
        Some("request"),
        "{spans:?}"
    );
    // The operation called with the `RequestTx` inside that span is the span's child.
    let op = spans
        .iter()
        .find(|s| s.fields.get("operation").map(String::as_str) == Some("create_agent"))
        .expect("the operation's span");
    assert_eq!(op.parent.as_deref(), Some("handler_step"), "{spans:?}");
    assert_eq!(names(&t).await.len(), 1);
    t.cleanup().await;
}

/// Takes a `RequestTx` and never uses it.
async fn takes_and_leaves(_tx: RequestTx) -> StatusCode {
    StatusCode::OK
}

/// Only an operation of its own (`requires_new`), the closure form, a joined operation and
/// one cut off before it could finish, then one in a task it awaits.
async fn every_kind(tx: RequestTx) -> Result<StatusCode, Error> {
    audit(&tx, "own").await?;
    safe_db::Options::new()
        .run_as("closure", &tx, async |tx: &safe_db::Tx| {
            create_agent(tx, "closure").await.map(drop)
        })
        .await?;
    joined_write(&tx, "joined").await?;
    let hang = safe_db::Options::new().run_as("hang", &tx, async |_: &safe_db::Tx| {
        std::future::pending::<Result<(), Error>>().await
    });
    let _ = tokio::time::timeout(Duration::from_millis(10), hang).await;
    let tx = Arc::new(tx);
    let spawned = Arc::clone(&tx);
    tokio::spawn(async move { create_agent(&*spawned, "spawned").await.map(drop) })
        .await
        .expect("the task ran")?;
    drop(tx);
    Ok(StatusCode::CREATED)
}

/// Joins the request's transaction without a savepoint.
#[safe_db::safe_db_operation(savepoint = false)]
async fn joined_write(tx: &safe_db::Tx, name: &str) -> Result<(), Error> {
    create_agent(tx, name).await.map(drop)
}

#[tokio::test]
async fn every_kind_of_operation_in_a_request_has_its_parent_and_its_end() {
    let (t, db) = api_db("web_span_kinds", &[Backend::Sqlite], 3)
        .await
        .remove(0);
    let app = with_transactions(
        routes()
            .route("/unused", post(takes_and_leaves))
            .route("/kinds", post(every_kind)),
        db,
    );
    let (captured, guard) = safe_db_test_support::capture::start();
    assert_eq!(call(&app, "POST", "/unused", None).await.0, StatusCode::OK);
    let (status, body, _) = call(&app, "POST", "/kinds", None).await;
    drop(guard);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let spans = captured.operation_spans();
    let op = |name: &str| captured.operations(name);
    let requests = op("request");
    assert_eq!(requests.len(), 2, "{spans:#?}");
    assert_eq!(requests[0].fields["outcome"], "unused", "{spans:#?}");
    assert_eq!(requests[1].fields["outcome"], "committed", "{spans:#?}");
    let audit = &op("audit")[0];
    assert_eq!(audit.parent_operation.as_deref(), Some("request"));
    assert_eq!(
        (
            audit.fields["outcome"].as_str(),
            audit.fields["depth"].as_str()
        ),
        ("committed", "0")
    );
    let closure = &op("closure")[0];
    assert_eq!(closure.parent_operation.as_deref(), Some("request"));
    assert_eq!(
        (
            closure.fields["outcome"].as_str(),
            closure.fields["depth"].as_str()
        ),
        ("committed", "1")
    );
    let joined = &op("joined_write")[0];
    assert_eq!(joined.parent_operation.as_deref(), Some("request"));
    assert_eq!(joined.fields["outcome"], "joined", "{joined:?}");
    assert_eq!(joined.fields["attempt"], "1", "{joined:?}");
    let creates = op("create_agent");
    // In audit, in the closure, in the joined operation, in the spawned task.
    assert_eq!(creates.len(), 4, "{spans:#?}");
    let parents: Vec<_> = creates
        .iter()
        .map(|s| s.parent_operation.as_deref().unwrap_or("-"))
        .collect();
    assert_eq!(parents, ["audit", "closure", "joined_write", "request"]);
    let hang = &op("hang")[0];
    assert_eq!(hang.parent_operation.as_deref(), Some("request"));
    assert_eq!(hang.fields["outcome"], "cancelled", "{hang:?}");
    assert!(hang.fields.contains_key("duration_ms"), "{hang:?}");
    for s in &spans {
        assert!(s.fields.contains_key("outcome"), "{s:?}");
    }
    t.cleanup().await;
}

/// The pool's only connection, held by the test until the handler's first BEGIN failed.
static HELD: std::sync::Mutex<Option<sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::Sqlite>>> =
    std::sync::Mutex::new(None);

/// Its first BEGIN fails (no connection); the second, once one is free, begins.
async fn begin_twice(tx: RequestTx) -> Result<StatusCode, Error> {
    assert!(tx.get().await.is_err(), "the pool had a connection");
    HELD.lock().unwrap().take();
    create_agent(&tx, "second-try").await?;
    Ok(StatusCode::CREATED)
}

#[tokio::test]
async fn a_failed_begin_then_a_second_try_each_end_their_own_span() {
    let (t, _) = api_db("web_span_retry", &[Backend::Sqlite], 1)
        .await
        .remove(0);
    let mut options = t.options(1);
    options.acquire_timeout(Duration::from_millis(100));
    let pool = sea_orm::Database::connect(options).await.unwrap();
    let held = pool.get_sqlite_connection_pool().acquire().await.unwrap();
    *HELD.lock().unwrap() = Some(held);
    let app = with_transactions(
        routes().route("/twice", post(begin_twice)),
        Db::new(pool, None),
    );
    let (captured, guard) = safe_db_test_support::capture::start();
    let (status, body, _) = call(&app, "POST", "/twice", None).await;
    drop(guard);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let spans = captured.operation_spans();
    let requests = captured.operations("request");
    assert_eq!(requests.len(), 2, "{spans:#?}");
    assert_eq!(requests[0].fields["outcome"], "not_begun", "{spans:#?}");
    assert_eq!(requests[0].fields["attempt"], "1", "{spans:#?}");
    assert!(requests[0].fields.contains_key("duration_ms"), "{spans:#?}");
    assert_eq!(requests[1].fields["outcome"], "committed", "{spans:#?}");
    assert_eq!(requests[1].fields["depth"], "0", "{spans:#?}");
    assert_eq!(names(&t).await.len(), 1);
    t.cleanup().await;
}

/// What the task of `begin_elsewhere` got from its operation.
static ELSEWHERE: std::sync::Mutex<Option<Result<(), String>>> = std::sync::Mutex::new(None);

/// Hands its `RequestTx` to a task whose operation waits for the pool's only connection,
/// and answers while that task is still beginning the request's transaction.
async fn begin_elsewhere(tx: RequestTx) -> StatusCode {
    tokio::spawn(async move {
        let got = create_agent(&tx, "begun-elsewhere").await;
        // Still held when the request ends (which waited for the BEGIN).
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(tx);
        *ELSEWHERE.lock().unwrap() = Some(got.map(drop).map_err(|e| e.to_string()));
    });
    // Long enough for the task to be waiting for a connection inside the BEGIN.
    tokio::time::sleep(Duration::from_millis(100)).await;
    StatusCode::ACCEPTED
}

#[tokio::test]
async fn a_request_that_ends_while_its_transaction_is_beginning_elsewhere_waits_then_fails() {
    for (t, db) in api_db("web_begin_elsewhere", ALL, 1).await {
        // The pool's only connection, given back 300 ms into the request.
        let held = sea_orm::TransactionTrait::begin(db.primary())
            .await
            .unwrap();
        let give_back = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            held.rollback().await.unwrap();
        });
        let app = with_transactions(
            routes().route("/elsewhere", post(begin_elsewhere)),
            db.clone(),
        );
        let started = std::time::Instant::now();
        let (status, body, _) = call(&app, "POST", "/elsewhere", None).await;
        // The request's end waited for the BEGIN it could not interrupt, then found the
        // transaction still held by the task: the request fails.
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.backend
        );
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{body} on {:?}",
            t.backend
        );
        give_back.await.unwrap();
        for _ in 0..100 {
            if ELSEWHERE.lock().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            ELSEWHERE.lock().unwrap().take().is_some(),
            "{:?}",
            t.backend
        );
        // Nothing of the request, or of the task (whose statement may have run before the
        // request ended), is committed.
        assert!(names(&t).await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}
