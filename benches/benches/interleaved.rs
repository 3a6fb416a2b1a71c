//! The per-transaction ratios, measured side by side: each round runs every variant a
//! batch of times in rotation, so drift on a shared machine hits all of them alike. Prints
//! each variant's cost relative to (c), hand-written SeaORM `begin`/`commit`, as the median
//! and spread over the rounds, and writes `target/interleaved.json`.

use std::time::{Duration, Instant};

use safe_db_bench::{
    annotated, annotated_outer, closure_form, hand_written, hand_written_nested, raw_sqlx,
    sea_orm_closure, targets,
};
use sea_orm::DatabaseConnection;

const VARIANTS: [&str; 7] = [
    "a_annotated",
    "b_closure_form",
    "c_sea_orm_begin_commit",
    "d_sea_orm_transaction_closure",
    "e_raw_sqlx",
    "nested_a_annotated",
    "nested_c_sea_orm_begin",
];

async fn once(db: &DatabaseConnection, variant: usize) {
    match variant {
        0 => annotated(db).await.unwrap(),
        1 => closure_form(db).await.unwrap(),
        2 => hand_written(db).await.unwrap(),
        3 => sea_orm_closure(db).await.unwrap(),
        4 => raw_sqlx(db).await.unwrap(),
        5 => annotated_outer(db).await.unwrap(),
        _ => hand_written_nested(db).await.unwrap(),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("SAFE_DB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let batch: usize = std::env::var("SAFE_DB_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = if cfg!(feature = "metrics") {
        "on"
    } else {
        "off"
    };
    let mut json = Vec::new();
    runtime.block_on(async {
        for target in targets(1).await {
            let db = &target.db;
            for v in 0..VARIANTS.len() {
                for _ in 0..batch / 4 {
                    once(db, v).await; // warm-up
                }
            }
            let mut per_round: Vec<[Duration; 7]> = Vec::new();
            for round in 0..rounds {
                let mut times = [Duration::ZERO; 7];
                for step in 0..VARIANTS.len() {
                    // Rotate the order each round.
                    let v = (step + round) % VARIANTS.len();
                    let started = Instant::now();
                    for _ in 0..batch {
                        once(db, v).await;
                    }
                    times[v] = started.elapsed();
                }
                per_round.push(times);
            }
            for (v, name) in VARIANTS.iter().enumerate() {
                let base = if v >= 5 { 6 } else { 2 };
                let mut ratios: Vec<f64> = per_round
                    .iter()
                    .map(|t| t[v].as_secs_f64() / t[base].as_secs_f64())
                    .collect();
                ratios.sort_by(f64::total_cmp);
                let median = ratios[ratios.len() / 2];
                let (low, high) = (ratios[ratios.len() / 4], ratios[ratios.len() * 3 / 4]);
                let micros: Vec<f64> = per_round.iter().map(|t| t[v].as_secs_f64() * 1e6 / batch as f64).collect();
                let mut sorted = micros.clone();
                sorted.sort_by(f64::total_cmp);
                let us = sorted[sorted.len() / 2];
                println!(
                    "{:16} metrics {metrics:3} {name:30} {us:8.1} µs/tx   ×{median:.3} of {}  (IQR {low:.3}–{high:.3})",
                    target.name,
                    VARIANTS[base]
                );
                json.push(format!(
                    "{{\"target\":\"{}\",\"metrics\":\"{metrics}\",\"variant\":\"{name}\",\"micros\":{us:.2},\"ratio\":{median:.4},\"q1\":{low:.4},\"q3\":{high:.4}}}",
                    target.name
                ));
            }
        }
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/interleaved-metrics-{metrics}.json"));
    std::fs::write(path, format!("[{}]\n", json.join(",\n"))).expect("write results");
}
