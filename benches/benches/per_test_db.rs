//! A PostgreSQL database per test: copied from a template migrated once
//! (`safe_db::testing::Template`), against created empty and migrated for each test. The
//! schema is a service's: 30 tables, each with a foreign key to the one before, an index
//! and a check. Prints the mean time per test database (created, connected, dropped)
//! over `SAFE_DB_BENCH_DBS` databases (default 20), and writes `target/per_test_db.json`.

use std::time::{Duration, Instant};

use safe_db::testing::Template;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr};

const TABLES: usize = 30;

async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    for i in 0..TABLES {
        let parent = if i == 0 {
            String::new()
        } else {
            format!(", parent_id BIGINT REFERENCES t{} (id)", i - 1)
        };
        db.execute_unprepared(&format!(
            "CREATE TABLE t{i} (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, \
             amount NUMERIC(12, 2) NOT NULL DEFAULT 0 CHECK (amount >= 0), \
             created_at TIMESTAMPTZ NOT NULL DEFAULT now(){parent}); \
             CREATE INDEX t{i}_name ON t{i} (name)"
        ))
        .await?;
    }
    Ok(())
}

fn with_database(url: &str, database: &str) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Ok(url) = std::env::var("SAFE_DB_TEST_POSTGRES_URL") else {
        eprintln!("SAFE_DB_TEST_POSTGRES_URL is not set: skipped");
        return;
    };
    let n: u32 = std::env::var("SAFE_DB_BENCH_DBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = Database::connect(url.as_str()).await.expect("admin");
        // Each test creates an empty database and runs the migrations.
        let mut migrated = Duration::ZERO;
        for i in 0..n {
            let started = Instant::now();
            let name = format!("safe_db_bench_migrated_{i}");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let db = Database::connect(with_database(&url, &name)).await.unwrap();
            migrate(&db).await.unwrap();
            db.close().await.unwrap();
            admin
                .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await
                .unwrap();
            migrated += started.elapsed();
        }
        // Each test copies the template, migrated once.
        let prepared = Instant::now();
        let template = Template::prepare(&url, "safe_db_bench_template", async |db| {
            migrate(db).await
        })
        .await
        .unwrap();
        let prepare = prepared.elapsed();
        let mut copied = Duration::ZERO;
        for _ in 0..n {
            let started = Instant::now();
            let test = template.create().await.unwrap();
            test.drop_database().await.unwrap();
            copied += started.elapsed();
        }
        let per = |total: Duration| total.as_secs_f64() * 1000.0 / f64::from(n);
        println!(
            "| per test | created and migrated ({TABLES} tables) | copied from the template |"
        );
        println!("|---|---:|---:|");
        println!(
            "| mean time (create, connect, drop) | {:.1} ms | {:.1} ms |",
            per(migrated),
            per(copied)
        );
        println!(
            "| once per run | — | {:.1} ms (the template) |",
            prepare.as_secs_f64() * 1000.0
        );
        let json = format!(
            "{{\"tables\": {TABLES}, \"databases\": {n}, \"migrated_ms\": {:.1}, \"copied_ms\": {:.1}, \"prepare_ms\": {:.1}}}",
            per(migrated),
            per(copied),
            prepare.as_secs_f64() * 1000.0
        );
        let target =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/per_test_db.json");
        std::fs::write(target, json).expect("write target/per_test_db.json");
        admin
            .execute_unprepared("DROP DATABASE IF EXISTS safe_db_bench_template WITH (FORCE)")
            .await
            .unwrap();
    });
}
