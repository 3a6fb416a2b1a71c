//! The expansion only names items by absolute paths: shadowing the prelude changes nothing.
#![deny(unused_qualifications, unused_results, unused_mut)]
#![allow(dead_code)]

mod core {}
mod std {}
mod safe_db_private {}

type Result<T> = ::core::result::Result<T, ::sea_orm::DbErr>;
struct Ok;
struct Err;
struct Box;
struct Option;
struct From;
struct Future;
struct Tx;
struct Operation;

#[::safe_db::safe_db_operation(retries = 1, timeout = "1s")]
async fn shadowed(tx: &::safe_db::Tx, id: i32) -> Result<i32> {
    let _ = tx;
    ::core::result::Result::Ok(id)
}

#[::safe_db::safe_db_operation]
async fn shadowed_once(tx: &::safe_db::Tx, name: ::std::string::String) -> Result<usize> {
    let _ = tx;
    // Variables named like the expansion's own locals do not clash with them.
    let operation = name.len();
    let result = operation;
    let outcome = result;
    ::core::result::Result::Ok(outcome)
}

fn main() {}
