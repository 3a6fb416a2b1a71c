use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn touch(tx: &Tx) {
    let _ = tx;
}

fn main() {}
