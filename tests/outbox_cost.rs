//! What the outbox costs (docs/outbox.md): an operation that inserts one row, with and
//! without `outbox::record` of one message, alternating one by one so that drift falls on
//! both alike, each timed on its own (median and 90th percentile); then a relay's throughput with a handler that does nothing. A measurement,
//! not a check: ignored in the suite, run with
//!
//! ```sh
//! SAFE_DB_TEST_POSTGRES_URL=… SAFE_DB_TEST_MYSQL_URL=… cargo test --release --test outbox_cost -- --ignored --nocapture
//! ```

use std::time::{Duration, Instant};

use safe_db::outbox::{self, Delivery, Message, Relay};
use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

const ROUNDS: usize = 10;
const PER_ROUND: i64 = 200;

#[safe_db_operation]
async fn insert(tx: &Tx, n: i64, with_message: bool) -> Result<(), Error> {
    let backend = tx.get_database_backend();
    let sql = match backend {
        DbBackend::MySql => "INSERT INTO orders (n) VALUES (?)",
        _ => "INSERT INTO orders (n) VALUES ($1)",
    };
    tx.execute_raw(Statement::from_sql_and_values(backend, sql, [n.into()]))
        .await?;
    if with_message {
        let payload = serde_json::json!({ "order": n, "total": "12.50", "currency": "EUR" });
        let message = Message::new("order.placed", &payload).key(format!("order-{n}"));
        outbox::record(tx, message).await?;
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() * 9 / 10]
}

#[tokio::test]
#[ignore = "a measurement: run it with --release --ignored --nocapture"]
async fn what_record_costs_per_operation() {
    let dbs = TestDb::empty_on(
        &[Backend::Sqlite, Backend::Postgres, Backend::MySql],
        "outbox_cost",
        4,
    )
    .await;
    for t in dbs {
        outbox::migrate(&t.db).await.unwrap();
        t.db.execute_unprepared("CREATE TABLE orders (n BIGINT PRIMARY KEY)")
            .await
            .unwrap();
        let (mut plain, mut recorded) = (Vec::new(), Vec::new());
        let mut n = 0;
        // Warm-up: the pool's connections, prepared statements.
        for _ in 0..100 {
            n += 1;
            insert(&t.db, n, n % 2 == 0).await.unwrap();
        }
        for _ in 0..ROUNDS {
            // Alternating one by one, each operation timed on its own.
            for _ in 0..PER_ROUND {
                for with_message in [false, true] {
                    n += 1;
                    let started = Instant::now();
                    insert(&t.db, n, with_message).await.unwrap();
                    let took = started.elapsed();
                    if with_message {
                        recorded.push(took);
                    } else {
                        plain.push(took);
                    }
                }
            }
        }
        let (p90_plain, p90_recorded) = (p90(&plain), p90(&recorded));
        let (plain, recorded) = (median(plain), median(recorded));
        let pending = (ROUNDS as i64 * PER_ROUND + 50) as u64;
        let relay = Relay::new(t.db.clone(), |_: Delivery| async { Ok::<_, String>(()) });
        let started = Instant::now();
        let mut delivered = 0;
        while delivered < pending {
            delivered += relay.run_once().await.unwrap().delivered;
        }
        let relayed = started.elapsed();
        eprintln!(
            "{:?}: one-row operation median {plain:?} (p90 {p90_plain:?}), with record {recorded:?} \
             (p90 {p90_recorded:?}): +{:?}, x{:.2}; \
             relay: {pending} keyed messages delivered in {relayed:?} ({:.0}/s, batches of 32, one key each)",
            t.backend,
            recorded.saturating_sub(plain),
            recorded.as_secs_f64() / plain.as_secs_f64(),
            pending as f64 / relayed.as_secs_f64()
        );
        t.cleanup().await;
    }
}
