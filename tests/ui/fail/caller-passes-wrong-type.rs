use safe_db::{Tx, safe_db_operation};

#[safe_db_operation]
async fn rename(tx: &Tx, id: i32) -> Result<(), safe_db::Error> {
    let _ = (tx, id);
    Ok(())
}

async fn caller(url: String) {
    // A URL is not a connection.
    let _ = rename(&url, 7).await;
}

fn main() {
    let _ = caller;
}
