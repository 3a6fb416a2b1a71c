//! `Faults` target an operation by its path (issue 26): `module::function` and
//! `Type::method` tell apart operations of one name, a closure is targeted by the name given
//! to `Options::run_as`, and a `savepoint = false` operation's own statements can be
//! targeted. Every outcome is read back from the database, on each configured one.

use safe_db::testing::{Failure, Faults};
use safe_db::{Error, ErrorKind, Options, Tx, safe_db_operation};
use safe_db_test_support::TestDb;
use sea_orm::ConnectionTrait;

mod billing {
    use super::*;

    #[safe_db_operation]
    pub async fn save(tx: &Tx, id: i32) -> Result<(), Error> {
        tx.execute_unprepared(&format!(
            "INSERT INTO agents (id, name) VALUES ({id}, 'b{id}')"
        ))
        .await?;
        Ok(())
    }
}

mod shipping {
    use super::*;

    #[safe_db_operation]
    pub async fn save(tx: &Tx, id: i32) -> Result<(), Error> {
        tx.execute_unprepared(&format!(
            "INSERT INTO agents (id, name) VALUES ({id}, 's{id}')"
        ))
        .await?;
        Ok(())
    }

    pub(crate) struct Repo;

    impl Repo {
        #[safe_db_operation]
        pub(crate) async fn save(&self, tx: &Tx, id: i32) -> Result<(), Error> {
            tx.execute_unprepared(&format!(
                "INSERT INTO agents (id, name) VALUES ({id}, 'r{id}')"
            ))
            .await?;
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_path_tells_apart_operations_of_one_name() {
    for t in TestDb::all("fault_paths", 2).await {
        let faults = Faults::new().fail_statement("billing::save", 1, Failure::UniqueViolation);
        let billed = faults.run(billing::save(&t.db, 1)).await;
        let shipped = faults.run(shipping::save(&t.db, 2)).await;
        let repo = faults.run(shipping::Repo.save(&t.db, 3)).await;
        assert_eq!(
            billed.unwrap_err().kind(),
            ErrorKind::UniqueViolation,
            "{:?}",
            t.backend
        );
        shipped.unwrap();
        repo.unwrap();
        assert_eq!(t.agent_ids().await, vec![2, 3], "{:?}", t.backend);

        let faults = Faults::new().fail_statement("Repo::save", 1, Failure::UniqueViolation);
        let repo = faults.run(shipping::Repo.save(&t.db, 4)).await;
        let plain = faults.run(shipping::save(&t.db, 5)).await;
        assert!(repo.is_err(), "{:?}", t.backend);
        plain.unwrap();
        // A bare name still targets every operation of that name.
        let faults = Faults::new().fail_statement("save", 1, Failure::UniqueViolation);
        assert!(faults.run(billing::save(&t.db, 6)).await.is_err());
        assert!(faults.run(shipping::save(&t.db, 7)).await.is_err());
        assert_eq!(faults.fired(), 2);
        // A path that names none of them targets nothing.
        let faults = Faults::new().fail_statement("other::save", 1, Failure::UniqueViolation);
        faults.run(billing::save(&t.db, 8)).await.unwrap();
        assert_eq!(faults.fired(), 0);
        assert_eq!(t.agent_ids().await, vec![2, 3, 5, 8], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_named_closure_is_targeted_by_its_name() {
    for t in TestDb::all("fault_closure", 2).await {
        let faults = Faults::new().fail_commit("charge_card", Failure::SerializationFailure);
        let charged = faults
            .run(
                Options::new().run_as("charge_card", &t.db, async |tx: &Tx| {
                    tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (1, 'charged')")
                        .await
                        .map(drop)
                }),
            )
            .await;
        assert!(charged.is_err(), "{:?}", t.backend);
        let other = faults
            .run(safe_db::transaction(&t.db, async |tx: &Tx| {
                tx.execute_unprepared("INSERT INTO agents (id, name) VALUES (2, 'other')")
                    .await
                    .map(drop)
            }))
            .await;
        other.unwrap();
        assert_eq!(faults.fired(), 1);
        assert_eq!(t.agent_ids().await, vec![2], "{:?}", t.backend);
        t.cleanup().await;
    }
}

#[safe_db_operation(savepoint = false)]
async fn add_line(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'line{id}')"
    ))
    .await?;
    Ok(())
}

#[safe_db_operation]
async fn order(tx: &Tx, id: i32) -> Result<(), Error> {
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({id}, 'order{id}')"
    ))
    .await?;
    add_line(tx, id + 1).await?;
    tx.execute_unprepared(&format!(
        "INSERT INTO agents (id, name) VALUES ({}, 'after{id}')",
        id + 2
    ))
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_joined_operations_own_statements_are_targeted() {
    for t in TestDb::all("fault_joined", 2).await {
        // Its first statement (the caller's first is not its own): the whole order fails.
        let faults = Faults::new().fail_statement("add_line", 1, Failure::UniqueViolation);
        let failed = faults.run(order(&t.db, 10)).await;
        assert_eq!(
            failed.unwrap_err().kind(),
            ErrorKind::UniqueViolation,
            "{:?}",
            t.backend
        );
        assert_eq!(faults.fired(), 1);
        // Its second: it sends only one, and the caller's later ones are not its own.
        let faults = Faults::new().fail_statement("add_line", 2, Failure::UniqueViolation);
        faults.run(order(&t.db, 20)).await.unwrap();
        assert_eq!(faults.fired(), 0);
        assert_eq!(t.agent_ids().await, vec![20, 21, 22], "{:?}", t.backend);
        t.cleanup().await;
    }
}
