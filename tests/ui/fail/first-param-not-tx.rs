use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn rename(id: i32, tx: &Tx) -> Result<(), safe_db::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
