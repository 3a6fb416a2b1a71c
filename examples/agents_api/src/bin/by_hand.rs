//! The example API written by hand, for `benches/web.sh` (issue 24): the same routes,
//! bodies and SQL as `src/lib.rs`, with axum and SeaORM only for the transactions:
//! `begin`/`commit` per request, no savepoints, no request layer. Errors are answered with
//! `safe_db::Error`'s problem responses so that both APIs answer byte for byte alike.
//!
//! `cargo run --release -p agents-api --features by-hand --bin agents-api-by-hand`: serves
//! on 127.0.0.1:3000 (`PORT`) over `DATABASE_URL`, with `DbConfig::from_env`'s pool.

use agents_api::{NameBody, Page, PageQuery, agent};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use safe_db::{DbConfig, Error};
use sea_orm::{
    ActiveModelTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait, QueryOrder, Set,
    TransactionTrait,
};

fn valid_name(name: &str) -> Result<String, Error> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::validation(
            "an agent's name must have 1 to 100 characters",
        ));
    }
    Ok(name.to_owned())
}

async fn create(
    State(db): State<DatabaseConnection>,
    Json(body): Json<NameBody>,
) -> Result<(StatusCode, Json<agent::Model>), Error> {
    let txn = db.begin().await?;
    let model = agent::ActiveModel {
        name: Set(valid_name(&body.name)?),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    txn.commit().await?;
    Ok((StatusCode::CREATED, Json(model)))
}

async fn show(
    State(db): State<DatabaseConnection>,
    Path(id): Path<i32>,
) -> Result<Json<agent::Model>, Error> {
    let txn = db.begin().await?;
    let found = agent::Entity::find_by_id(id).one(&txn).await?;
    txn.commit().await?;
    Ok(Json(found.ok_or_else(|| Error::not_found("agent", id))?))
}

async fn list(
    State(db): State<DatabaseConnection>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Page<agent::Model>>, Error> {
    if !(1..=100).contains(&q.per_page) {
        return Err(Error::validation("per_page must be from 1 to 100"));
    }
    let txn = db.begin().await?;
    let pages = agent::Entity::find()
        .order_by_asc(agent::Column::Id)
        .paginate(&txn, q.per_page);
    let page = Page {
        total: pages.num_items().await?,
        items: pages.fetch_page(q.page).await?,
        page: q.page,
        per_page: q.per_page,
    };
    txn.commit().await?;
    Ok(Json(page))
}

async fn rename(
    State(db): State<DatabaseConnection>,
    Path(id): Path<i32>,
    Json(body): Json<NameBody>,
) -> Result<Json<agent::Model>, Error> {
    let txn = db.begin().await?;
    let found = agent::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| Error::not_found("agent", id))?;
    let mut active: agent::ActiveModel = found.into();
    active.name = Set(valid_name(&body.name)?);
    let model = active.update(&txn).await?;
    txn.commit().await?;
    Ok(Json(model))
}

async fn delete(
    State(db): State<DatabaseConnection>,
    Path(id): Path<i32>,
) -> Result<StatusCode, Error> {
    let txn = db.begin().await?;
    let deleted = agent::Entity::delete_by_id(id).exec(&txn).await?;
    if deleted.rows_affected == 0 {
        return Err(Error::not_found("agent", id));
    }
    txn.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `LOG_LEVEL` (error, warn, info, debug, trace; info by default).
    let level = std::env::var("LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt().with_max_level(level).init();
    let config = DbConfig::from_env()?;
    tracing::info!(%config, "connecting (by hand)");
    // The pool `DbConfig::connect` makes, with the same options.
    let db = Database::connect(config.connect_options()).await?;
    agents_api::migrate(&db).await?;

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let app = Router::new()
        .route("/agents", post(create).get(list))
        .route("/agents/{id}", get(show).patch(rename).delete(delete))
        .with_state(db);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(
        "agents API (by hand) listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
