use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn count(tx: &Tx) -> Result<u64, safe_db::Error> {
    let _ = tx;
    Ok("many")
}

fn main() {}
