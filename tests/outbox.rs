//! The transactional outbox (`safe_db::outbox`), on SQLite always and on PostgreSQL and
//! MariaDB when their URLs are set: a message commits and rolls back with its transaction
//! (and its savepoint), is invisible before the COMMIT, is delivered once, in order per
//! key, retried with back-off and then dead, never held by two relays at once, and
//! delivered again when a lease runs out. Every assertion reads the table back.
//!
//! The crash proof (a child process SIGKILLed at random moments) is `tests/outbox_crash.rs`;
//! spans and metrics are `tests/outbox_observability.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use safe_db::outbox::{self, Delivery, Message, Relay, state};
use safe_db::{Cause, Error, ErrorKind, Tx, safe_db_operation};
use safe_db_test_support::{Backend, TestDb};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

/// A fresh namespace per backend, with the outbox table.
async fn outbox_dbs(test: &str, max_connections: u32) -> Vec<TestDb> {
    let dbs = TestDb::empty_on(
        &[Backend::Sqlite, Backend::Postgres, Backend::MySql],
        test,
        max_connections,
    )
    .await;
    for t in &dbs {
        outbox::migrate(&t.db).await.expect("migrate");
        outbox::migrate(&t.db).await.expect("migrate is idempotent");
    }
    dbs
}

/// `(id, state, attempts)` of every message, in id order.
async fn rows(db: &DatabaseConnection) -> Vec<(i64, i32, i32)> {
    let sql = "SELECT id, state, attempts FROM safe_db_outbox ORDER BY id";
    let stmt = Statement::from_string(db.get_database_backend(), sql);
    db.query_all_raw(stmt)
        .await
        .expect("read back")
        .iter()
        .map(|r| {
            (
                r.try_get_by_index(0).unwrap(),
                r.try_get_by_index(1).unwrap(),
                r.try_get_by_index(2).unwrap(),
            )
        })
        .collect()
}

/// The topics of every message, in id order.
async fn topics(db: &DatabaseConnection) -> Vec<String> {
    let sql = "SELECT topic FROM safe_db_outbox ORDER BY id";
    let stmt = Statement::from_string(db.get_database_backend(), sql);
    db.query_all_raw(stmt)
        .await
        .expect("read back")
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect()
}

#[safe_db_operation]
async fn send(tx: &Tx, topic: &str, n: i64) -> Result<outbox::MessageId, Error> {
    Ok(outbox::record(tx, Message::new(topic, &serde_json::json!({ "n": n }))).await?)
}

#[safe_db_operation]
async fn send_keyed(tx: &Tx, key: &str, n: i64) -> Result<(), Error> {
    let message = Message::new("keyed", &serde_json::json!({ "key": key, "n": n })).key(key);
    outbox::record(tx, message).await?;
    Ok(())
}

#[safe_db_operation]
async fn send_then_fail(tx: &Tx, topic: &str) -> Result<(), Error> {
    send(tx, topic, 0).await?;
    Err(Error::validation("refused after recording"))
}

/// Records `outer`, then a nested operation that records `inner` and fails; goes on.
#[safe_db_operation]
async fn outer_with_failed_inner(tx: &Tx) -> Result<(), Error> {
    send(tx, "outer", 1).await?;
    let inner = send_then_fail(tx, "inner").await;
    assert_eq!(inner.unwrap_err().kind(), ErrorKind::Validation);
    send(tx, "outer-after", 2).await?;
    Ok(())
}

/// A handler that remembers the topics it was given, and succeeds.
fn collecting(seen: &Arc<Mutex<Vec<(i64, String)>>>) -> impl outbox::Handler + use<> {
    let seen = seen.clone();
    move |d: Delivery| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push((d.id.0, d.topic.clone()));
            Ok::<_, String>(())
        }
    }
}

#[tokio::test]
async fn a_committed_message_is_delivered_once() {
    for t in outbox_dbs("outbox_once", 4).await {
        let id = send(&t.db, "order.placed", 42).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let relay = Relay::new(t.db.clone(), collecting(&seen));
        let report = relay.run_once().await.unwrap();
        assert_eq!(
            (report.claimed, report.delivered),
            (1, 1),
            "{:?}",
            t.backend
        );
        assert_eq!(report.oldest_pending, None);
        let again = relay.run_once().await.unwrap();
        assert_eq!(again.claimed, 0, "{:?}", t.backend);
        assert_eq!(*seen.lock().unwrap(), vec![(id.0, "order.placed".into())]);
        assert_eq!(rows(&t.db).await, vec![(id.0, state::DELIVERED, 1)]);
        let delivered_at = "SELECT COUNT(*) FROM safe_db_outbox WHERE delivered_at IS NOT NULL \
                            AND delivered_at >= created_at AND locked_until IS NULL";
        let stmt = Statement::from_string(t.db.get_database_backend(), delivered_at);
        let n: i64 =
            t.db.query_one_raw(stmt)
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index(0)
                .unwrap();
        assert_eq!(n, 1, "{:?}", t.backend);
        assert_eq!(relay.stats().delivered, 1);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_rolled_back_message_is_never_delivered() {
    for t in outbox_dbs("outbox_rollback", 4).await {
        assert!(send_then_fail(&t.db, "never").await.is_err());
        assert_eq!(rows(&t.db).await, vec![], "{:?}", t.backend);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let report = Relay::new(t.db.clone(), collecting(&seen))
            .run_once()
            .await
            .unwrap();
        assert_eq!(report.claimed, 0);
        assert!(seen.lock().unwrap().is_empty());
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_failed_savepoints_message_is_gone_while_the_outer_one_is_delivered() {
    for t in outbox_dbs("outbox_savepoint", 4).await {
        outer_with_failed_inner(&t.db).await.unwrap();
        assert_eq!(
            topics(&t.db).await,
            vec!["outer", "outer-after"],
            "{:?}",
            t.backend
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        Relay::new(t.db.clone(), collecting(&seen))
            .run_once()
            .await
            .unwrap();
        let delivered: Vec<String> = seen.lock().unwrap().iter().map(|s| s.1.clone()).collect();
        assert_eq!(delivered, vec!["outer", "outer-after"]);
        assert!(rows(&t.db).await.iter().all(|r| r.1 == state::DELIVERED));
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_message_is_invisible_before_the_commit() {
    for t in outbox_dbs("outbox_invisible", 4).await {
        let other = t.pool(2).await;
        let seen_inside = Arc::new(Mutex::new(None));
        let relay_inside = Arc::new(Mutex::new(None));
        let (other2, seen2, relay2) = (other.clone(), seen_inside.clone(), relay_inside.clone());
        safe_db::transaction(&t.db, async |tx: &Tx| {
            outbox::record(tx, Message::new("hidden", &1)).await?;
            *seen2.lock().unwrap() = Some(rows(&other2).await.len());
            // A relay on another connection finds nothing to claim either (not on SQLite,
            // where its claim would wait for this transaction's write lock).
            if tx.get_database_backend() != sea_orm::DbBackend::Sqlite {
                let relay = Relay::new(other2.clone(), |_: Delivery| async { Ok::<_, String>(()) });
                *relay2.lock().unwrap() = Some(relay.run_once().await?.claimed);
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(*seen_inside.lock().unwrap(), Some(0), "{:?}", t.backend);
        if t.backend != Backend::Sqlite {
            assert_eq!(*relay_inside.lock().unwrap(), Some(0), "{:?}", t.backend);
        }
        assert_eq!(rows(&other).await.len(), 1, "{:?}", t.backend);
        other.close().await.unwrap();
        t.cleanup().await;
    }
}

#[tokio::test]
async fn an_unserializable_payload_is_a_typed_error_and_records_nothing() {
    for t in outbox_dbs("outbox_unserializable", 2).await {
        let mut bad = HashMap::new();
        bad.insert((1, 2), 3); // JSON object keys must be strings
        let err = safe_db::transaction(&t.db, async |tx: &Tx| {
            outbox::record(tx, Message::new("bad", &bad)).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert!(matches!(err.cause(), Some(Cause::Unserializable { topic, .. }) if topic == "bad"));
        assert_eq!(rows(&t.db).await, vec![]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn messages_of_a_key_are_delivered_in_order_one_at_a_time() {
    for t in outbox_dbs("outbox_order", 8).await {
        for n in 0..30 {
            send_keyed(&t.db, "a", n).await.unwrap();
            send_keyed(&t.db, "b", n).await.unwrap();
        }
        send(&t.db, "unkeyed", 0).await.unwrap();
        let order: Arc<Mutex<BTreeMap<String, Vec<i64>>>> = Arc::default();
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let overlaps = Arc::new(AtomicU64::new(0));
        let handler = {
            let (order, in_flight, overlaps) = (order.clone(), in_flight.clone(), overlaps.clone());
            move |d: Delivery| {
                let (order, in_flight, overlaps) =
                    (order.clone(), in_flight.clone(), overlaps.clone());
                async move {
                    let key = d.key.clone().unwrap_or_default();
                    if !key.is_empty() && !in_flight.lock().unwrap().insert(key.clone()) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let n = d.payload::<serde_json::Value>().unwrap()["n"]
                        .as_i64()
                        .unwrap();
                    order
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push(n);
                    in_flight.lock().unwrap().remove(&key);
                    Ok::<_, String>(())
                }
            }
        };
        // Three relays at once, each claiming several messages per round.
        let relay = Arc::new(Relay::new(t.db.clone(), handler).batch_size(8));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let relay = relay.clone();
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while Instant::now() < deadline {
                        let report = relay.run_once().await.unwrap();
                        if report.claimed == 0 && report.oldest_pending.is_none() {
                            break;
                        }
                        if report.claimed == 0 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let expected: Vec<i64> = (0..30).collect();
        assert_eq!(order["a"], expected, "{:?}", t.backend);
        assert_eq!(order["b"], expected, "{:?}", t.backend);
        assert_eq!(order[""], vec![0]);
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "{:?}", t.backend);
        assert!(
            rows(&t.db)
                .await
                .iter()
                .all(|r| *r == (r.0, state::DELIVERED, 1))
        );
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_failing_handler_is_retried_with_back_off_then_the_message_is_dead() {
    for t in outbox_dbs("outbox_dead", 4).await {
        let first = Message::new("poison", &0).key("k");
        safe_db::transaction(&t.db, async |tx: &Tx| {
            outbox::record(tx, first.clone()).await?;
            outbox::record(tx, Message::new("next", &1).key("k")).await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let attempts: Arc<Mutex<Vec<(String, u32, Instant)>>> = Arc::default();
        let handler = {
            let attempts = attempts.clone();
            move |d: Delivery| {
                let attempts = attempts.clone();
                async move {
                    attempts
                        .lock()
                        .unwrap()
                        .push((d.topic.clone(), d.attempt, Instant::now()));
                    if d.topic == "poison" {
                        return Err(format!("cannot deliver attempt {}", d.attempt));
                    }
                    Ok(())
                }
            }
        };
        let base = Duration::from_millis(200);
        let relay = Relay::new(t.db.clone(), handler)
            .max_attempts(3)
            .backoff(base, Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut total = outbox::RunReport::default();
        while Instant::now() < deadline {
            let report = relay.run_once().await.unwrap();
            total = relay.stats();
            if report.oldest_pending.is_none() {
                break;
            }
            // While the poison message waits, the next of its key waits behind it.
            let now = rows(&t.db).await;
            if now[0].1 == state::PENDING {
                assert_eq!(now[1], (now[1].0, state::PENDING, 0), "{:?}", t.backend);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let attempts = attempts.lock().unwrap().clone();
        let tries: Vec<(&str, u32)> = attempts.iter().map(|a| (a.0.as_str(), a.1)).collect();
        assert_eq!(
            tries,
            vec![("poison", 1), ("poison", 2), ("poison", 3), ("next", 1)],
            "{:?}",
            t.backend
        );
        // Equal jitter: at least half the back-off (base, then 2 × base) between attempts.
        assert!(attempts[1].2 - attempts[0].2 >= base / 2);
        assert!(attempts[2].2 - attempts[1].2 >= base);
        assert_eq!(
            (total.failed, total.dead_lettered, total.delivered),
            (2, 1, 1)
        );
        let table = rows(&t.db).await;
        assert_eq!(
            (table[0].1, table[0].2),
            (state::DEAD, 3),
            "{:?}",
            t.backend
        );
        assert_eq!(table[1].1, state::DELIVERED);
        let sql = "SELECT last_error FROM safe_db_outbox WHERE state = 2";
        let stmt = Statement::from_string(t.db.get_database_backend(), sql);
        let error: String =
            t.db.query_one_raw(stmt)
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index(0)
                .unwrap();
        assert_eq!(error, "cannot deliver attempt 3");
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_failed_attempt() {
    for t in outbox_dbs("outbox_panic", 2).await {
        send(&t.db, "boom", 0).await.unwrap();
        let relay = Relay::new(t.db.clone(), |_: Delivery| async {
            if true {
                panic!("handler blew up");
            }
            Ok::<_, String>(())
        });
        let report = relay.run_once().await.unwrap();
        assert_eq!(report.failed, 1, "{:?}", t.backend);
        let sql = "SELECT last_error FROM safe_db_outbox";
        let stmt = Statement::from_string(t.db.get_database_backend(), sql);
        let error: String =
            t.db.query_one_raw(stmt)
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index(0)
                .unwrap();
        assert_eq!(error, "the handler panicked: handler blew up");
        assert_eq!(rows(&t.db).await[0].1, state::PENDING);
        t.cleanup().await;
    }
}

/// Four relay tasks over two pools and 500 messages: each message handed over once, and
/// never to two relays at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_relays_never_hold_a_message_at_the_same_time() {
    for t in outbox_dbs("outbox_relays", 8).await {
        let started = Instant::now();
        for chunk in 0..50 {
            safe_db::transaction(&t.db, async |tx: &Tx| {
                for n in 0..10 {
                    let key = (n % 3 == 0).then(|| format!("key-{}", n % 7));
                    let mut message = Message::new("bulk", &(chunk * 10 + n));
                    if let Some(key) = key {
                        message = message.key(key);
                    }
                    outbox::record(tx, message).await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        }
        let recorded = started.elapsed();
        let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let handed: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
        let overlaps = Arc::new(AtomicU64::new(0));
        let second = t.pool(8).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let db = if i % 2 == 0 {
                    t.db.clone()
                } else {
                    second.clone()
                };
                let (in_flight, handed, overlaps) =
                    (in_flight.clone(), handed.clone(), overlaps.clone());
                let handler = move |d: Delivery| {
                    let (in_flight, handed, overlaps) =
                        (in_flight.clone(), handed.clone(), overlaps.clone());
                    async move {
                        if !in_flight.lock().unwrap().insert(d.id.0) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        *handed.lock().unwrap().entry(d.id.0).or_default() += 1;
                        let pause = (d.id.0 as u64 * 7919) % 500;
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                        in_flight.lock().unwrap().remove(&d.id.0);
                        Ok::<_, String>(())
                    }
                };
                tokio::spawn(async move {
                    let relay = Relay::new(db, handler).batch_size(16);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while Instant::now() < deadline {
                        let report = relay.run_once().await.unwrap();
                        if report.claimed == 0 && report.oldest_pending.is_none() {
                            break;
                        }
                        if report.claimed == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    relay.stats()
                })
            })
            .collect();
        let mut delivered = 0;
        let mut per_relay = Vec::new();
        for task in tasks {
            let stats = task.await.unwrap();
            delivered += stats.delivered;
            per_relay.push(stats.delivered);
        }
        eprintln!(
            "{:?}: 500 messages recorded in {recorded:?}, delivered by 4 relays in {:?} ({per_relay:?})",
            t.backend,
            started.elapsed()
        );
        let handed = handed.lock().unwrap().clone();
        assert_eq!(handed.len(), 500, "{:?}", t.backend);
        assert!(handed.values().all(|&n| n == 1), "{:?}", t.backend);
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "{:?}", t.backend);
        assert_eq!(delivered, 500);
        let table = rows(&t.db).await;
        assert_eq!(table.len(), 500);
        assert!(table.iter().all(|r| r.1 == state::DELIVERED && r.2 == 1));
        second.close().await.unwrap();
        t.cleanup().await;
    }
}

/// A handler slower than the lease: another relay claims the message and delivers it
/// again (at least once), and the slow relay's result is not recorded over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_runs_out_is_redelivered_and_counted() {
    for t in outbox_dbs("outbox_lease", 4).await {
        let id = send(&t.db, "slow", 0).await.unwrap();
        let deliveries = Arc::new(AtomicU64::new(0));
        let slow = {
            let deliveries = deliveries.clone();
            move |_: Delivery| {
                let deliveries = deliveries.clone();
                async move {
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Ok::<_, String>(())
                }
            }
        };
        let fast = {
            let deliveries = deliveries.clone();
            move |d: Delivery| {
                let deliveries = deliveries.clone();
                async move {
                    assert_eq!(d.attempt, 2);
                    deliveries.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(())
                }
            }
        };
        let a = Relay::new(t.db.clone(), slow).lease(Duration::from_millis(400));
        let b = Relay::new(t.db.clone(), fast);
        let slow_round = tokio::spawn(async move { a.run_once().await.unwrap() });
        // While the lease holds, B finds nothing to claim.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(b.run_once().await.unwrap().claimed, 0, "{:?}", t.backend);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let taken_over = b.run_once().await.unwrap();
        assert_eq!(taken_over.delivered, 1, "{:?}", t.backend);
        let slow_report = slow_round.await.unwrap();
        assert_eq!(slow_report.lease_lost, 1, "{:?}", t.backend);
        assert_eq!(slow_report.delivered, 0);
        assert_eq!(deliveries.load(Ordering::SeqCst), 2);
        assert_eq!(rows(&t.db).await, vec![(id.0, state::DELIVERED, 2)]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn the_oldest_pending_age_is_read_from_the_database_clock() {
    for t in outbox_dbs("outbox_age", 2).await {
        assert_eq!(outbox::oldest_pending_age(&t.db).await.unwrap(), None);
        send(&t.db, "waiting", 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let age = outbox::oldest_pending_age(&t.db).await.unwrap().unwrap();
        assert!(
            age >= Duration::from_millis(250) && age < Duration::from_secs(30),
            "{:?}: {age:?}",
            t.backend
        );
        t.cleanup().await;
    }
}

#[tokio::test]
async fn run_stops_at_shutdown_after_delivering() {
    for t in outbox_dbs("outbox_run", 4).await {
        for n in 0..5 {
            send(&t.db, "run", n).await.unwrap();
        }
        let relay = Relay::new(t.db.clone(), |_: Delivery| async { Ok::<_, String>(()) })
            .batch_size(2)
            .poll_interval(Duration::from_millis(20));
        let done = relay
            .run(tokio::time::sleep(Duration::from_millis(500)))
            .await;
        assert_eq!(done.delivered, 5, "{:?}", t.backend);
        assert!(rows(&t.db).await.iter().all(|r| r.1 == state::DELIVERED));
        t.cleanup().await;
    }
}
