//! Contention: successful operations per second and failure rate of
//! (a) `#[safe_db_operation(retries = …)]`, against a hand-written retry loop of the kind
//! users write (fixed sleep, no jitter), and against no retry at all:
//! 16 tasks doing a serializable read-modify-write on a few hot rows on PostgreSQL, and
//! 8 writers on one SQLite file.
//!
//! Not a criterion benchmark: the figures are throughput and a failure rate over a fixed
//! amount of work, printed as a table and written to `target/contention.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use safe_db_bench::targets;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

const HOT_ROWS: i64 = 4;

async fn read_modify_write(tx: &Tx, row: i64) -> Result<(), Error> {
    let read = format!("SELECT v FROM bench WHERE id = {row}");
    let found = tx
        .query_one_raw(Statement::from_string(tx.get_database_backend(), read))
        .await?
        .expect("row");
    let v: i64 = found.try_get_by_index(0)?;
    tokio::task::yield_now().await;
    tx.execute_unprepared(&format!("UPDATE bench SET v = {} WHERE id = {row}", v + 1))
        .await?;
    Ok(())
}

#[safe_db_operation(isolation = "serializable", retries = 50)]
async fn with_retries(tx: &Tx, row: i64) -> Result<(), Error> {
    read_modify_write(tx, row).await
}

#[safe_db_operation(isolation = "serializable")]
async fn once(tx: &Tx, row: i64) -> Result<(), Error> {
    read_modify_write(tx, row).await
}

/// What users write by hand: up to 50 attempts, a fixed 10 ms sleep between them.
async fn hand_written_retry_loop(db: &DatabaseConnection, row: i64) -> Result<(), Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match once(db, row).await {
            Err(e) if e.kind() == ErrorKind::SerializationFailure && attempts < 50 => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

#[derive(Clone, Copy)]
enum Strategy {
    SafeDbRetries,
    HandWrittenLoop,
    NoRetry,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::SafeDbRetries => "safe-db retries (backoff + jitter)",
            Strategy::HandWrittenLoop => "hand-written loop (fixed 10 ms)",
            Strategy::NoRetry => "no retry",
        }
    }
}

async fn run(
    db: &Arc<DatabaseConnection>,
    tasks: usize,
    per_task: usize,
    strategy: Strategy,
) -> (f64, f64) {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let db = Arc::clone(db);
            tokio::spawn(async move {
                let mut failed = 0usize;
                for i in 0..per_task {
                    let row = ((task + i) as i64 % HOT_ROWS) + 1;
                    let result = match strategy {
                        Strategy::SafeDbRetries => with_retries(&*db, row).await,
                        Strategy::HandWrittenLoop => hand_written_retry_loop(&db, row).await,
                        Strategy::NoRetry => once(&*db, row).await,
                    };
                    if result.is_err() {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        failed += h.await.expect("task");
    }
    let total = tasks * per_task;
    let elapsed = started.elapsed().as_secs_f64();
    (
        (total - failed) as f64 / elapsed,
        failed as f64 / total as f64,
    )
}

fn main() {
    // `cargo bench -- --list` / `cargo test --benches` run the binary with arguments:
    // only a plain `cargo bench` (`--bench`) measures.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let per_task: usize = std::env::var("SAFE_DB_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rounds: usize = std::env::var("SAFE_DB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut rows = Vec::new();
        for target in targets(16).await {
            let (scenario, tasks) = match target.db.get_database_backend() {
                DbBackend::Postgres => ("postgres, 16 tasks, serializable, 4 hot rows", 16),
                _ if target.name == "sqlite-wal-file" => ("sqlite file, 8 writers, 4 hot rows", 8),
                _ => continue,
            };
            let db = Arc::new(target.db);
            let strategies = [Strategy::SafeDbRetries, Strategy::HandWrittenLoop, Strategy::NoRetry];
            // Rounds in rotating order, so drift hits every strategy alike; the median
            // round is reported.
            let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); strategies.len()];
            for round in 0..rounds {
                for step in 0..strategies.len() {
                    let s = (step + round) % strategies.len();
                    results[s].push(run(&db, tasks, per_task, strategies[s]).await);
                }
            }
            for (s, strategy) in strategies.iter().enumerate() {
                let mut ops: Vec<f64> = results[s].iter().map(|r| r.0).collect();
                ops.sort_by(f64::total_cmp);
                let median = ops[ops.len() / 2];
                let failure = results[s].iter().map(|r| r.1).sum::<f64>() / results[s].len() as f64;
                println!(
                    "{scenario:48} {:36} {median:10.0} ops/s (median of {rounds}, range {:.0}–{:.0})  {:6.2}% failed",
                    strategy.name(),
                    ops[0],
                    ops[ops.len() - 1],
                    failure * 100.0
                );
                rows.push(format!(
                    "{{\"scenario\":\"{scenario}\",\"strategy\":\"{}\",\"ops_per_sec\":{median:.1},\"min\":{:.1},\"max\":{:.1},\"failure_rate\":{failure:.4}}}",
                    strategy.name(),
                    ops[0],
                    ops[ops.len() - 1]
                ));
            }
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/contention.json");
        std::fs::write(&path, format!("[{}]\n", rows.join(",\n"))).expect("write results");
    });
}
