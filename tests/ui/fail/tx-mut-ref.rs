use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn rename(tx: &mut Tx, id: i32) -> Result<(), safe_db::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
