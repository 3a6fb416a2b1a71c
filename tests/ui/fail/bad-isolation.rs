use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(isolation = "snapshot")]
async fn rename(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
