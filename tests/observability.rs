//! Observability: one span per operation with its fields, nested operations as child
//! spans, the slow-operation warning, and the `metrics` facade.

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use safe_db::{Error, PoolStats, Tx, safe_db_operation};
use safe_db_test_support::{TestDb, capture};
use sea_orm::ConnectionTrait;

#[safe_db_operation]
async fn inner_op(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'n{id}')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation(isolation = "serializable")]
async fn outer_op(tx: &Tx) -> Result<(), Error> {
    inner_op(tx, 1).await?;
    let _ = failing_op(tx).await;
    Ok(())
}

#[safe_db_operation]
async fn failing_op(tx: &Tx) -> Result<(), Error> {
    inner_op(tx, 2).await?;
    Err(Error::validation("no"))
}

#[tokio::test]
async fn each_operation_has_a_span_and_nested_ones_are_children() {
    let t = TestDb::sqlite("spans", 2).await;
    let (captured, _guard) = capture::start();
    outer_op(&t.db).await.unwrap();
    drop(_guard);
    assert_eq!(t.agent_ids().await, vec![1]);

    let find = |name: &str| captured.operations(name);
    let outer = &find("outer_op")
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{}", captured.all_text()));
    assert_eq!(outer.fields["outcome"], "committed");
    assert_eq!(outer.fields["attempt"], "1");
    assert_eq!(outer.fields["depth"], "0");
    assert_eq!(outer.fields["isolation"], "serializable");
    assert!(outer.fields.contains_key("duration_ms"));
    assert_eq!(outer.parent_operation, None);

    let failing = &find("failing_op")
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("{}", captured.all_text()));
    assert_eq!(failing.fields["outcome"], "rolled_back");
    assert_eq!(failing.fields["depth"], "1");
    assert_eq!(failing.parent_operation.as_deref(), Some("outer_op"));

    let inners = find("inner_op");
    assert_eq!(inners.len(), 2);
    let parents: Vec<_> = inners.iter().map(|s| s.parent_operation.clone()).collect();
    assert_eq!(
        parents,
        [Some("outer_op".into()), Some("failing_op".into())]
    );
    assert_eq!(inners[1].fields["depth"], "2");
    t.cleanup().await;
}

#[safe_db_operation(retries = 2)]
async fn retried_op(tx: &Tx) -> Result<(), Error> {
    inner_op(tx, 3).await
}

#[tokio::test]
async fn a_retried_operation_records_its_attempt() {
    use safe_db::testing::{Failure, Faults};
    for t in TestDb::all("attempts", 2).await {
        let (captured, guard) = capture::start();
        // The first attempt's commit fails as a serialization failure (its transaction
        // rolled back on the server): the second commits.
        let faults = Faults::new()
            .fail_commit("retried_op", Failure::SerializationFailure)
            .times(1);
        faults.run(retried_op(&t.db)).await.unwrap();
        drop(guard);
        assert_eq!(faults.fired(), 1, "{:?}", t.backend);
        assert_eq!(t.agent_ids().await, vec![3], "{:?}", t.backend);
        let spans = captured.operations("retried_op");
        let [op] = &spans[..] else {
            panic!("{:?}: {}", t.backend, captured.all_text())
        };
        assert_eq!(op.fields["attempt"], "2", "{:?}: {op:?}", t.backend);
        assert_eq!(op.fields["depth"], "0", "{:?}: {op:?}", t.backend);
        assert_eq!(op.fields["outcome"], "committed", "{:?}: {op:?}", t.backend);
        // Its nested operations, one per attempt, each at depth 1 on its first attempt.
        let inners = captured.operations("inner_op");
        assert_eq!(inners.len(), 2, "{:?}: {inners:?}", t.backend);
        assert!(
            inners
                .iter()
                .all(|s| s.fields["depth"] == "1" && s.fields["attempt"] == "1"),
            "{:?}: {inners:?}",
            t.backend
        );
        t.cleanup().await;
    }
}

#[safe_db_operation]
async fn slow_op(tx: &Tx) -> Result<(), Error> {
    inner_op(tx, 5).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[tokio::test]
async fn a_slow_operation_logs_a_warning() {
    let t = TestDb::sqlite("slow", 2).await;
    let (captured, _guard) = capture::start();
    safe_db::set_slow_threshold(Duration::from_millis(100));
    slow_op(&t.db).await.unwrap();
    inner_op(&t.db, 6).await.unwrap();
    safe_db::set_slow_threshold(Duration::from_secs(2));
    let warnings: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.level == "WARN" && e.fields["message"] == "slow database operation")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].fields["operation"], "slow_op");
    assert_eq!(warnings[0].fields["threshold_ms"], "100");
    t.cleanup().await;
}

#[test]
fn operations_report_through_the_metrics_facade() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let t = TestDb::sqlite("metrics", 3).await;
            inner_op(&t.db, 1).await.unwrap();
            assert!(failing_op(&t.db).await.is_err());
            // Cut off in its sleep, after its nested `inner_op` (which has 250 ms to commit:
            // 20 ms was not always enough on a loaded machine).
            let cancelled = tokio::time::timeout(Duration::from_millis(250), slow_op(&t.db)).await;
            assert!(cancelled.is_err());
            PoolStats::of(&t.db).unwrap().record("primary");
            // An exhausted pool: a pool of one held by a slow operation, and another
            // operation that waits for it until the acquire timeout.
            let mut options = safe_db_test_support::pool_options(&t.url, 1);
            options.acquire_timeout(Duration::from_millis(200));
            let one = sea_orm::Database::connect(options).await.unwrap();
            let (held, starved) = tokio::join!(
                tokio::time::timeout(
                    Duration::from_millis(600),
                    safe_db::transaction(&one, async |_: &Tx| {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok::<_, Error>(())
                    })
                ),
                async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    inner_op(&one, 9).await
                }
            );
            assert!(held.is_err(), "cut off while holding the connection");
            assert_eq!(
                starved.unwrap_err().kind(),
                safe_db::ErrorKind::PoolExhausted
            );
            assert_eq!(t.agent_ids().await, vec![1]);
            t.cleanup().await;
        })
    });

    let mut counters = std::collections::BTreeMap::new();
    let mut gauges = std::collections::BTreeMap::new();
    let mut histograms = std::collections::BTreeMap::new();
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
            DebugValue::Histogram(h) => {
                histograms.insert(name, h.len());
            }
        }
    }
    assert_eq!(
        counters["safe_db_operations_started_total{operation=inner_op}"],
        4
    );
    assert_eq!(
        counters["safe_db_operations_started_total{operation=failing_op}"],
        1
    );
    assert_eq!(
        counters["safe_db_operations_ended_total{operation=inner_op,outcome=committed}"],
        3
    );
    assert_eq!(
        counters["safe_db_operations_ended_total{operation=failing_op,outcome=rolled_back}"],
        1
    );
    assert_eq!(
        counters["safe_db_operations_ended_total{operation=slow_op,outcome=cancelled}"],
        1
    );
    assert_eq!(
        counters["safe_db_operations_ended_total{operation=transaction,outcome=cancelled}"],
        1
    );
    assert_eq!(
        counters["safe_db_operations_ended_total{operation=inner_op,outcome=not_begun}"],
        1
    );
    // The seed's "connection timeouts": the starved operation.
    assert_eq!(
        counters["safe_db_pool_acquire_failures_total{operation=inner_op}"],
        1
    );
    let durations: usize = histograms
        .iter()
        .filter(|(name, _)| name.starts_with("safe_db_operation_duration_seconds"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(durations, 7, "one duration per ended operation");
    // How long each outermost operation that began waited for its connection (and
    // BEGIN); the starved one never began.
    for op in ["inner_op", "failing_op", "slow_op", "transaction"] {
        assert_eq!(
            histograms[&format!("safe_db_connection_wait_seconds{{operation={op}}}")],
            1,
            "{op}"
        );
    }
    assert_eq!(gauges["safe_db_operations_active{}"], 0.0);
    assert!(gauges["safe_db_pool_max{pool=primary}"] >= 3.0);
    assert!(gauges.contains_key("safe_db_pool_utilisation{pool=primary}"));
}

#[tokio::test]
async fn a_self_deadlock_on_the_pool_says_so() {
    for t in TestDb::all("self_deadlock", 1).await {
        let mut options = t.options(1);
        options.acquire_timeout(Duration::from_millis(200));
        let db = sea_orm::Database::connect(options).await.unwrap();
        let (captured, guard) = capture::start();
        // The outer transaction writes and holds the pool's only connection; the inner
        // operation is handed the pool instead of the outer `tx`.
        let result = safe_db::transaction(&db, async |tx: &Tx| {
            tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'outer')")
                .await?;
            safe_db::transaction(&db, async |_: &Tx| Ok::<_, Error>(())).await
        })
        .await;
        drop(guard);
        assert_eq!(
            result.unwrap_err().kind(),
            safe_db::ErrorKind::PoolExhausted,
            "{:?}",
            t.backend
        );
        let said = captured.events().into_iter().any(|e| {
            e.level == "ERROR"
                && e.fields
                    .get("message")
                    .is_some_and(|m| m.contains("self-deadlock"))
        });
        assert!(said, "{:?}: {}", t.backend, captured.all_text());
        // The outer operation failed with it: its write is rolled back.
        assert_eq!(t.agent_ids().await, Vec::<i32>::new(), "{:?}", t.backend);
        db.close().await.unwrap();
        t.cleanup().await;
    }
}
