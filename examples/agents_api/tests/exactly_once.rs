//! Exactly-once creates over a real socket (issue 28): the example API served with
//! `axum::serve` on 127.0.0.1, clients speaking HTTP/1.1 over TCP that send each create
//! with an `Idempotency-Key` and retry with the same key after any failure until they get
//! an answer. The failures are real: a proxy between the API and its database freezes or
//! kills the connection at COMMIT, clients go away without reading their answer or give up
//! waiting, a writer holds a lock past the request's deadline (504). Afterwards the rows
//! are read back: exactly one per key, and every answer a key's retries got is the same.

#[path = "common/socket.rs"]
mod socket;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agents_api::routes;
use safe_db::axum::{Idempotency, ProblemLayer, TxLayer};
use safe_db::{Db, Error, Tx};
use safe_db_test_support::proxy::FaultProxy;
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use socket::Answer;

const ALL: &[Backend] = &[Backend::Sqlite, Backend::Postgres, Backend::MySql];

/// The request's deadline (`TxLayer::timeout`): a COMMIT left unanswered is a 500
/// (`CommitUnknown`) by this plus 200 ms.
const DEADLINE: Duration = Duration::from_millis(400);

/// The example API on a socket, its database, and (on a server) the proxy its request
/// transactions go through.
struct Api {
    t: TestDb,
    addr: SocketAddr,
    proxy: Option<FaultProxy>,
}

async fn serve_api(test: &str, ttl: Duration) -> Vec<Api> {
    let mut out = Vec::new();
    for t in TestDb::empty_on(ALL, test, 5).await {
        agents_api::migrate(&t.db).await.unwrap();
        let (db, proxy) = if t.backend == Backend::Sqlite {
            (Db::new(t.db.clone(), None), None)
        } else {
            let proxy = FaultProxy::start(&t.url).await;
            let through = t.pool_via(&proxy, 4).await;
            (Db::new(through, None), Some(proxy))
        };
        // The claims go to the database directly: the proxy sees only the requests'
        // transactions (and the stored responses in them).
        let app = routes()
            .layer(Idempotency::new(t.db.clone()).ttl(ttl))
            .layer(TxLayer::new(db.clone()).timeout(DEADLINE))
            .layer(ProblemLayer)
            .with_state(db);
        let addr = socket::serve(app).await;
        out.push(Api { t, addr, proxy });
    }
    out
}

/// The ids of the agents named `name`, read outside any transaction.
async fn ids_named(t: &TestDb, name: &str) -> Vec<i64> {
    let backend = t.db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT id FROM agents WHERE name = $1 ORDER BY id",
        _ => "SELECT id FROM agents WHERE name = ? ORDER BY id",
    };
    let stmt = Statement::from_sql_and_values(backend, sql, [name.into()]);
    let rows = t.db.query_all_raw(stmt).await.unwrap();
    rows.iter()
        .map(|r| {
            r.try_get_by_index::<i64>(0)
                .or_else(|_| r.try_get_by_index::<i32>(0).map(i64::from))
                .unwrap()
        })
        .collect()
}

/// How the client treats its first attempt (every retry reads its answer).
#[derive(Clone, Copy, Debug)]
enum First {
    /// Reads the answer.
    Read,
    /// Waits this long at most, then closes the connection.
    GiveUpAfter(Duration),
    /// Closes the connection as soon as the request is written.
    GoAway,
    /// Closes the connection without reading, once the agent is committed: the answer
    /// is lost.
    GoAwayOnceCommitted,
}

/// What a client saw for one key, attempt by attempt.
#[derive(Default)]
struct Log {
    /// Every answer read, in order; the last is final.
    answers: Vec<Answer>,
    /// Attempts whose answer the client never read.
    lost: usize,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let statuses: Vec<u16> = self.answers.iter().map(|a| a.status).collect();
        write!(f, "answers {statuses:?}, {} lost", self.lost)?;
        if let Some(last) = self.answers.last() {
            write!(f, ", last: {}", last.body)?;
        }
        Ok(())
    }
}

impl Log {
    fn last(&self) -> &Answer {
        self.answers.last().unwrap()
    }

    fn attempts(&self) -> usize {
        self.answers.len() + self.lost
    }
}

/// A failure the client retries after: a 5xx, or the key's first request still in flight.
fn retry_after(answer: &Answer) -> bool {
    answer.status >= 500 || answer.is_problem("idempotency-key-in-flight")
}

/// Sends the keyed create of `name` until it gets an answer that is not a failure,
/// retrying with the same key after a lost answer, a 5xx or a 409 in flight.
async fn create_until_answered(api: &Api, key: &str, name: &str, first: First) -> Log {
    let body = serde_json::json!({ "name": name }).to_string();
    let mut log = Log::default();
    let mut how = first;
    for _ in 0..200 {
        let stream = socket::send(api.addr, "/agents", key, &body).await;
        let answer = match how {
            First::Read => socket::read(stream, Duration::from_secs(10)).await,
            First::GiveUpAfter(patience) => socket::read(stream, patience).await,
            First::GoAway => None,
            First::GoAwayOnceCommitted => {
                let by = Instant::now() + Duration::from_secs(5);
                while ids_named(&api.t, name).await.is_empty() {
                    assert!(Instant::now() < by, "{name} never committed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            }
        };
        how = First::Read;
        match answer {
            None => log.lost += 1,
            Some(answer) => {
                let again = retry_after(&answer);
                log.answers.push(answer);
                if !again {
                    return log;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{key}: no answer after 200 attempts: {log:?}");
}

/// What every key must end with: a 201, the same status and body in every success its
/// attempts and two more retries got (replays), and exactly one row, the one the body
/// names.
async fn check_exactly_once(api: &Api, key: &str, name: &str, log: &Log) {
    let backend = api.t.backend;
    let last = log.last().clone();
    assert_eq!(last.status, 201, "{backend:?} {key}: {log:?}");
    let body = serde_json::json!({ "name": name }).to_string();
    let mut successes: Vec<Answer> = log
        .answers
        .iter()
        .filter(|a| a.status < 300)
        .cloned()
        .collect();
    for _ in 0..2 {
        let stream = socket::send(api.addr, "/agents", key, &body).await;
        let again = socket::read(stream, Duration::from_secs(10)).await.unwrap();
        assert!(again.replayed(), "{backend:?} {key}: {again:?}");
        successes.push(again);
    }
    for answer in &successes {
        assert_eq!(
            (answer.status, &answer.body),
            (last.status, &last.body),
            "{backend:?} {key}: one response"
        );
    }
    let created: serde_json::Value = serde_json::from_str(&last.body).unwrap();
    let ids = ids_named(&api.t, name).await;
    assert_eq!(ids.len(), 1, "{backend:?} {key}: exactly one row");
    assert_eq!(
        created["id"].as_i64(),
        Some(ids[0]),
        "{backend:?} {key}: the answer names the row"
    );
}

/// Counts over one database's keys, printed at the end.
#[derive(Debug, Default)]
struct Tally {
    keys: usize,
    retries: usize,
    lost: usize,
    server_errors: usize,
    commit_unknown_replayed: usize,
    commit_unknown_rerun: usize,
}

impl Tally {
    fn add(&mut self, log: &Log) {
        self.keys += 1;
        self.retries += log.attempts() - 1;
        self.lost += log.lost;
        self.server_errors += log.answers.iter().filter(|a| a.status >= 500).count();
        if log.answers.iter().any(|a| a.is_problem("commit-unknown")) {
            if log.last().replayed() {
                self.commit_unknown_replayed += 1;
            } else {
                self.commit_unknown_rerun += 1;
            }
        }
    }
}

/// A writer that inserts `name` and holds its transaction (and so the name's lock, or
/// SQLite's write lock) for `hold`, then rolls back; `ready` is told once it holds it.
async fn hold_name(
    t: &TestDb,
    name: &str,
    hold: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let ended: Result<(), Error> = safe_db::transaction(&t.db, async |tx: &Tx| {
        let sql = match t.backend {
            Backend::Postgres => "INSERT INTO agents (name) VALUES ($1)",
            _ => "INSERT INTO agents (name) VALUES (?)",
        };
        let stmt = Statement::from_sql_and_values(tx.get_database_backend(), sql, [name.into()]);
        tx.execute_raw(stmt).await?;
        if let Some(ready) = ready.take() {
            ready.send(()).unwrap();
        }
        tokio::time::sleep(hold).await;
        Err(Error::validation("the blocker rolls back"))
    })
    .await;
    assert!(ended.is_err());
}

/// One key per failure, one after another, on each database: the first attempt meets its
/// failure, the client retries with its key, and the key ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_a_client_meets_is_resolved_by_retrying_its_key() {
    for api in serve_api("once_failures", Duration::from_secs(3600)).await {
        let backend = api.t.backend;
        let mut tally = Tally::default();

        if let Some(proxy) = &api.proxy {
            // The COMMIT reaches the server, which commits; its answer never comes back.
            proxy.freeze_after("COMMIT");
            let log = create_until_answered(&api, "k-frozen", "frozen", First::Read).await;
            assert_eq!(proxy.frozen(), 1, "{backend:?}");
            assert!(log.answers[0].is_problem("commit-unknown"), "{log:?}");
            assert_eq!(log.answers[0].status, 500);
            assert!(log.last().replayed(), "{backend:?}: committed by the first");
            check_exactly_once(&api, "k-frozen", "frozen", &log).await;
            tally.add(&log);

            // The connection dies after the COMMIT reached the server.
            proxy.kill_after("COMMIT");
            let log = create_until_answered(&api, "k-killed", "killed", First::Read).await;
            assert_eq!(proxy.killed(), 1, "{backend:?}");
            assert!(log.answers[0].is_problem("commit-unknown"), "{log:?}");
            assert!(log.last().replayed(), "{backend:?}: committed by the first");
            check_exactly_once(&api, "k-killed", "killed", &log).await;
            tally.add(&log);

            // The connection dies before the COMMIT reached the server: nothing committed,
            // and the retry runs the create again.
            proxy.kill_before("COMMIT");
            let log = create_until_answered(&api, "k-unsent", "unsent", First::Read).await;
            assert_eq!(proxy.killed(), 2, "{backend:?}");
            assert!(log.answers[0].is_problem("commit-unknown"), "{log:?}");
            assert!(!log.last().replayed(), "{backend:?}: a first run");
            check_exactly_once(&api, "k-unsent", "unsent", &log).await;
            tally.add(&log);

            // The client gives up waiting while the COMMIT hangs, and retries.
            proxy.freeze_after("COMMIT");
            let patience = First::GiveUpAfter(Duration::from_millis(150));
            let log = create_until_answered(&api, "k-impatient", "impatient", patience).await;
            assert_eq!(proxy.frozen(), 2, "{backend:?}");
            assert!(log.lost >= 1, "{log:?}");
            assert!(log.last().replayed(), "{backend:?}: committed by the first");
            check_exactly_once(&api, "k-impatient", "impatient", &log).await;
            tally.add(&log);
        }

        // The client goes away once its create committed: the answer is lost.
        let log = create_until_answered(&api, "k-gone", "gone", First::GoAwayOnceCommitted).await;
        assert_eq!(log.lost, 1);
        assert!(log.last().replayed(), "{backend:?}: {log:?}");
        check_exactly_once(&api, "k-gone", "gone", &log).await;
        tally.add(&log);

        // The client goes away as soon as its request is written: the create ran, or was
        // cut off and rolled back; either way the key ends once.
        let log = create_until_answered(&api, "k-hasty", "hasty", First::GoAway).await;
        assert_eq!(log.lost, 1);
        check_exactly_once(&api, "k-hasty", "hasty", &log).await;
        tally.add(&log);

        // A writer holds the name past the request's deadline: 504, nothing committed, and
        // the retries run the create again until it passes.
        let (ready, held) = tokio::sync::oneshot::channel();
        let ((), log) = tokio::join!(hold_name(&api.t, "blocked", DEADLINE * 2, ready), async {
            held.await.unwrap();
            create_until_answered(&api, "k-blocked", "blocked", First::Read).await
        });
        assert_eq!(log.answers[0].status, 504, "{backend:?}: {log:?}");
        assert!(log.answers[0].is_problem("timeout"), "{log:?}");
        assert!(!log.last().replayed(), "{backend:?}: {log:?}");
        check_exactly_once(&api, "k-blocked", "blocked", &log).await;
        tally.add(&log);

        println!("{backend:?}: {tally:?}");
        api.t.cleanup().await;
    }
}

/// Six clients per key send the same keyed create at once, for three keys, and retry
/// after a 409 in flight or a 5xx (on a server, the first COMMIT's connection is killed
/// after it reached the server): per key one first run at most, every client the same
/// answer, one row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_over_a_socket_end_with_one_response_and_one_row() {
    const KEYS: [&str; 3] = ["dup-a", "dup-b", "dup-c"];
    for api in serve_api("once_duplicates", Duration::from_secs(3600)).await {
        let backend = api.t.backend;
        if let Some(proxy) = &api.proxy {
            proxy.kill_after("COMMIT");
        }
        let clients = KEYS
            .iter()
            .flat_map(|name| (0..6).map(move |_| *name))
            .map(|name| {
                let api = &api;
                async move {
                    (
                        name,
                        create_until_answered(api, name, name, First::Read).await,
                    )
                }
            });
        let logs = futures_util::future::join_all(clients).await;
        let killed = api.proxy.as_ref().map_or(0, FaultProxy::killed);
        assert_eq!(killed, usize::from(api.proxy.is_some()), "{backend:?}");
        let mut first_runs = 0;
        let mut in_flight = 0;
        for name in KEYS {
            let mine: Vec<&Log> = logs
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, l)| l)
                .collect();
            let runs = mine.iter().filter(|l| !l.last().replayed()).count();
            assert!(runs <= 1, "{backend:?} {name}: {runs} first runs");
            first_runs += runs;
            in_flight += mine
                .iter()
                .flat_map(|l| &l.answers)
                .filter(|a| a.is_problem("idempotency-key-in-flight"))
                .count();
            for log in &mine {
                assert_eq!(
                    (log.last().status, &log.last().body),
                    (mine[0].last().status, &mine[0].last().body),
                    "{backend:?} {name}: one response"
                );
            }
            check_exactly_once(&api, name, name, mine[0]).await;
        }
        // The key whose COMMIT was killed was committed by it: its clients all replay.
        assert_eq!(first_runs, KEYS.len() - killed, "{backend:?}");
        println!(
            "{backend:?}: {} clients, {in_flight} answers 409 in flight, {killed} COMMIT killed",
            logs.len()
        );
        api.t.cleanup().await;
    }
}

/// Before it expires a key replays its response, even after the agent it created was
/// deleted; once it expired, the same create with the same key runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_replayed_after_its_expiry_runs_again() {
    let ttl = Duration::from_millis(600);
    for api in serve_api("once_expiry", ttl).await {
        let backend = api.t.backend;
        let first = create_until_answered(&api, "k-exp", "expiring", First::Read).await;
        let first = first.last().clone();
        assert_eq!(first.status, 201, "{backend:?}");
        assert!(!first.replayed());
        let id = serde_json::from_str::<serde_json::Value>(&first.body).unwrap()["id"].clone();
        let deleted = socket::request(api.addr, "DELETE", &format!("/agents/{id}"), None).await;
        assert_eq!(deleted.status, 204, "{backend:?}");
        let replay = create_until_answered(&api, "k-exp", "expiring", First::Read).await;
        assert!(replay.last().replayed(), "{backend:?}: {replay:?}");
        assert_eq!(replay.last().body, first.body);
        assert!(
            ids_named(&api.t, "expiring").await.is_empty(),
            "{backend:?}: not run"
        );

        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        let again = create_until_answered(&api, "k-exp", "expiring", First::Read).await;
        assert!(!again.last().replayed(), "{backend:?}: {again:?}");
        assert_ne!(again.last().body, first.body, "{backend:?}: a new agent");
        check_exactly_once(&api, "k-exp", "expiring", &again).await;
        api.t.cleanup().await;
    }
}
