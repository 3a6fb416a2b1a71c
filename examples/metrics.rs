//! The seed's key metrics without an exporter: operation counters, pool size, idle
//! connections and utilisation, and the slow-operation warning, printed by
//! `cargo run --example metrics`. (With the `metrics` feature the same figures go to any
//! `metrics` exporter, e.g. Prometheus; see the README.)

use std::time::Duration;

use safe_db::{DbConfig, Error, PoolStats, Stats, Tx, safe_db_operation};
use sea_orm::{ConnectionTrait, Statement};

#[safe_db_operation(timeout = "1s")]
async fn work(tx: &Tx, id: i32, fail: bool) -> Result<(), Error> {
    let sql = "INSERT INTO jobs (id) VALUES ($1)";
    tx.execute_raw(Statement::from_sql_and_values(
        tx.get_database_backend(),
        sql,
        [id.into()],
    ))
    .await?;
    if fail {
        return Err(Error::validation("refused"));
    }
    Ok(())
}

#[safe_db_operation]
async fn slow(tx: &Tx) -> Result<(), Error> {
    tx.execute_unprepared("SELECT 1").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Log lines (the slow-operation warning) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let path = std::env::temp_dir().join("safe-db-metrics.db");
    let _ = std::fs::remove_file(&path);
    let url = format!(
        "sqlite://{}?mode=rwc&pool_size=2&max_overflow=3",
        path.display()
    );
    let config = DbConfig::from_url(&url)?;
    println!("config: {config}");
    let db = config.connect().await?;
    db.execute_unprepared("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
        .await?;

    safe_db::set_slow_threshold(Duration::from_millis(200));
    let tasks: Vec<_> = (0..20)
        .map(|id| {
            let db = db.clone();
            tokio::spawn(async move { work(&db, id, id % 5 == 0).await })
        })
        .collect();
    for task in tasks {
        let _ = task.await?;
    }
    slow(&db).await?;

    let stats = Stats::snapshot();
    println!(
        "operations: started {}, committed {}, rolled back {}, retried {}, timed out {}, panicked {}, cancelled {}, active {}",
        stats.started,
        stats.committed,
        stats.rolled_back,
        stats.retried,
        stats.timed_out,
        stats.panicked,
        stats.cancelled,
        stats.active
    );
    if let Some(pool) = PoolStats::of(&db) {
        println!(
            "pool: {} open, {} idle, {} in use of {} ({:.0}% utilisation)",
            pool.size,
            pool.idle,
            pool.in_use(),
            pool.max,
            pool.utilisation() * 100.0
        );
    }
    db.close().await?;
    Ok(())
}
