use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
fn rename(tx: &Tx, id: i32) -> Result<(), safe_db::Error> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
