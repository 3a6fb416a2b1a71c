//! A transactional outbox (feature `outbox`): work owed after a commit that survives the
//! process.
//!
//! [`Tx::on_commit`] runs its callbacks in the process that committed; if that process
//! dies between the `COMMIT` and the callback, the e-mail is never sent and nothing records
//! that it was owed. Here the body [`record`]s a [`Message`] in the table
//! `safe_db_outbox`, in its own transaction: it commits with the operation, rolls back with
//! it (or with its savepoint), and no other connection sees it before the `COMMIT`. A
//! [`Relay`], in this process or another, then hands each committed message to a handler
//! of yours, at least once, with retries, back-off and a dead-letter state; several relays
//! may run at once and never hold the same message at the same time.
//!
//! ```
//! use safe_db::outbox::{self, Delivery, Message, Relay};
//! use safe_db::{safe_db_operation, Tx};
//! use sea_orm::{ConnectionTrait, DbErr, Statement};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced {
//!     order: i64,
//! }
//!
//! #[safe_db_operation]
//! async fn place_order(tx: &Tx, order: i64) -> Result<(), DbErr> {
//!     let sql = "INSERT INTO orders (id) VALUES ($1)";
//!     let insert = Statement::from_sql_and_values(tx.get_database_backend(), sql, [order.into()]);
//!     tx.execute_raw(insert).await?;
//!     // In the same transaction: committed with the order, or not at all.
//!     let message = Message::new("order.placed", &OrderPlaced { order }).key(format!("order-{order}"));
//!     outbox::record(tx, message).await?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), DbErr> {
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! # db.execute_unprepared("CREATE TABLE orders (id INTEGER PRIMARY KEY)").await?;
//! outbox::migrate(&db).await?; // once, at start-up (or run `outbox::ddl` in your migrations)
//! place_order(&db, 42).await?;
//!
//! let relay = Relay::new(db.clone(), |delivery: Delivery| async move {
//!     let placed: OrderPlaced = delivery.payload()?;
//!     // `delivery.id` is unique and never reused: keep it to make the effect exactly once.
//!     println!("message {} on {}: order {}", delivery.id, delivery.topic, placed.order);
//!     Ok::<_, serde_json::Error>(())
//! });
//! let report = relay.run_once().await?;
//! assert_eq!(report.delivered, 1);
//! assert_eq!(outbox::oldest_pending_age(&db).await?, None); // nothing left to deliver
//! # Ok(())
//! # }
//! ```
//!
//! What it promises and what it cannot (at-least-once delivery, order per key only, the
//! lease) is in `docs/outbox.md`.

mod relay;

use std::fmt;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use serde::Serialize;

use crate::Tx;
use crate::dialect::outbox as sql;

pub use relay::{Delivery, Handler, Relay, RunReport};

/// The outbox table's name.
pub const TABLE: &str = sql::TABLE;

/// The `state` column's values: a message is pending until it is delivered, or dead when
/// the relay gave it up after its last attempt.
pub mod state {
    /// Waiting for delivery (possibly leased to a relay right now).
    pub const PENDING: i32 = super::sql::PENDING;
    /// Delivered: a handler returned `Ok`.
    pub const DELIVERED: i32 = super::sql::DELIVERED;
    /// Given up after the relay's `max_attempts`; its `last_error` says why.
    pub const DEAD: i32 = super::sql::DEAD;
}

/// A message's id in the outbox: assigned at [`record`], unique, never reused, and given to
/// the handler with each delivery (keep the ids you have processed to make an effect
/// exactly once).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub i64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A message to [`record`]: a topic, a JSON payload and an optional key.
///
/// Messages with the same key are delivered in the order of their ids, one at a time: the
/// next waits until the one before it is delivered or dead. Messages without a key have
/// no order between them.
#[derive(Clone, Debug)]
pub struct Message {
    topic: String,
    key: Option<String>,
    /// The payload as JSON, or why it could not be serialized (raised by [`record`]).
    payload: Result<String, String>,
}

impl Message {
    /// A message on `topic` (at most 255 characters) carrying `payload`, serialized to
    /// JSON now. A payload that cannot be serialized (a map with non-string keys, a
    /// failing `Serialize` impl) is reported by [`record`], as
    /// [`Cause::Unserializable`](crate::Cause::Unserializable).
    pub fn new<T: Serialize + ?Sized>(topic: impl Into<String>, payload: &T) -> Message {
        Message {
            topic: topic.into(),
            key: None,
            payload: serde_json::to_string(payload).map_err(|e| e.to_string()),
        }
    }

    /// Orders this message after every earlier message with the same `key` (at most 255
    /// characters), e.g. the aggregate it is about: `"order-42"`.
    pub fn key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// Records `message` in the outbox, in `tx`'s transaction: committed with it, rolled back
/// with it (a nested operation's message with its savepoint), invisible to other
/// connections until the outermost `COMMIT`. One `INSERT`, no other round trip.
///
/// See the [module documentation](self) for an example.
pub async fn record(tx: &Tx, message: Message) -> Result<MessageId, DbErr> {
    let payload = message.payload.map_err(|detail| {
        crate::cause::raise(crate::Cause::Unserializable {
            topic: message.topic.clone(),
            detail,
        })
    })?;
    let backend = tx.get_database_backend();
    let values = [
        message.topic.into(),
        message.key.into(),
        sea_orm::Value::from(payload),
    ];
    let insert = Statement::from_sql_and_values(backend, sql::insert(backend), values);
    if backend == DbBackend::Postgres {
        let row = tx.query_one_raw(insert).await?;
        let row = row.ok_or_else(|| DbErr::RecordNotInserted)?;
        Ok(MessageId(row.try_get_by_index::<i64>(0)?))
    } else {
        let done = tx.execute_raw(insert).await?;
        Ok(MessageId(done.last_insert_id() as i64))
    }
}

/// The statements that create the outbox table and its indexes on `backend`, for a
/// migration tool of your own; [`migrate`] runs them. Each is idempotent (`IF NOT
/// EXISTS`) and is sent alone.
///
/// ```
/// let [table, pending, by_key] = safe_db::outbox::ddl(sea_orm::DbBackend::Postgres);
/// assert!(table.starts_with("CREATE TABLE IF NOT EXISTS safe_db_outbox"));
/// assert!(pending.contains("(state, id)") && by_key.contains("(msg_key, state, id)"));
/// ```
pub fn ddl(backend: DbBackend) -> [&'static str; 3] {
    sql::ddl(backend)
}

/// Creates the outbox table and its indexes if they do not exist, on PostgreSQL (in the
/// first schema of the search path), MariaDB/MySQL or SQLite. Run it on a connection (on
/// MariaDB/MySQL DDL commits implicitly, so a `Tx` refuses it), once at start-up or
/// from a migration; concurrent first runs may race on PostgreSQL's catalog.
pub async fn migrate(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    for statement in sql::ddl(db.get_database_backend()) {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

/// How long the oldest message not yet delivered (nor dead) has waited, by the database's
/// clock; `None` when every message has been delivered or given up.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sea_orm::DbErr> {
/// let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// safe_db::outbox::migrate(&db).await?;
/// assert_eq!(safe_db::outbox::oldest_pending_age(&db).await?, None);
/// # Ok(())
/// # }
/// ```
pub async fn oldest_pending_age(db: &impl ConnectionTrait) -> Result<Option<Duration>, DbErr> {
    let backend = db.get_database_backend();
    let query = Statement::from_string(backend, sql::oldest_pending(backend));
    let Some(row) = db.query_one_raw(query).await? else {
        return Ok(None);
    };
    let ms: i64 = row.try_get_by_index(0)?;
    Ok(Some(Duration::from_millis(ms.max(0) as u64)))
}
