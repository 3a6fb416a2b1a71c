use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn find(tx: &Tx, id: i32) -> Option<String> {
    let _ = (tx, id);
    None
}

fn main() {}
