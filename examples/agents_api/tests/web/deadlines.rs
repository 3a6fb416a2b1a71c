//! Request deadlines: the layer's own, and a tower timeout inside and outside it.

use super::*;

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

/// Writes, then consumes an in-memory channel that is always ready: every poll spends the
/// task's whole tokio budget and never waits.
async fn write_then_spin(tx: RequestTx) -> StatusCode {
    create_agent(&tx, "spinner").await.unwrap();
    spin().await
}

async fn spin() -> StatusCode {
    let (send, mut receive) = tokio::sync::mpsc::unbounded_channel::<u8>();
    loop {
        let _ = send.send(1);
        receive.recv().await;
    }
}

#[tokio::test]
async fn the_layer_deadline_cuts_off_a_handler_that_spends_its_whole_budget() {
    for (t, db) in api_db("web_spin", ALL, 2).await {
        let app = Router::new()
            .route("/spin", post(write_then_spin))
            .route("/spin_unused", post(spin))
            .layer(TxLayer::new(db).timeout(Duration::from_millis(200)));
        for path in ["/spin_unused", "/spin"] {
            let started = std::time::Instant::now();
            let answered =
                tokio::time::timeout(Duration::from_secs(3), call(&app, "POST", path, None)).await;
            let (status, body, _) = answered.unwrap_or_else(|_| {
                panic!(
                    "{:?} {path}: still running 3 s after its 200 ms deadline",
                    t.backend
                )
            });
            assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                t.backend
            );
        }
        // The spinning handler's write is rolled back.
        assert!(names(&t).await.is_empty(), "{:?}", t.backend);
        t.cleanup().await;
    }
}
