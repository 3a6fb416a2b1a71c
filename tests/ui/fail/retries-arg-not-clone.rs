use safe_db::{Tx, safe_db_operation};

struct Payload {
    name: String,
}

#[safe_db_operation(retries = 3)]
async fn save(tx: &Tx, id: i32, payload: Payload) -> Result<(), safe_db::Error> {
    let _ = (tx, id, payload.name);
    Ok(())
}

fn main() {}
