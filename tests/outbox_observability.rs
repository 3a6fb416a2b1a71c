//! The outbox's spans and metrics (`safe_db::outbox`): a span per delivery with its
//! outcome, the delivered / failed / dead-lettered counters per topic and the age of the
//! oldest pending message through the `metrics` facade, with the table read back.

use std::collections::BTreeMap;
use std::time::Duration;

use safe_db::outbox::{self, Delivery, Message, Relay, state};
use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use sea_orm::{ConnectionTrait, Statement};

#[safe_db_operation]
async fn send(tx: &Tx, topic: &str, n: i64) -> Result<outbox::MessageId, Error> {
    Ok(outbox::record(tx, Message::new(topic, &serde_json::json!({ "n": n }))).await?)
}

/// The `state` of every message, in id order.
async fn states(db: &sea_orm::DatabaseConnection) -> Vec<i32> {
    let sql = "SELECT state FROM safe_db_outbox ORDER BY id";
    let stmt = Statement::from_string(db.get_database_backend(), sql);
    db.query_all_raw(stmt)
        .await
        .expect("read back")
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect()
}

/// A span per delivery with its outcome, and the counters and the age gauge through the
/// `metrics` facade (SQLite: what is reported does not depend on the database).
#[test]
fn deliveries_report_spans_and_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use safe_db_test_support::capture;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (captured, guard) = capture::start();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let t = TestDb::sqlite("outbox_metrics", 2).await;
            outbox::migrate(&t.db).await.unwrap();
            send(&t.db, "good", 1).await.unwrap();
            send(&t.db, "bad", 2).await.unwrap();
            send(&t.db, "worse", 3).await.unwrap();
            let relay = Relay::new(t.db.clone(), |d: Delivery| async move {
                match d.topic.as_str() {
                    "good" => Ok(()),
                    _ => Err("refused".to_owned()),
                }
            })
            .max_attempts(1);
            let report = relay.run_once().await.unwrap();
            assert_eq!((report.delivered, report.dead_lettered), (1, 2));
            send(&t.db, "waiting", 4).await.unwrap();
            let relay = Relay::new(t.db.clone(), |_: Delivery| async {
                Err::<(), _>("later".to_owned())
            })
            .backoff(Duration::from_secs(60), Duration::from_secs(60));
            assert_eq!(relay.run_once().await.unwrap().failed, 1);
            assert_eq!(
                states(&t.db).await,
                [state::DELIVERED, state::DEAD, state::DEAD, state::PENDING]
            );
            t.cleanup().await;
        })
    });
    drop(guard);

    let mut counters = BTreeMap::new();
    let mut gauges = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.key().name(), labels.join(","));
        match value {
            DebugValue::Counter(n) => {
                counters.insert(name, n);
            }
            DebugValue::Gauge(g) => {
                gauges.insert(name, g.into_inner());
            }
            DebugValue::Histogram(_) => {}
        }
    }
    assert_eq!(counters["safe_db_outbox_delivered_total{topic=good}"], 1);
    assert_eq!(counters["safe_db_outbox_dead_lettered_total{topic=bad}"], 1);
    assert_eq!(
        counters["safe_db_outbox_dead_lettered_total{topic=worse}"],
        1
    );
    assert_eq!(counters["safe_db_outbox_failed_total{topic=waiting}"], 1);
    // The last round left "waiting" pending: its age, in seconds, by the database's clock.
    let age = gauges["safe_db_outbox_oldest_pending_seconds{}"];
    assert!((0.0..30.0).contains(&age), "{age}");

    let spans: Vec<_> = captured
        .spans()
        .into_iter()
        .filter(|s| s.name == "safe_db.outbox.deliver")
        .collect();
    let outcomes: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| (s.fields["topic"].as_str(), s.fields["outcome"].as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("good", "delivered"),
            ("bad", "dead_lettered"),
            ("worse", "dead_lettered"),
            ("waiting", "failed")
        ]
    );
    assert!(spans.iter().all(|s| s.fields["attempt"] == "1"));
}
