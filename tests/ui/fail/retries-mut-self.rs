use safe_db::{Tx, safe_db_operation};

struct Counter {
    seen: Vec<u32>,
}

impl Counter {
    // A rolled-back attempt's changes to `self` would leak into the next attempt.
    #[safe_db_operation(retries = 3)]
    async fn bump(&mut self, tx: &Tx, n: u32) -> Result<(), safe_db::Error> {
        let _ = tx;
        self.seen.push(n);
        Ok(())
    }
}

fn main() {}
