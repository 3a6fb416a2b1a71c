use safe_db::{Tx, safe_db_operation};

#[derive(Debug)]
struct AppError;

#[safe_db_operation]
async fn rename(tx: &Tx, id: i32) -> Result<(), AppError> {
    let _ = (tx, id);
    Ok(())
}

fn main() {}
