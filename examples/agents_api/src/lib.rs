//! The agent registry of the Python guide safe-db started from, as an HTTP API (axum):
//! service functions written with `#[safe_db_operation]`, handlers that run them in the
//! request's transaction, and classified errors as problem+json responses. `src/main.rs`
//! serves it (`cargo run -p agents-api`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use safe_db::axum::{
    Idempotency, IdempotencyService, ProblemLayer, ProblemService, RequestTx, TxLayer, TxService,
};
use safe_db::{Db, Error, Tx, safe_db_operation};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait, QueryOrder, Set,
};
use serde::{Deserialize, Serialize};

/// The API's agents: ids assigned by the database.
pub mod agent {
    use sea_orm::entity::prelude::*;
    use serde::Serialize;

    /// An agent.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
    #[sea_orm(table_name = "agents")]
    pub struct Model {
        /// Assigned on insert.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Unique, 1 to 100 characters.
        pub name: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates the agents table, and the idempotency keys' table, if they do not exist.
pub async fn migrate(db: &impl ConnectionTrait) -> Result<(), sea_orm::DbErr> {
    Idempotency::migrate(db).await?;
    let id = match db.get_database_backend() {
        DbBackend::Postgres => "SERIAL PRIMARY KEY",
        DbBackend::MySql => "INTEGER AUTO_INCREMENT PRIMARY KEY",
        _ => "INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    db.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS agents (id {id}, name VARCHAR(100) NOT NULL UNIQUE)"
    ))
    .await?;
    Ok(())
}

fn valid_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::validation(
            "an agent's name must have 1 to 100 characters",
        ));
    }
    Ok(name.to_owned())
}

/// Registers an agent.
#[safe_db_operation]
pub async fn create_agent(tx: &Tx, name: &str) -> Result<agent::Model, Error> {
    insert_agent(tx, name).await
}

/// `create_agent`'s statements, run in `tx`'s transaction with no savepoint of their own.
async fn insert_agent(tx: &Tx, name: &str) -> Result<agent::Model, Error> {
    let model = agent::ActiveModel {
        name: Set(valid_name(name)?),
        ..Default::default()
    };
    Ok(model.insert(tx).await?)
}

/// Registers several agents: all of them or none.
#[safe_db_operation]
pub async fn create_agents(tx: &Tx, names: &[String]) -> Result<Vec<agent::Model>, Error> {
    let mut created = Vec::with_capacity(names.len());
    for name in names {
        created.push(create_agent(tx, name).await?);
    }
    Ok(created)
}

/// One agent.
#[safe_db_operation(read_only)]
pub async fn get_agent(tx: &Tx, id: i32) -> Result<agent::Model, Error> {
    find_agent(tx, id).await
}

async fn find_agent(tx: &Tx, id: i32) -> Result<agent::Model, Error> {
    agent::Entity::find_by_id(id)
        .one(tx)
        .await?
        .ok_or_else(|| Error::not_found("agent", id))
}

/// A page of agents, by id.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Page<T> {
    /// The agents of this page.
    pub items: Vec<T>,
    /// The page number, from 0.
    pub page: u64,
    /// The page size.
    pub per_page: u64,
    /// How many agents there are in all.
    pub total: u64,
}

/// Lists agents, `per_page` (1 to 100) at a time.
#[safe_db_operation(read_only)]
pub async fn list_agents(tx: &Tx, page: u64, per_page: u64) -> Result<Page<agent::Model>, Error> {
    if !(1..=100).contains(&per_page) {
        return Err(Error::validation("per_page must be from 1 to 100"));
    }
    let pages = agent::Entity::find()
        .order_by_asc(agent::Column::Id)
        .paginate(tx, per_page);
    Ok(Page {
        total: pages.num_items().await?,
        items: pages.fetch_page(page).await?,
        page,
        per_page,
    })
}

/// Renames an agent.
#[safe_db_operation]
pub async fn rename_agent(tx: &Tx, id: i32, name: String) -> Result<agent::Model, Error> {
    update_name(tx, id, name).await
}

/// `rename_agent`'s statements, run in `tx`'s transaction with no savepoint of their own.
async fn update_name(tx: &Tx, id: i32, name: String) -> Result<agent::Model, Error> {
    let found = find_agent(tx, id).await?;
    let mut active: agent::ActiveModel = found.into();
    active.name = Set(valid_name(&name)?);
    Ok(active.update(tx).await?)
}

/// Deletes an agent.
#[safe_db_operation]
pub async fn delete_agent(tx: &Tx, id: i32) -> Result<(), Error> {
    let deleted = agent::Entity::delete_by_id(id).exec(tx).await?;
    if deleted.rows_affected == 0 {
        return Err(Error::not_found("agent", id));
    }
    Ok(())
}

/// `{"name": …}`
#[derive(Debug, Deserialize, Serialize)]
pub struct NameBody {
    /// The agent's name.
    pub name: String,
}

/// `?page=&per_page=`
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// From 0 (default 0).
    #[serde(default)]
    pub page: u64,
    /// 1 to 100 (default 20).
    #[serde(default = "default_per_page")]
    pub per_page: u64,
}

fn default_per_page() -> u64 {
    20
}

// The create and the rename run their statements in the request's transaction itself:
// called as operations (`create_agent(&tx, …)`), each would run in a savepoint of it, two
// round trips more (SAVEPOINT, RELEASE) for nothing here, since an error response rolls
// the whole request back (docs/web-benchmark.md).
async fn create(
    tx: RequestTx,
    Json(body): Json<NameBody>,
) -> Result<(StatusCode, Json<agent::Model>), Error> {
    let tx = tx.get().await?;
    Ok((
        StatusCode::CREATED,
        Json(insert_agent(tx, &body.name).await?),
    ))
}

async fn create_batch(
    tx: RequestTx,
    Json(names): Json<Vec<String>>,
) -> Result<(StatusCode, Json<Vec<agent::Model>>), Error> {
    Ok((StatusCode::CREATED, Json(create_agents(&tx, &names).await?)))
}

// Reads take the pool, not the request's transaction: with DATABASE_REPLICA_URL set,
// read-only operations run on the replica.
async fn show(State(db): State<Db>, Path(id): Path<i32>) -> Result<Json<agent::Model>, Error> {
    Ok(Json(get_agent(&db, id).await?))
}

async fn list(
    State(db): State<Db>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<agent::Model>>, Error> {
    Ok(Json(list_agents(&db, q.page, q.per_page).await?))
}

async fn rename(
    tx: RequestTx,
    Path(id): Path<i32>,
    Json(body): Json<NameBody>,
) -> Result<Json<agent::Model>, Error> {
    Ok(Json(update_name(tx.get().await?, id, body.name).await?))
}

async fn delete(tx: RequestTx, Path(id): Path<i32>) -> Result<StatusCode, Error> {
    delete_agent(&tx, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The routes, before the transaction layer and the state are applied (tests add theirs).
pub fn routes() -> Router<Db> {
    Router::new()
        .route("/agents", post(create).get(list))
        .route("/agents/batch", post(create_batch))
        .route("/agents/{id}", get(show).patch(rename).delete(delete))
}

/// The service: `routes()` with request transactions on `db`.
pub fn app(db: Db) -> Router {
    with_transactions(routes(), db)
}

/// The service `src/main.rs` serves: `routes()` under the layers of [`with_transactions`],
/// without the router around them, whose boxed route is copied (allocated) on every
/// request (docs/web-benchmark.md).
pub fn service(db: Db) -> Layered {
    layered(routes(), db)
}

/// `routes` under the layers of [`with_transactions`].
pub type Layered = ProblemService<TxService<IdempotencyService<Router>, Db>>;

/// `routes` with request transactions on `db` and `db` as their state, every error
/// answered as a problem response (axum's extractor rejections included). A create or a
/// rename sent with an `Idempotency-Key` runs once; its retries get the first response.
///
/// The layers wrap the router once, as one service: `Router::layer` would wrap each route
/// in a boxed service per layer, each cloned (allocated anew) on every request, ten
/// allocations per request here (docs/web-benchmark.md). Outermost first:
/// `ProblemLayer`, `TxLayer`, `Idempotency` (inside `TxLayer`, which it needs).
pub fn with_transactions(routes: Router<Db>, db: Db) -> Router {
    Router::new().fallback_service(layered(routes, db))
}

fn layered(routes: Router<Db>, db: Db) -> Layered {
    use tower_layer::Layer;
    let app = routes.with_state(db.clone());
    let app = Idempotency::new(db.primary().clone()).layer(app);
    let app = TxLayer::new(db).layer(app);
    ProblemLayer.layer(app)
}
