use safe_db::{Tx, safe_db_operation};

trait Registry {
    #[safe_db_operation]
    async fn register(&self, tx: &Tx, id: i32) -> Result<(), safe_db::Error>;
}

fn main() {}
