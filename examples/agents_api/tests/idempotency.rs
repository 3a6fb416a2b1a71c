//! Idempotency keys (issue 28): a create sent with an `Idempotency-Key` runs once, and its
//! retries get the first response, whatever happened to the first answer: a failed
//! request, a COMMIT whose answer was lost, a duplicate still in flight. After each, the
//! rows are read back: exactly one per key.

use std::time::Duration;

use agents_api::{routes, with_transactions};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::routing::post;
use http_body_util::BodyExt;
use safe_db::Db;
use safe_db::axum::{IDEMPOTENT_REPLAYED, Idempotency, RequestTx, TxLayer};
use safe_db::testing::{Failure, Faults};
use safe_db_test_support::proxy::FaultProxy;
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, Database};
use tower::ServiceExt;

const ALL: &[Backend] = &[Backend::Sqlite, Backend::Postgres, Backend::MySql];

async fn api_db(test: &str) -> Vec<TestDb> {
    let mut out = Vec::new();
    for t in TestDb::empty_on(ALL, test, 5).await {
        agents_api::migrate(&t.db).await.unwrap();
        out.push(t);
    }
    out
}

async fn send(app: &Router, key: Option<&str>, name: &str) -> (StatusCode, HeaderMap, Bytes) {
    send_to(app, "/agents", key, name).await
}

async fn send_to(
    app: &Router,
    uri: &str,
    key: Option<&str>,
    name: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let body = Body::from(serde_json::json!({ "name": name }).to_string());
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// How many agents have `name`, outside any transaction.
async fn agents_named(t: &TestDb, name: &str) -> i64 {
    let backend = t.db.get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => "SELECT COUNT(*) FROM agents WHERE name = $1",
        _ => "SELECT COUNT(*) FROM agents WHERE name = ?",
    };
    let stmt = sea_orm::Statement::from_sql_and_values(backend, sql, [name.into()]);
    let row = t.db.query_one_raw(stmt).await.unwrap().unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// A retry until the claim of a request that failed has been released (on a task of its
/// own, after the request's transaction ended).
async fn send_until_not_in_flight(
    app: &Router,
    key: &str,
    name: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    for _ in 0..100 {
        let answer = send(app, Some(key), name).await;
        if answer.0 != StatusCode::CONFLICT
            || !answer.2.starts_with(b"{\"detail\":\"A request with")
        {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the key stayed in flight");
}

#[tokio::test]
async fn a_retry_gets_the_first_response_and_the_handler_runs_once() {
    for t in api_db("idem_repeat").await {
        let app = with_transactions(routes(), Db::new(t.db.clone(), None));
        let first = send(&app, Some("k-ada"), "ada").await;
        assert_eq!(first.0, StatusCode::CREATED, "{:?}", t.backend);
        assert!(first.1.get(&IDEMPOTENT_REPLAYED).is_none());
        for _ in 0..3 {
            let again = send(&app, Some("k-ada"), "ada").await;
            assert_eq!(again.0, StatusCode::CREATED, "{:?}", t.backend);
            assert_eq!(again.2, first.2, "{:?}: the same body", t.backend);
            assert_eq!(
                again.1.get(header::CONTENT_TYPE),
                first.1.get(header::CONTENT_TYPE)
            );
            assert_eq!(again.1.get(&IDEMPOTENT_REPLAYED).unwrap(), "true");
        }
        // Without the key the same create is a new request: a unique conflict.
        assert_eq!(send(&app, None, "ada").await.0, StatusCode::CONFLICT);
        assert_eq!(agents_named(&t, "ada").await, 1, "{:?}", t.backend);

        // The same key with another request.
        let other = send(&app, Some("k-ada"), "bob").await;
        assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", t.backend);
        assert_eq!(agents_named(&t, "bob").await, 0, "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_failed_request_is_not_stored_and_its_retry_runs_again() {
    for t in api_db("idem_failed").await {
        let app = with_transactions(routes(), Db::new(t.db.clone(), None));
        // "dave" exists: the keyed create conflicts and rolls back.
        assert_eq!(send(&app, None, "dave").await.0, StatusCode::CREATED);
        assert_eq!(
            send(&app, Some("k-dave"), "dave").await.0,
            StatusCode::CONFLICT
        );
        t.db.execute_unprepared("DELETE FROM agents").await.unwrap();
        // The retry runs the handler again, now with success, stored from then on.
        let retry = send_until_not_in_flight(&app, "k-dave", "dave").await;
        assert_eq!(retry.0, StatusCode::CREATED, "{:?}", t.backend);
        assert!(retry.1.get(&IDEMPOTENT_REPLAYED).is_none());
        let replay = send(&app, Some("k-dave"), "dave").await;
        assert_eq!(replay.2, retry.2);
        assert_eq!(agents_named(&t, "dave").await, 1, "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_failed_commit_is_resolved_by_the_retry() {
    for t in api_db("idem_commit").await {
        let app = with_transactions(routes(), Db::new(t.db.clone(), None));
        let faults = Faults::new().fail_commit("request", Failure::LostConnection);
        let first = faults.run(send(&app, Some("k-erin"), "erin")).await;
        assert!(first.0.is_server_error(), "{:?}: {:?}", t.backend, first.0);
        assert_eq!(faults.fired(), 1);
        assert_eq!(agents_named(&t, "erin").await, 0, "{:?}", t.backend);
        let retry = send_until_not_in_flight(&app, "k-erin", "erin").await;
        assert_eq!(retry.0, StatusCode::CREATED, "{:?}", t.backend);
        assert_eq!(agents_named(&t, "erin").await, 1, "{:?}", t.backend);
        t.cleanup().await;
    }
}

async fn slow_create(tx: RequestTx, body: axum::Json<serde_json::Value>) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let name = body["name"].as_str().unwrap().to_owned();
    agents_api::create_agent(&tx, &name).await.unwrap();
    StatusCode::CREATED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_flight_is_409_and_then_replayed() {
    for t in api_db("idem_in_flight").await {
        let app = with_transactions(
            routes().route("/slow", post(slow_create)),
            Db::new(t.db.clone(), None),
        );
        let (a, b) = tokio::join!(send_to(&app, "/slow", Some("k-fay"), "fay"), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            send_to(&app, "/slow", Some("k-fay"), "fay").await
        });
        assert_eq!(a.0, StatusCode::CREATED, "{:?}", t.backend);
        assert_eq!(b.0, StatusCode::CONFLICT, "{:?}", t.backend);
        assert_eq!(b.1.get(header::RETRY_AFTER).unwrap(), "1");
        let later = send_to(&app, "/slow", Some("k-fay"), "fay").await;
        assert_eq!(later.0, StatusCode::CREATED);
        assert_eq!(later.1.get(&IDEMPOTENT_REPLAYED).unwrap(), "true");
        assert_eq!(agents_named(&t, "fay").await, 1, "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn keys_expire_are_swept_and_can_be_required() {
    for t in api_db("idem_expiry").await {
        let db = Db::new(t.db.clone(), None);
        let keys = Idempotency::new(t.db.clone()).ttl(Duration::from_millis(200));
        let app = routes()
            .layer(keys.clone().required())
            .layer(TxLayer::new(db.clone()))
            .with_state(db);
        assert_eq!(send(&app, None, "gus").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(agents_named(&t, "gus").await, 0);
        assert_eq!(
            send(&app, Some("k-gus"), "gus").await.0,
            StatusCode::CREATED
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Expired: the key runs again (a unique conflict now, since gus exists).
        let again = send(&app, Some("k-gus"), "gus").await;
        assert_eq!(again.0, StatusCode::CONFLICT, "{:?}", t.backend);
        assert!(again.1.get(&IDEMPOTENT_REPLAYED).is_none());
        assert_eq!(
            send(&app, Some("k-hal"), "hal").await.0,
            StatusCode::CREATED
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(keys.sweep().await.unwrap() >= 1, "{:?}", t.backend);
        let left =
            t.db.query_one_raw(sea_orm::Statement::from_string(
                t.db.get_database_backend(),
                "SELECT COUNT(*) FROM safe_db_idempotency",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get_by_index::<i64>(0)
            .unwrap();
        assert_eq!(left, 0, "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// The COMMIT reaches the server and its answer is lost (the connection freezes after
/// it): the client gets a 500 (`CommitUnknown`) and retries with its key; the response the
/// committed transaction stored is replayed, and the agent exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_resolved_by_the_retry() {
    for t in api_db("idem_lost").await {
        if t.backend == Backend::Sqlite {
            t.cleanup().await;
            continue; // no peer that can hang
        }
        let proxy = FaultProxy::start(&t.url).await;
        let through = t.pool_via(&proxy, 2).await;
        let db = Db::new(through, None);
        let app = routes()
            .layer(Idempotency::new(t.db.clone()))
            .layer(TxLayer::new(db.clone()).timeout(Duration::from_secs(1)))
            .with_state(db);
        proxy.freeze_after("COMMIT");
        let first = send(&app, Some("k-ivy"), "ivy").await;
        assert_eq!(proxy.frozen(), 1, "{:?}", t.backend);
        assert_eq!(
            first.0,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            t.backend
        );
        assert!(String::from_utf8_lossy(&first.2).contains("may or may not"));
        let retry = send_until_not_in_flight(&app, "k-ivy", "ivy").await;
        assert_eq!(retry.0, StatusCode::CREATED, "{:?}", t.backend);
        assert_eq!(
            retry.1.get(&IDEMPOTENT_REPLAYED).unwrap(),
            "true",
            "{:?}",
            t.backend
        );
        assert_eq!(agents_named(&t, "ivy").await, 1, "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// A request dropped at its deadline while its claim's `INSERT` waits (here on an
/// uncommitted row of the same key, held by another session) does not leave a claim that
/// nobody holds once the `INSERT` goes through: the claim is released, and the retry runs
/// at once instead of getting 409 until `lock_for` (60 s) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_while_claiming_leaves_no_claim_behind() {
    for t in api_db("idem_dropped").await {
        if t.backend == Backend::Sqlite {
            t.cleanup().await;
            continue; // one writer at a time: the claim cannot wait on a row
        }
        let db = Db::new(t.db.clone(), None);
        let app = routes()
            .layer(Idempotency::new(t.db.clone()))
            .layer(TxLayer::new(db.clone()).timeout(Duration::from_millis(300)))
            .with_state(db);
        let blocker = Database::connect(t.options(1)).await.unwrap();
        let begin = match t.backend {
            Backend::Postgres => "BEGIN",
            _ => "START TRANSACTION",
        };
        blocker.execute_unprepared(begin).await.unwrap();
        blocker
            .execute_unprepared(
                "INSERT INTO safe_db_idempotency (idem_key, fingerprint, token, state, \
                 locked_until, expires_at) VALUES ('k-kai', 'x', 'blocker', 0, 0, 0)",
            )
            .await
            .unwrap();
        let first = send(&app, Some("k-kai"), "kai").await;
        assert_eq!(first.0, StatusCode::GATEWAY_TIMEOUT, "{:?}", t.backend);
        // The other session gives the key up: the abandoned claim's INSERT goes through.
        blocker.execute_unprepared("ROLLBACK").await.unwrap();
        let retry = send_until_not_in_flight(&app, "k-kai", "kai").await;
        assert_eq!(retry.0, StatusCode::CREATED, "{:?}", t.backend);
        assert!(retry.1.get(&IDEMPOTENT_REPLAYED).is_none());
        assert_eq!(agents_named(&t, "kai").await, 1, "{:?}", t.backend);
        blocker.close().await.unwrap();
        t.cleanup().await;
    }
}

/// Eight clients send one keyed create at once and retry while it is in flight: every
/// one ends with the same response, and the agent exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_get_one_response_and_one_row() {
    for t in api_db("idem_concurrent").await {
        let app = with_transactions(routes(), Db::new(t.db.clone(), None));
        let clients = (0..8).map(|_| {
            let app = app.clone();
            tokio::spawn(async move { send_until_not_in_flight(&app, "k-jo", "jo").await })
        });
        let answers = futures_util::future::join_all(clients).await;
        let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
        for answer in &answers {
            assert_eq!(answer.0, StatusCode::CREATED, "{:?}", t.backend);
            assert_eq!(answer.2, answers[0].2, "{:?}: one response", t.backend);
        }
        let replayed = answers
            .iter()
            .filter(|a| a.1.get(&IDEMPOTENT_REPLAYED).is_some())
            .count();
        assert_eq!(replayed, 7, "{:?}: the handler ran once", t.backend);
        assert_eq!(agents_named(&t, "jo").await, 1, "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// What a key costs per request: keyed and unkeyed creates in interleaved rounds, on each
/// database (a measurement, not a check: `cargo test --release -p agents-api --test
/// idempotency -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "a measurement"]
async fn what_a_key_costs_per_request() {
    for t in api_db("idem_cost").await {
        let app = with_transactions(routes(), Db::new(t.db.clone(), None));
        let (mut plain, mut keyed) = (Duration::ZERO, Duration::ZERO);
        let rounds = 10;
        let per_round = 30;
        for round in 0..rounds {
            let started = std::time::Instant::now();
            for n in 0..per_round {
                let answer = send(&app, None, &format!("p{round}-{n}")).await;
                assert_eq!(answer.0, StatusCode::CREATED);
            }
            plain += started.elapsed();
            let started = std::time::Instant::now();
            for n in 0..per_round {
                let key = format!("k{round}-{n}");
                let answer = send(&app, Some(&key), &format!("k{round}-{n}")).await;
                assert_eq!(answer.0, StatusCode::CREATED);
            }
            keyed += started.elapsed();
        }
        let n = (rounds * per_round) as u32;
        println!(
            "{:?}: plain {:?}/request, keyed {:?}/request (x{:.2})",
            t.backend,
            plain / n,
            keyed / n,
            keyed.as_secs_f64() / plain.as_secs_f64()
        );
        t.cleanup().await;
    }
}

/// Review findings: outside `TxLayer` the handler never runs (its writes would commit on
/// their own); another caller's `Authorization` with the same key gets a 422, never the
/// stored response; keys differing in case are two keys on every database.
#[tokio::test]
async fn misplaced_layers_other_callers_and_key_case() {
    for t in api_db("idem_review").await {
        let db = Db::new(t.db.clone(), None);
        let wrong = routes()
            .layer(TxLayer::new(db.clone()))
            .layer(Idempotency::new(t.db.clone()))
            .with_state(db.clone());
        let answer = send(&wrong, Some("k-kim"), "kim").await;
        assert_eq!(
            answer.0,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{:?}",
            t.backend
        );
        assert_eq!(
            agents_named(&t, "kim").await,
            0,
            "{:?}: the handler did not run",
            t.backend
        );

        let app = with_transactions(routes(), db);
        let as_caller = |who: &'static str, key: &'static str, name: &'static str| {
            let app = app.clone();
            async move {
                let request = Request::builder()
                    .method("POST")
                    .uri("/agents")
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::AUTHORIZATION, who)
                    .header("idempotency-key", key)
                    .body(Body::from(serde_json::json!({ "name": name }).to_string()))
                    .unwrap();
                app.oneshot(request).await.unwrap().status()
            }
        };
        assert_eq!(
            as_caller("Bearer alice", "k-shared", "lee").await,
            StatusCode::CREATED
        );
        assert_eq!(
            as_caller("Bearer mallory", "k-shared", "lee").await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{:?}",
            t.backend
        );
        assert_eq!(
            send(&app, Some("Key-ABC"), "max").await.0,
            StatusCode::CREATED
        );
        assert_eq!(
            send(&app, Some("key-abc"), "ned").await.0,
            StatusCode::CREATED,
            "{:?}: another key",
            t.backend
        );
        assert_eq!(agents_named(&t, "ned").await, 1, "{:?}", t.backend);
        t.cleanup().await;
    }
}

/// Only the configured methods are keyed, required or not: a POST, not among them, runs
/// without a key, and its key is not looked at (another request under it is no 422).
#[tokio::test]
async fn only_the_configured_methods_are_keyed() {
    for t in api_db("idem_methods").await {
        let db = Db::new(t.db.clone(), None);
        let keys = Idempotency::new(t.db.clone())
            .methods([axum::http::Method::PUT])
            .required();
        let app = routes()
            .layer(keys)
            .layer(TxLayer::new(db.clone()))
            .with_state(db);
        assert_eq!(send(&app, None, "ida").await.0, StatusCode::CREATED);
        assert_eq!(send(&app, Some("k"), "jo").await.0, StatusCode::CREATED);
        let other = send(&app, Some("k"), "kim").await;
        assert_eq!(other.0, StatusCode::CREATED, "{:?}", t.backend);
        assert!(other.1.get(&IDEMPOTENT_REPLAYED).is_none());
        for name in ["ida", "jo", "kim"] {
            assert_eq!(agents_named(&t, name).await, 1, "{:?}", t.backend);
        }
        t.cleanup().await;
    }
}
