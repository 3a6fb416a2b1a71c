use safe_db::safe_db_operation;

#[safe_db_operation]
struct AgentService {
    name: String,
}

fn main() {}
