//! Per-transaction cost of one small write: (a) `#[safe_db_operation]`, (b) the closure
//! form, (c) hand-written SeaORM `begin`/`commit`, (d) SeaORM's `transaction` closure,
//! (e) raw sqlx `begin`/`commit` (the floor); and nested, an operation calling another
//! (savepoint) against hand-written `txn.begin()`.
//!
//! Every variant runs the same SQL: on SQLite, `BEGIN IMMEDIATE` (what safe-db issues for
//! a writer) is used by the hand-written variants too, so only the wrapper differs.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use safe_db_bench::{
    Target, annotated, annotated_outer, closure_form, hand_written, hand_written_nested, raw_sqlx,
    sea_orm_closure, targets,
};

fn per_transaction(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let targets: Vec<Target> = runtime.block_on(targets(1));
    let suffix = if cfg!(feature = "metrics") {
        " (metrics on)"
    } else {
        ""
    };
    for target in &targets {
        let db = &target.db;
        let mut group = c.benchmark_group(format!("per_transaction/{}{suffix}", target.name));
        group.bench_function("a_annotated", |b| {
            b.to_async(&runtime)
                .iter(|| async { annotated(db).await.unwrap() })
        });
        group.bench_function("b_closure_form", |b| {
            b.to_async(&runtime)
                .iter(|| async { closure_form(db).await.unwrap() })
        });
        group.bench_function("c_sea_orm_begin_commit", |b| {
            b.to_async(&runtime)
                .iter(|| async { hand_written(db).await.unwrap() })
        });
        group.bench_function("d_sea_orm_transaction_closure", |b| {
            b.to_async(&runtime)
                .iter(|| async { sea_orm_closure(db).await.unwrap() })
        });
        group.bench_function("e_raw_sqlx", |b| {
            b.to_async(&runtime)
                .iter(|| async { raw_sqlx(db).await.unwrap() })
        });
        group.bench_function(BenchmarkId::new("nested", "a_annotated"), |b| {
            b.to_async(&runtime)
                .iter(|| async { annotated_outer(db).await.unwrap() })
        });
        group.bench_function(BenchmarkId::new("nested", "c_sea_orm_begin"), |b| {
            b.to_async(&runtime)
                .iter(|| async { hand_written_nested(db).await.unwrap() })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = per_transaction
}
criterion_main!(benches);
