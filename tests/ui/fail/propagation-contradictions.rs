use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(mandatory, durable)]
async fn a(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(mandatory, requires_new)]
async fn b(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(mandatory, isolation = "serializable")]
async fn c(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(retries = 3, mandatory)]
async fn d(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(requires_new, durable)]
async fn e(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(savepoint = false, isolation = "serializable")]
async fn f(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(savepoint = false, retries = 3)]
async fn g(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(savepoint = false, read_only)]
async fn h(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(savepoint = false, timeout = "1s")]
async fn i(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(requires_new, savepoint = false)]
async fn j(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

#[safe_db_operation(durable, savepoint = false)]
async fn k(tx: &Tx) -> Result<(), safe_db::Error> { let _ = tx; Ok(()) }

fn main() {}
