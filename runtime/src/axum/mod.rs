//! Web services with axum (feature `axum`): classified errors as RFC 9457 problem
//! responses, and request-scoped transactions, the Rust form of FastAPI's
//! `Depends(get_db)`.
//!
//! ```no_run
//! use axum::{Router, extract::Path, routing::patch};
//! use safe_db::axum::{RequestTx, TxLayer};
//! use safe_db::{Error, Tx, safe_db_operation};
//! use sea_orm::{ConnectionTrait, Statement};
//!
//! #[safe_db_operation]
//! async fn rename(tx: &Tx, id: i32, name: String) -> Result<(), Error> {
//!     // `name` comes from the request: bound as a value, never formatted into the SQL.
//!     let sql = "UPDATE agents SET name = $1 WHERE id = $2";
//!     let values = [name.into(), id.into()];
//!     let update = Statement::from_sql_and_values(tx.get_database_backend(), sql, values);
//!     if tx.execute_raw(update).await?.rows_affected() == 0 {
//!         return Err(Error::not_found("agent", id));
//!     }
//!     Ok(())
//! }
//!
//! // The request's transaction begins on first use and commits after the handler when
//! // the response is 2xx or 3xx; `rename` runs in a savepoint inside it.
//! async fn handler(tx: RequestTx, Path((id, name)): Path<(i32, String)>) -> Result<(), Error> {
//!     rename(&tx, id, name).await
//! }
//!
//! # async fn app(db: sea_orm::DatabaseConnection) {
//! let app: Router = Router::new()
//!     .route("/agents/{id}/name/{name}", patch(handler))
//!     .layer(TxLayer::new(db));
//! # }
//! ```

// The layout follows axum-sqlx-tx: the problem responses, the request's slot and the
// extractor that leases it, and the layer that ends the transaction.
mod future;
mod idempotency;
mod layer;
mod problem;
mod slot;

pub use future::TxFuture;
pub use idempotency::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, Idempotency, IdempotencyService};
pub use layer::{TxLayer, TxService};
pub use problem::{ProblemLayer, ProblemService};
pub use slot::RequestTx;
