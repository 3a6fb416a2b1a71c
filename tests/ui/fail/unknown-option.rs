use safe_db::{Tx, safe_db_operation};

#[safe_db_operation(isolation = "serializable", propagation = "requires_new")]
async fn rename(tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
