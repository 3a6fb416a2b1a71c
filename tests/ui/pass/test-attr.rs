// `#[safe_db::test]` in each supported shape.
use safe_db::testing::TestTx;
use safe_db::{Db, Error};
use sea_orm::{DatabaseConnection, DbErr};

async fn schema(_db: &DatabaseConnection) -> Result<(), DbErr> {
    Ok(())
}

#[safe_db::test]
async fn plain(_test: &TestTx) {}

#[safe_db::test(setup = schema, backends(sqlite))]
async fn with_setup(_test: &TestTx) -> Result<(), Error> {
    Ok(())
}

#[safe_db::test(backends(sqlite, postgres, mysql))]
async fn own_database(_db: &Db) -> Result<(), DbErr> {
    Ok(())
}

#[safe_db::test]
#[ignore]
async fn connection(_db: &DatabaseConnection) {}

fn main() {}
