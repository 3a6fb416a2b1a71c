use safe_db::{Tx, safe_db_operation};

// An alias the attribute cannot see through: the compiler checks it, on the same tokens.
type Answer = Option<String>;

#[safe_db_operation]
async fn find(tx: &Tx, id: i32) -> Answer {
    let _ = (tx, id);
    None
}

fn main() {}
