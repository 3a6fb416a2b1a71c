use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(savepoint = true)]
async fn a(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(savepoint = "no")]
async fn b(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(savepoint)]
async fn c(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(mandatory = true)]
async fn d(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

fn main() {}
