//! Instructions per transaction, counted by callgrind: a figure that does not drift with
//! the machine's load, so the wrapper's cost can be resolved far below the noise of
//! wall-clock timing. `benches/instructions.sh` runs this binary under
//! `valgrind --tool=callgrind` for each variant, once with 0 and once with N transactions
//! on SQLite in memory, and divides the difference by N.

use safe_db_bench::{
    annotated, annotated_outer, closure_form, hand_written, hand_written_nested, raw_sqlx,
    sea_orm_closure, targets,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Only `instructions.sh` runs it with a variant; `cargo bench` runs it bare.
    let (Some(variant), Some(count)) = (args.get(1), args.get(2)) else {
        return;
    };
    if variant.starts_with("--") {
        return;
    }
    let count: usize = count.parse().expect("a count");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let target = targets(1)
            .await
            .into_iter()
            .next()
            .expect("sqlite in memory");
        let db = &target.db;
        // Warm the statement caches, the pool and the allocator the same way for all.
        for _ in 0..20 {
            hand_written(db).await.unwrap();
            annotated(db).await.unwrap();
        }
        for _ in 0..count {
            match variant.as_str() {
                "a_annotated" => annotated(db).await.unwrap(),
                "b_closure_form" => closure_form(db).await.unwrap(),
                "c_sea_orm_begin_commit" => hand_written(db).await.unwrap(),
                "d_sea_orm_transaction_closure" => sea_orm_closure(db).await.unwrap(),
                "e_raw_sqlx" => raw_sqlx(db).await.unwrap(),
                "nested_a_annotated" => annotated_outer(db).await.unwrap(),
                "nested_c_sea_orm_begin" => hand_written_nested(db).await.unwrap(),
                other => panic!("unknown variant {other}"),
            }
        }
    });
}
