//! The seed's agent registry on an embedded SQLite file, written with safe-db.
//!
//! `cargo run --example quickstart` prints what each operation did, including a failure
//! that is rolled back and a nested failure that the caller survives.

use safe_db::{Error, ErrorKind, Tx, safe_db_operation};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryOrder, Set,
};

/// The seed's agent registry, as a SeaORM entity.
mod agent {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "agents")]
    pub(crate) struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) id: i32,
        pub(crate) name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Pattern 3 of the seed (`@safe_db_operation`): the body runs in a transaction.
#[safe_db_operation]
async fn create_agent(tx: &Tx, id: i32, name: &str) -> Result<agent::Model, Error> {
    let model = agent::ActiveModel {
        id: Set(id),
        name: Set(name.to_owned()),
    };
    Ok(model.insert(tx).await?)
}

#[safe_db_operation]
async fn rename_agent(tx: &Tx, id: i32, name: String) -> Result<agent::Model, Error> {
    let found = agent::Entity::find_by_id(id).one(tx).await?;
    let agent = found.ok_or_else(|| Error::not_found("agent", id))?;
    let mut active: agent::ActiveModel = agent.into();
    active.name = Set(name);
    Ok(active.update(tx).await?)
}

/// Writes, then rejects its input: the write is rolled back.
#[safe_db_operation]
async fn update_agent_with_validation(tx: &Tx, id: i32, name: String) -> Result<(), Error> {
    rename_agent(tx, id, name.clone()).await?;
    if name.trim().is_empty() {
        return Err(Error::validation("an agent's name must not be blank"));
    }
    Ok(())
}

/// Registers a team; a duplicate member fails in its own savepoint and is skipped.
#[safe_db_operation(retries = 3, timeout = "5s")]
async fn register_team(tx: &Tx, first_id: i32, names: Vec<String>) -> Result<usize, Error> {
    let mut created = 0;
    for (offset, name) in names.iter().enumerate() {
        match create_agent(tx, first_id + offset as i32, name).await {
            Ok(_) => created += 1,
            Err(e) if e.kind() == ErrorKind::UniqueViolation => {
                println!("  skipped {name:?}: already registered (its savepoint rolled back)");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

async fn list(db: &DatabaseConnection) -> Result<Vec<String>, Error> {
    let agents = agent::Entity::find()
        .order_by_asc(agent::Column::Id)
        .all(db)
        .await?;
    Ok(agents
        .into_iter()
        .map(|a| format!("{}:{}", a.id, a.name))
        .collect())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let path = std::env::temp_dir().join("safe-db-quickstart.db");
    let _ = std::fs::remove_file(&path);
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let db = Database::connect(url.as_str()).await?;
    db.execute_unprepared(
        "CREATE TABLE agents (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE)",
    )
    .await?;
    println!("agent registry at {}", path.display());

    let ada = create_agent(&db, 1, "Ada").await?;
    println!("created {ada:?} (committed)");

    let renamed = rename_agent(&db, 1, "Ada Lovelace".into()).await?;
    println!("renamed to {:?} (committed)", renamed.name);

    let err = update_agent_with_validation(&db, 1, "   ".into())
        .await
        .unwrap_err();
    println!(
        "blank rename failed ({:?}: {err}); rolled back, name is still {:?}",
        err.kind(),
        agent::Entity::find_by_id(1).one(&db).await?.map(|a| a.name)
    );

    let missing = rename_agent(&db, 42, "Nobody".into()).await.unwrap_err();
    println!("renaming agent 42: {:?}: {missing}", missing.kind());

    println!("registering a team that repeats a name:");
    let team = vec![
        "Grace".to_owned(),
        "Ada Lovelace".to_owned(),
        "Alan".to_owned(),
    ];
    let created = register_team(&db, 10, team).await?;
    println!("  {created} of 3 created (committed together)");

    println!("agents now: {}", list(&db).await?.join(", "));
    Ok(())
}
