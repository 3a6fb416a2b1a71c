//! Every supported shape of an operation compiles, and its future is `Send`.
use std::future::Future;

use safe_db::{Begin, Tx, safe_db_operation};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};

#[safe_db_operation]
async fn free(tx: &Tx, id: i32) -> Result<i32, DbErr> {
    tx.execute_unprepared("SELECT 1").await?;
    Ok(id)
}

#[safe_db_operation]
async fn generic<T: Send + Sync + std::fmt::Display>(tx: &Tx, value: T) -> Result<String, DbErr> {
    free(tx, 1).await?;
    Ok(value.to_string())
}

#[safe_db_operation]
async fn with_lifetimes<'a>(tx: &Tx, name: &'a str, rest: &[&'a str]) -> Result<&'a str, DbErr> {
    let _ = (tx, rest);
    Ok(name)
}

#[safe_db_operation]
async fn named_lifetimes<'a>(tx: &'a Tx, name: &'a str) -> Result<&'a str, DbErr> {
    tx.execute_unprepared("SELECT 1").await?;
    Ok(name)
}

#[safe_db_operation]
async fn patterns(tx: &Tx, (a, b): (i32, i32), mut name: String) -> Result<String, DbErr> {
    let _ = tx;
    name.push_str(&(a + b).to_string());
    Ok(name)
}

#[safe_db_operation(isolation = "serializable", read_only, timeout = "1m", retries = 3)]
async fn all_options(tx: &Tx, (a, b): (i32, i32), mut name: String) -> Result<String, DbErr> {
    let _ = tx;
    name.push_str(&(a + b).to_string());
    Ok(name)
}

#[safe_db_operation(isolation = "read_committed", timeout = "250ms")]
async fn early_return(tx: &Tx, fail: bool) -> Result<(), safe_db::Error> {
    if fail {
        return Err(safe_db::Error::validation("early"));
    }
    free(tx, 2).await?;
    Ok(())
}

struct Service {
    name: String,
}

impl Service {
    #[safe_db_operation]
    async fn method(&self, tx: &Tx) -> Result<String, DbErr> {
        free(tx, 3).await?;
        Ok(self.name.clone())
    }

    #[safe_db_operation(retries = 2)]
    pub async fn retried_method(&self, tx: &Tx, id: i32) -> Result<String, DbErr> {
        self.method(tx).await.map(|n| format!("{n}{id}"))
    }

    // A typed receiver by reference is a reference too.
    #[safe_db_operation(retries = 2)]
    pub async fn retried_typed_receiver(self: &Self, tx: &Tx) -> Result<String, DbErr> {
        self.method(tx).await
    }
}

// Another crate's `Db` is not safe-db's: no connection.
mod sled {
    pub struct Db;
}

#[safe_db_operation]
async fn with_someone_elses_db(tx: &Tx, cache: &sled::Db) -> Result<(), DbErr> {
    let _ = (tx, cache);
    Ok(())
}

trait Registry {
    fn register(&self, db: &impl Begin, id: i32) -> impl Future<Output = Result<i32, DbErr>> + Send;
}

impl Registry for Service {
    #[safe_db_operation]
    async fn register(&self, tx: &Tx, id: i32) -> Result<i32, DbErr> {
        free(tx, id).await
    }
}

fn assert_send<F: Future + Send>(_: F) {}

#[allow(dead_code)]
fn callers(db: &DatabaseConnection, service: &Service) {
    assert_send(free(db, 1));
    assert_send(generic(db, 5u8));
    assert_send(with_lifetimes(db, "a", &["b"]));
    assert_send(named_lifetimes(db, "a"));
    assert_send(patterns(db, (1, 2), String::new()));
    assert_send(all_options(db, (1, 2), String::new()));
    assert_send(early_return(db, true));
    assert_send(service.method(db));
    assert_send(service.retried_method(db, 1));
    assert_send(service.register(db, 1));
    // A caller may pass `&&DatabaseConnection`, an `Arc`, or a transaction.
    assert_send(free(&db, 1));
    assert_send(free(&std::sync::Arc::new(db.clone()), 1));
}

#[safe_db_operation]
async fn nested_caller(tx: &Tx) -> Result<(), DbErr> {
    free(tx, 1).await?;
    Ok(())
}

fn main() {}
