use safe_db::safe_db_operation;

#[safe_db_operation]
async fn count_agents() -> Result<u64, safe_db::Error> {
    Ok(0)
}

fn main() {}
