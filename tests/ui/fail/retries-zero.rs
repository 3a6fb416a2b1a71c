use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(retries = 0)]
async fn bump(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
