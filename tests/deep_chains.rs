//! Deep call chains of ordinary service functions: an operation's future does not grow
//! with the depth of the chain (each body is boxed once, where it starts), so a 12-level
//! chain runs on a 512 KiB thread in a debug build, and every level's work commits.

use safe_db::{Error, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use sea_orm::ConnectionTrait;

async fn insert(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'level{id}')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation]
async fn level1(tx: &Tx) -> Result<(), Error> {
    insert(tx, 1).await
}

/// `levelN` writes its own row, then calls `levelN-1` with its transaction, as a service
/// function calls the next layer down.
macro_rules! chain {
    ($($name:ident($id:literal) -> $next:ident;)*) => {$(
        #[safe_db_operation]
        async fn $name(tx: &Tx) -> Result<(), Error> {
            insert(tx, $id).await?;
            $next(tx).await
        }
    )*};
}

chain! {
    level2(2) -> level1;
    level3(3) -> level2;
    level4(4) -> level3;
    level5(5) -> level4;
    level6(6) -> level5;
    level7(7) -> level6;
    level8(8) -> level7;
    level9(9) -> level8;
    level10(10) -> level9;
    level11(11) -> level10;
    level12(12) -> level11;
}

#[tokio::test]
async fn an_operation_future_does_not_grow_with_the_depth_of_the_chain() {
    let t = TestDb::sqlite("future_size", 1).await;
    let db = &t.db;
    let sizes = [
        std::mem::size_of_val(&level1(db)),
        std::mem::size_of_val(&level2(db)),
        std::mem::size_of_val(&level3(db)),
        std::mem::size_of_val(&level4(db)),
        std::mem::size_of_val(&level5(db)),
        std::mem::size_of_val(&level6(db)),
        std::mem::size_of_val(&level7(db)),
        std::mem::size_of_val(&level8(db)),
        std::mem::size_of_val(&level9(db)),
        std::mem::size_of_val(&level10(db)),
        std::mem::size_of_val(&level11(db)),
        std::mem::size_of_val(&level12(db)),
    ];
    println!("future sizes at depths 1..12: {sizes:?}");
    // Hand-written SeaORM nesting stays under 1 KiB per level; so does this.
    for (depth, pair) in sizes.windows(2).enumerate() {
        assert!(
            pair[1] <= pair[0] + 1024,
            "depth {} -> {}: {sizes:?}",
            depth + 1,
            depth + 2
        );
    }
    assert!(sizes[11] <= sizes[0] + 11 * 1024, "{sizes:?}");
}

#[test]
fn a_twelve_level_chain_runs_on_a_512_kib_thread() {
    let worker = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                for t in TestDb::all("deep_chain", 2).await {
                    level12(&t.db).await.expect("the chain commits");
                    assert_eq!(
                        t.agent_ids().await,
                        (1..=12).collect::<Vec<_>>(),
                        "{:?}",
                        t.backend
                    );
                    // A failure at the bottom rolls back every level.
                    t.db.execute_unprepared("DELETE FROM agents")
                        .await
                        .expect("reset");
                    t.db.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'taken')")
                        .await
                        .expect("seed");
                    let err = level12(&t.db).await.expect_err("level 1 collides");
                    assert_eq!(err.kind(), safe_db::ErrorKind::UniqueViolation);
                    assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
                    t.cleanup().await;
                }
            });
        })
        .expect("thread");
    worker.join().expect("no stack overflow");
}
