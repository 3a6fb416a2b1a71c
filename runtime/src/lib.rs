//! Database transactions that are safe by construction, for [SeaORM] 2.
//!
//! Annotate an `async fn` whose first parameter is the transaction, `tx: &Tx`, with
//! [`#[safe_db_operation]`](macro@safe_db_operation). Callers pass a connection (a new
//! transaction begins and ends in the call) or their own `tx` (the operation runs in a
//! `SAVEPOINT` inside it). The body's `Ok` commits; its `Err`, a panic, a timeout or the
//! caller dropping the future rolls back. Misuse is a compile error on your own tokens.
//!
//! ```
//! use safe_db::{safe_db_operation, Tx};
//! use sea_orm::{ConnectionTrait, DbErr, Statement};
//!
//! #[safe_db_operation]
//! async fn add_note(tx: &Tx, text: &str) -> Result<u64, DbErr> {
//!     // Values are bound, never formatted into the SQL.
//!     let sql = "INSERT INTO notes (text) VALUES ($1)";
//!     let insert = Statement::from_sql_and_values(tx.get_database_backend(), sql, [text.into()]);
//!     Ok(tx.execute_raw(insert).await?.rows_affected())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), DbErr> {
//! let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! # db.execute_unprepared("CREATE TABLE notes (text TEXT)").await?;
//! assert_eq!(add_note(&db, "it's here'); DROP TABLE notes; --").await?, 1);
//! # Ok(())
//! # }
//! ```
//!
//! Where an attribute does not fit, the closure form runs the same code path:
//! [`transaction`] and [`Options::run`].
//!
//! # Features
//!
//! - `sqlite` (default): SQLite through sqlx, embedded.
//! - `postgres`: PostgreSQL through sqlx.
//! - `mysql`: MySQL and MariaDB through sqlx.
//! - `rustls`: TLS for PostgreSQL and MySQL connections.
//! - `metrics`: counters, gauges and histograms through the `metrics` facade.
//! - `stream`: `Entity::find().stream(tx)` (SeaORM's `StreamTrait` for [`Tx`]).
//! - `outbox`: [`outbox`], a transactional outbox: messages recorded in the body's
//!   transaction, delivered at least once by a relay, after a crash too.
//! - `axum`: request-scoped transactions and problem+json error responses ([`axum`]).
//! - `testing`: [`testing`], for your tests: a transaction per test that is always rolled
//!   back, captured after-commit callbacks, injected failures, per-test PostgreSQL
//!   databases from a template. Enable it in `[dev-dependencies]` only.
//!
//! With `default-features = false`, enable the databases you use: sqlx enables none.
//!
//! # Architecture
//!
//! One protocol, one policy. The protocol is [`Tx`]'s: it begins a transaction (the
//! outermost one, shielded from cancellation, or a savepoint in a caller's), tells why a
//! body's `Ok` cannot be committed, commits (handing back the after-commit callbacks) and
//! rolls back. A step that must not be cut off (a savepoint's `SAVEPOINT`, `RELEASE`,
//! `ROLLBACK TO`) *breaks* the transaction's tree if it is: nothing more runs in it and
//! its outermost level rolls back. The policy is the operation's: the deadline, retries,
//! panic capture, running callbacks, spans and counters. The attribute, the closure form
//! and the axum layer all drive that one operation.
//!
//! Glossary: an *operation* is one call of an annotated function (or closure), across its
//! *attempts*; its *transaction* is a `Tx`, *outermost* or *nested* (a savepoint); the
//! transactions nested in one outermost transaction form its *tree*; *callbacks* are what
//! [`Tx::on_commit`] registers.
//!
//! [SeaORM]: https://www.sea-ql.org/SeaORM/

#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as safe_db;

/// The README's example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

// A `Tx` owns an sqlx connection: with no database, there is nothing to own.
#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
compile_error!("safe-db needs at least one of its features `sqlite`, `postgres`, `mysql`");

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
mod begin;
mod cause;
mod config;
mod db;
mod db_url;
mod dialect;
#[cfg(test)]
mod doc_sql;
mod error;
mod failover;
mod observe;
mod operation;
mod options;
#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub mod outbox;
mod pool;
mod quarantine;
mod replica;
mod sql;
#[cfg(feature = "stream")]
mod stream;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod tx;

use sea_orm::DbErr;

pub use begin::{Begin, Connection, InTransaction, Managed};
pub use cause::{Cause, Refusal};
pub use config::{ConfigError, DEFAULT_URL, DbConfig};
pub use db::Db;
pub use error::{Error, ErrorKind};
pub use observe::{DEFAULT_SLOW_THRESHOLD, PoolStats, Stats, set_slow_threshold};
pub use options::{Isolation, Options};
pub use pool::guard_pool_release;
#[cfg(feature = "stream")]
#[cfg_attr(docsrs, doc(cfg(feature = "stream")))]
pub use stream::TxStream;
pub use tx::{CallbackOutput, DEFAULT_STEP_TIMEOUT, Tx, set_step_timeout};

/// Runs an `async fn` in a transaction that commits on `Ok` and rolls back otherwise.
///
/// The first parameter (after `self`, if any) is the transaction, declared `tx: &Tx`
/// (or `&sea_orm::DatabaseTransaction`). The rewritten function takes in its place
/// anything that implements [`Begin`]: `&DatabaseConnection` starts a new transaction,
/// an enclosing `&Tx` runs this one as a `SAVEPOINT` in it. The return type is a
/// `Result<T, E>` with `E: From<sea_orm::DbErr>`.
///
/// | the body…                     | the transaction…                          | the caller gets         |
/// |-------------------------------|-------------------------------------------|-------------------------|
/// | returns `Ok(v)`               | commits (`RELEASE SAVEPOINT` when nested) | `Ok(v)`, or the COMMIT's error |
/// | returns `Err(e)`              | rolls back                                | `Err(e)`, unchanged     |
/// | panics                        | rolls back, connection back to the pool   | the panic, resumed      |
/// | overruns `timeout`            | rolls back                                | `Err(E::from(timeout))` |
/// | is dropped by the caller      | rolls back, connection back to the pool   | —                       |
///
/// # Options
///
/// - `isolation = "read_uncommitted" | "read_committed" | "repeatable_read" | "serializable"`
/// - `read_only`
/// - `timeout = "250ms" | "2s" | "1m"`: bounds the whole operation, retries included.
/// - `retries = N`: re-runs the whole operation, up to `N` more times, after a
///   serialization failure, deadlock or SQLite busy error, with capped exponential
///   back-off and jitter. Every argument must be `Clone`: each attempt gets its own copy.
///   Only the outermost operation retries: a nested one shares its caller's transaction,
///   so its conflict fails the caller, which retries as a whole.
///
/// ```
/// use safe_db::{safe_db_operation, Tx};
/// use sea_orm::{ConnectionTrait, DbErr, Statement};
///
/// #[safe_db_operation(isolation = "serializable", timeout = "2s", retries = 5)]
/// async fn bump(tx: &Tx, by: i64) -> Result<(), DbErr> {
///     let sql = "UPDATE counter SET n = n + $1";
///     tx.execute_raw(Statement::from_sql_and_values(tx.get_database_backend(), sql, [by.into()]))
///         .await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), DbErr> {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0)").await?;
/// bump(&db, 2).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Propagation
///
/// - `requires_new`: always a transaction of its own, on a second connection from the same
///   pool, committed before the operation returns whatever its caller does afterwards (an
///   audit row that must survive the caller's rollback). Its `on_commit` callbacks run after
///   its own commit.
/// - `mandatory`: only inside a caller's transaction; calling it with a connection is a
///   compile error on that argument.
/// - `durable`: only outermost, so that its `Ok` means committed; calling it with a `tx` is
///   a compile error on that argument.
/// - `savepoint = false`: called with a `tx`, joins that transaction without a savepoint
///   (two round trips fewer). If it then fails (`Err`, panic, or its future dropped), the
///   transaction it joined runs no more statements and cannot commit, even if the caller
///   handles the error.
///
/// Contradictory options (`mandatory` with `durable`, `requires_new`, `isolation` or
/// `retries`; `savepoint = false` with `isolation`, `retries`, `read_only`, `timeout`,
/// `requires_new` or `durable`; `durable` with `requires_new`) are compile errors on the
/// attribute, saying why.
///
/// ```
/// use safe_db::{safe_db_operation, Error, Tx};
/// use sea_orm::{ConnectionTrait, Statement};
///
/// #[safe_db_operation(mandatory, savepoint = false)]
/// async fn add_line(tx: &Tx, n: i32) -> Result<(), Error> {
///     let sql = "INSERT INTO lines (n) VALUES ($1)";
///     tx.execute_raw(Statement::from_sql_and_values(tx.get_database_backend(), sql, [n.into()]))
///         .await?;
///     if n < 0 {
///         return Err(Error::validation("negative"));
///     }
///     Ok(())
/// }
///
/// #[safe_db_operation]
/// async fn order(tx: &Tx, lines: &[i32]) -> Result<(), Error> {
///     for &n in lines {
///         // A failure is swallowed here, but the order still cannot commit.
///         let _ = add_line(tx, n).await;
///     }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE lines (n INTEGER)").await?;
/// order(&db, &[1, 2]).await?;
/// assert!(order(&db, &[3, -1]).await.is_err()); // nothing of it committed
/// # let n = db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), "SELECT COUNT(*) FROM lines")).await?.unwrap().try_get_by_index::<i64>(0)?;
/// # assert_eq!(n, 2);
/// # Ok(())
/// # }
/// ```
///
/// ```compile_fail,E0277
/// # use safe_db::{safe_db_operation, Error, Tx};
/// #[safe_db_operation(mandatory)]
/// async fn add_line(tx: &Tx, n: i32) -> Result<(), Error> { Ok(()) }
///
/// async fn caller(db: &sea_orm::DatabaseConnection) {
///     add_line(db, 1).await; // error: `DatabaseConnection` is not a transaction, and this operation runs only inside one
/// }
/// ```
///
/// # Nesting
///
/// Passing `tx` to another operation runs it in a savepoint: its failure rolls back only
/// its own work, and the caller may handle the error and still commit.
///
/// ```
/// use safe_db::{safe_db_operation, Error, Tx};
/// use sea_orm::{ConnectionTrait, DbErr, Statement};
///
/// #[safe_db_operation]
/// async fn insert(tx: &Tx, id: i32) -> Result<(), Error> {
///     let sql = "INSERT INTO t (id) VALUES ($1)";
///     tx.execute_raw(Statement::from_sql_and_values(tx.get_database_backend(), sql, [id.into()]))
///         .await?;
///     Ok(())
/// }
///
/// #[safe_db_operation]
/// async fn insert_both(tx: &Tx) -> Result<(), Error> {
///     insert(tx, 1).await?;
///     // id 1 again: a unique violation, rolled back to the savepoint and ignored.
///     let again = insert(tx, 1).await;
///     assert_eq!(again.unwrap_err().kind(), safe_db::ErrorKind::UniqueViolation);
///     insert(tx, 2).await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE t (id INTEGER PRIMARY KEY)").await?;
/// insert_both(&db).await?; // ids 1 and 2 are committed
/// # Ok(())
/// # }
/// ```
///
/// # What it expands to
///
/// The function above is, without the macro, the closure form of the same runtime path:
///
/// ```
/// use safe_db::{Error, Tx};
/// use sea_orm::{ConnectionTrait, Statement};
///
/// async fn insert(db: &impl safe_db::Begin, id: i32) -> Result<(), Error> {
///     safe_db::transaction(db, async |tx: &Tx| {
///         let sql = "INSERT INTO t (id) VALUES ($1)";
///         let insert = Statement::from_sql_and_values(tx.get_database_backend(), sql, [id.into()]);
///         tx.execute_raw(insert).await?;
///         Ok(())
///     })
///     .await
/// }
/// ```
///
/// # Compile-time checks
///
/// Misuse is rejected with an error on the offending tokens: a function that is not
/// `async`, a missing or misplaced transaction parameter, a transaction taken by value or
/// as `&mut`, a parameter typed as a connection or another transaction (`Db`,
/// `RequestTx`, `DatabaseTransaction`, `impl Begin`, …: queries on it would run outside the
/// transaction), a return type that is not a `Result` or whose error cannot hold a
/// `DbErr`, unknown, malformed or repeated options, `retries` with an argument that is
/// not `Clone` or with `&mut self`, and a caller passing something that is not a
/// connection or a `Tx`.
///
/// ```compile_fail
/// # use safe_db::{safe_db_operation, Tx};
/// #[safe_db_operation]
/// fn not_async(tx: &Tx) -> Result<(), sea_orm::DbErr> { Ok(()) }
/// ```
#[doc(inline)]
pub use safe_db_macros::safe_db_operation;

/// A test run once per configured database (feature `testing`): SQLite always,
/// PostgreSQL and MySQL/MariaDB when `SAFE_DB_TEST_POSTGRES_URL` and
/// `SAFE_DB_TEST_MYSQL_URL` are set (a missing one fails the test under `CI=true`, and is
/// skipped with a line on stderr otherwise), each on a tokio runtime of its own.
///
/// The body's one parameter says what it gets:
/// - `test: &TestTx`: a [`TestTx`](testing::TestTx), rolled back after the test, on a
///   database the tests share (SQLite: one in memory per test);
/// - `db: &Db` or `db: &DatabaseConnection`: a database of the test's own, dropped after
///   it (SQLite: a file), for code that commits for real (`requires_new`, several
///   connections, isolation levels).
///
/// Options: `setup = path::to::fn`, an `async fn(&DatabaseConnection) -> Result<(), E>`
/// (`E: Display`) run on the database first: once per process on a shared database,
/// under a lock on the server, so it must be idempotent (`CREATE TABLE IF NOT EXISTS`);
/// on each database of a test's own. `backends(sqlite, postgres, mysql)` runs only on
/// those. A failure names the database it happened on, after the test's transaction was
/// rolled back or its database dropped.
///
/// ```
/// use safe_db::testing::TestTx;
/// use safe_db::{safe_db_operation, Error, Tx};
/// use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
///
/// async fn schema(db: &DatabaseConnection) -> Result<(), DbErr> {
///     db.execute_unprepared("CREATE TABLE IF NOT EXISTS notes (text TEXT)").await?;
///     Ok(())
/// }
///
/// #[safe_db_operation]
/// async fn add_note(tx: &Tx) -> Result<(), Error> {
///     tx.execute_unprepared("INSERT INTO notes (text) VALUES ('hello')").await?;
///     Ok(())
/// }
///
/// #[safe_db::test(setup = schema)]
/// async fn adds_a_note(test: &TestTx) -> Result<(), Error> {
///     add_note(test).await?;
///     let count = test.query_all_raw(sea_orm::Statement::from_string(
///         test.get_database_backend(),
///         "SELECT text FROM notes",
///     ));
///     assert_eq!(count.await?.len(), 1);
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
#[doc(inline)]
pub use safe_db_macros::test;

/// Runs `body` in a transaction on `conn`: the closure form of
/// [`#[safe_db_operation]`](macro@safe_db_operation), for code that cannot take an
/// attribute (as `get_db_session()` / `execute_db_query(query_func)` serve in the Python
/// guide safe-db started from, on session handling with SQLAlchemy and FastAPI).
///
/// ```
/// use safe_db::Tx;
/// use sea_orm::{ConnectionTrait, DbErr};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), DbErr> {
/// let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// let n = safe_db::transaction(&db, async |tx: &Tx| {
///     tx.execute_unprepared("CREATE TABLE t (id INTEGER)").await?;
///     Ok::<_, DbErr>(tx.execute_unprepared("INSERT INTO t VALUES (1)").await?.rows_affected())
/// })
/// .await?;
/// assert_eq!(n, 1);
/// # Ok(())
/// # }
/// ```
pub async fn transaction<C, F, T, E>(conn: &C, body: F) -> Result<T, E>
where
    C: Begin + ?Sized,
    F: AsyncFnMut(&Tx) -> Result<T, E>,
    E: From<DbErr>,
{
    Options::new().run(conn, body).await
}

impl Options {
    /// Runs `body` in a transaction with these options: the closure form's builder.
    ///
    /// ```
    /// use std::time::Duration;
    /// use safe_db::{Isolation, Options, Tx};
    /// use sea_orm::{ConnectionTrait, DbErr};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), DbErr> {
    /// let db = sea_orm::Database::connect("sqlite::memory:").await?;
    /// Options::new()
    ///     .isolation(Isolation::Serializable)
    ///     .timeout(Duration::from_secs(1))
    ///     .retries(3)
    ///     .run(&db, async |tx: &Tx| tx.execute_unprepared("SELECT 1").await.map(drop))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run<C, F, T, E>(self, conn: &C, body: F) -> Result<T, E>
    where
        C: Begin + ?Sized,
        F: AsyncFnMut(&Tx) -> Result<T, E>,
        E: From<DbErr>,
    {
        self.run_as("transaction", conn, body).await
    }

    /// [`Options::run`] under a name of its own: the `operation` of its span and metrics,
    /// and what [`Faults`](crate::testing::Faults) targets (feature `testing`).
    pub async fn run_as<C, F, T, E>(self, name: &'static str, conn: &C, mut body: F) -> Result<T, E>
    where
        C: Begin + ?Sized,
        F: AsyncFnMut(&Tx) -> Result<T, E>,
        E: From<DbErr>,
    {
        let name = crate::operation::OpName::plain(name);
        crate::__operation!(retrying: conn, self, name, E::from, |tx| body(tx).await)
    }
}

/// Not public API: what `#[safe_db_operation]` expands to refers to these paths only.
#[doc(hidden)]
pub mod __private;
