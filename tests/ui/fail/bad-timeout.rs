use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(timeout = "2 seconds")]
async fn slow(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

#[safe_db_operation(timeout = 2)]
async fn slower(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
