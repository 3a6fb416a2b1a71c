//! The Python guide's agent registry as an HTTP API: `cargo run -p agents-api`.
//!
//! Serves on 127.0.0.1:3000 (`PORT` to change; `LOG_LEVEL`, info by default) over the
//! embedded SQLite file, or over `DATABASE_URL` (PostgreSQL, MySQL) with the pool settings
//! of `DbConfig::from_env`.
//! The routes and service functions are in `src/lib.rs`.

use safe_db::DbConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `LOG_LEVEL` (error, warn, info, debug, trace; info by default).
    let level = std::env::var("LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt().with_max_level(level).init();
    let config = DbConfig::from_env()?;
    tracing::info!(%config, "connecting");
    let db = config.connect().await?;
    agents_api::migrate(&*db).await?;

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("agents API listening on http://{}", listener.local_addr()?);
    // The layered routes as they are (`agents_api::app` puts a router around them, for
    // tests that add routes of their own).
    let service =
        axum::ServiceExt::<axum::extract::Request>::into_make_service(agents_api::service(db));
    axum::serve(listener, service).await?;
    Ok(())
}
