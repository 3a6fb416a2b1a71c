//! A deep chain of operations spawned on tokio: `tokio::spawn` asks rustc to prove the
//! whole chain's future `Send`, one nested future type per level, and past about nine
//! levels that proof overflows rustc's default recursion limit of 128 (E0275, "overflow
//! evaluating the requirement `…: Send`"). Raising the limit in the crate that spawns the
//! chain is the fix (docs/guarantees.md, limits): 256 is enough for 24 levels, 512 for
//! this 32-level chain.
#![recursion_limit = "512"]

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

/// `levelN` writes its own row, then calls `levelN-1` with its transaction.
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
    level13(13) -> level12;
    level14(14) -> level13;
    level15(15) -> level14;
    level16(16) -> level15;
    level17(17) -> level16;
    level18(18) -> level17;
    level19(19) -> level18;
    level20(20) -> level19;
    level21(21) -> level20;
    level22(22) -> level21;
    level23(23) -> level22;
    level24(24) -> level23;
    level25(25) -> level24;
    level26(26) -> level25;
    level27(27) -> level26;
    level28(28) -> level27;
    level29(29) -> level28;
    level30(30) -> level29;
    level31(31) -> level30;
    level32(32) -> level31;
}

#[tokio::test]
async fn a_32_level_chain_spawned_on_tokio_compiles_and_commits() {
    for t in TestDb::all("spawned_chain", 2).await {
        let db = t.db.clone();
        tokio::spawn(async move { level32(&db).await })
            .await
            .expect("the task ends")
            .expect("the chain commits");
        assert_eq!(
            t.agent_ids().await,
            (1..=32).collect::<Vec<_>>(),
            "{:?}",
            t.backend
        );
        // A failure at the bottom rolls back every level, in the spawned task too.
        t.db.execute_unprepared("DELETE FROM agents")
            .await
            .expect("reset");
        t.db.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'taken')")
            .await
            .expect("seed");
        let db = t.db.clone();
        let err = tokio::spawn(async move { level32(&db).await })
            .await
            .expect("the task ends")
            .expect_err("level 1 collides");
        assert_eq!(err.kind(), safe_db::ErrorKind::UniqueViolation);
        assert_eq!(t.agent_ids().await, vec![1], "{:?}", t.backend);
        t.cleanup().await;
    }
}
