use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(retries = "3")]
async fn bump(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

#[safe_db_operation(retries = 2.5)]
async fn bump_more(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
