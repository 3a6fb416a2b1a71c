//! The outbox across crashes: a child process (this test binary again, running
//! `outbox_child`) commits operations that record messages, and operations that record one
//! and then fail, while a relay in it delivers to a handler that logs every call and
//! applies its effect idempotently (keyed by the message id). The parent SIGKILLs it at
//! random moments (before, during or after a COMMIT, during a claim or a delivery: wherever
//! it happens to be) and starts it again, several times; then a relay of its own delivers
//! what is left. Afterwards, read back from the database:
//!
//! - the outbox holds exactly the messages of the committed operations (an order row and
//!   its message commit together or not at all), none of a failed one;
//! - every message is delivered; no message of a failed operation was ever handed over;
//! - every effect happened exactly once (the idempotent handler), and the handler calls
//!   beyond one per message (deliveries in flight at a kill) are counted and bounded by
//!   kills × batch size.
//!
//! On SQLite, PostgreSQL and MariaDB. `SAFE_DB_OUTBOX_SOAK=N` runs N kills per database
//! instead of 8.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safe_db::outbox::{self, Delivery, Handler, Message, Relay, state};
use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb, pool_options};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

/// Set in the child: `backend|url|schema`.
const CHILD: &str = "SAFE_DB_OUTBOX_CHILD";
/// Set in the child: which run it is (its operations' numbers start at run × 1,000,000).
const RUN: &str = "SAFE_DB_OUTBOX_CHILD_RUN";
const BATCH: u32 = 4;

#[derive(serde::Serialize, serde::Deserialize)]
struct Order {
    n: i64,
    /// The operation that records it fails afterwards: it must never be delivered.
    fails: bool,
}

/// Inserts order `n` and records its message; an operation with `fails` then returns
/// `Err`, so neither may survive.
#[safe_db_operation]
async fn place(tx: &Tx, n: i64, fails: bool) -> Result<(), Error> {
    let backend = tx.get_database_backend();
    let sql = sql_for(
        backend,
        "INSERT INTO orders (n) VALUES ($1)",
        "INSERT INTO orders (n) VALUES (?)",
        "INSERT INTO orders (n) VALUES ($1)",
    );
    tx.execute_raw(Statement::from_sql_and_values(
        tx.get_database_backend(),
        sql,
        [n.into()],
    ))
    .await?;
    let message = Message::new("order", &Order { n, fails });
    let message = if n % 3 == 0 {
        message.key(format!("k{}", n % 5))
    } else {
        message
    };
    outbox::record(tx, message).await?;
    if fails {
        return Err(Error::validation(
            "the order fails after recording its message",
        ));
    }
    Ok(())
}

fn sql_for(
    backend: DbBackend,
    postgres: &'static str,
    mysql: &'static str,
    sqlite: &'static str,
) -> &'static str {
    match backend {
        DbBackend::Postgres => postgres,
        DbBackend::MySql => mysql,
        _ => sqlite,
    }
}

/// Logs every call, then applies the effect once per message id.
fn effects(db: DatabaseConnection) -> impl Handler + use<> {
    move |d: Delivery| {
        let db = db.clone();
        async move {
            let order: Order = d.payload().map_err(|e| e.to_string())?;
            let backend = db.get_database_backend();
            let log = sql_for(
                backend,
                "INSERT INTO handled (msg_id, n) VALUES ($1, $2)",
                "INSERT INTO handled (msg_id, n) VALUES (?, ?)",
                "INSERT INTO handled (msg_id, n) VALUES ($1, $2)",
            );
            let values = [d.id.0.into(), order.n.into()];
            db.execute_raw(Statement::from_sql_and_values(backend, log, values.clone()))
                .await
                .map_err(|e| e.to_string())?;
            let effect = sql_for(
                backend,
                "INSERT INTO effects (msg_id, n) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                "INSERT IGNORE INTO effects (msg_id, n) VALUES (?, ?)",
                "INSERT INTO effects (msg_id, n) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            );
            db.execute_raw(Statement::from_sql_and_values(backend, effect, values))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
    }
}

fn relay(db: &DatabaseConnection, batch: u32) -> Relay<impl Handler + use<>> {
    Relay::new(db.clone(), effects(db.clone()))
        .batch_size(batch)
        .lease(Duration::from_millis(800))
        .max_attempts(1000)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .poll_interval(Duration::from_millis(5))
}

/// The child: records orders (one in four fails) and runs a relay, until it is killed.
/// A no-op in an ordinary test run.
#[test]
fn outbox_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let run: i64 = std::env::var(RUN).unwrap().parse().unwrap();
    let mut parts = spec.splitn(3, '|');
    let (backend, url, schema) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut options = pool_options(&url, 4);
        if backend == "Postgres" {
            options.set_schema_search_path(schema);
        }
        let db = Database::connect(options).await.unwrap();
        let relay = relay(&db, BATCH);
        let producer = async {
            for i in 0.. {
                let n = run * 1_000_000 + i;
                let _ = place(&db, n, n % 4 == 3).await;
            }
        };
        let relaying = relay.run(std::future::pending());
        futures_util::future::join(producer, relaying).await;
    });
}

/// A random number, from the process's random hasher keys.
fn random(below: u64) -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(below);
    h.finish() % below
}

async fn all_i64_pairs(db: &DatabaseConnection, sql: &str) -> Vec<(i64, i64)> {
    let stmt = Statement::from_string(db.get_database_backend(), sql);
    db.query_all_raw(stmt)
        .await
        .expect("read back")
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_message_survives_kills_and_is_applied_exactly_once() {
    let kills: u32 = std::env::var("SAFE_DB_OUTBOX_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dbs = TestDb::empty_on(
        &[Backend::Sqlite, Backend::Postgres, Backend::MySql],
        "outbox_crash",
        4,
    )
    .await;
    for t in dbs {
        let started = Instant::now();
        outbox::migrate(&t.db).await.unwrap();
        for sql in [
            "CREATE TABLE orders (n BIGINT PRIMARY KEY)",
            "CREATE TABLE handled (msg_id BIGINT NOT NULL, n BIGINT NOT NULL)",
            "CREATE TABLE effects (msg_id BIGINT PRIMARY KEY, n BIGINT NOT NULL)",
        ] {
            t.db.execute_unprepared(sql).await.unwrap();
        }
        let schema = match t.backend {
            Backend::Postgres => "safe_db_outbox_crash",
            _ => "",
        };
        let spec = format!("{:?}|{}|{schema}", t.backend, t.url);
        let mut delays = Vec::new();
        for run in 1..=kills {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["outbox_child", "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, &spec)
                .env(RUN, run.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the child");
            let delay = 150 + random(900);
            delays.push(delay);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            child.kill().expect("SIGKILL the child"); // SIGKILL on Unix
            child.wait().unwrap();
        }
        // What is left (and what the dead children held leased) is delivered here.
        let relay = relay(&t.db, 32);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let report = relay.run_once().await.unwrap();
            if report.oldest_pending.is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: the outbox did not drain",
                t.backend
            );
            if report.claimed == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        let orders: BTreeSet<i64> = all_i64_pairs(&t.db, "SELECT n, n FROM orders")
            .await
            .into_iter()
            .map(|p| p.0)
            .collect();
        let stmt = Statement::from_string(
            t.db.get_database_backend(),
            "SELECT id, payload, state FROM safe_db_outbox ORDER BY id",
        );
        let mut messages = BTreeMap::new();
        for row in t.db.query_all_raw(stmt).await.unwrap() {
            let id: i64 = row.try_get_by_index(0).unwrap();
            let order: Order =
                serde_json::from_str(&row.try_get_by_index::<String>(1).unwrap()).unwrap();
            let st: i32 = row.try_get_by_index(2).unwrap();
            assert!(
                !order.fails,
                "{:?}: a failed operation's message {id} was committed",
                t.backend
            );
            assert_eq!(st, state::DELIVERED, "{:?}: message {id}", t.backend);
            messages.insert(id, order.n);
        }
        let recorded: BTreeSet<i64> = messages.values().copied().collect();
        assert_eq!(
            recorded, orders,
            "{:?}: messages and committed orders differ",
            t.backend
        );
        assert!(
            orders.len() > 10,
            "{:?}: only {} orders committed",
            t.backend,
            orders.len()
        );

        let handled = all_i64_pairs(&t.db, "SELECT msg_id, n FROM handled").await;
        let mut calls: BTreeMap<i64, u64> = BTreeMap::new();
        for (id, n) in &handled {
            assert_eq!(
                messages.get(id),
                Some(n),
                "{:?}: handed a message not committed: {id}",
                t.backend
            );
            *calls.entry(*id).or_default() += 1;
        }
        assert_eq!(
            calls.len(),
            messages.len(),
            "{:?}: a message was never delivered",
            t.backend
        );
        let duplicates: u64 = calls.values().map(|c| c - 1).sum();
        let effects = all_i64_pairs(&t.db, "SELECT msg_id, n FROM effects ORDER BY msg_id").await;
        let expected: Vec<(i64, i64)> = messages.iter().map(|(id, n)| (*id, *n)).collect();
        assert_eq!(
            effects, expected,
            "{:?}: effects are not exactly one per message",
            t.backend
        );
        // Messages claimed more than once: held by a child when it was killed (or, rarely,
        // past their lease), then claimed again.
        let reclaimed = all_i64_pairs(
            &t.db,
            "SELECT COUNT(*), COUNT(*) FROM safe_db_outbox WHERE attempts > 1",
        )
        .await[0]
            .0;
        eprintln!(
            "{:?}: {kills} kills after {delays:?} ms; {} committed orders, each message delivered, \
             {reclaimed} claimed again after a kill, {duplicates} duplicate handler calls \
             (deliveries in flight at a kill), every effect exactly once; {:?}",
            t.backend,
            orders.len(),
            started.elapsed()
        );
        assert!(
            duplicates <= u64::from(kills * BATCH),
            "{:?}: {duplicates} duplicates for {kills} kills",
            t.backend
        );
        t.cleanup().await;
    }
}
