use safe_db::safe_db_operation;

#[safe_db_operation]
async fn rename(name: &String) -> Result<(), safe_db::Error> {
    let _ = name;
    Ok(())
}

fn main() {}
