//! The transaction an operation's body works with, on a connection it owns, and the
//! protocol that begins and ends it, one room per step: `begin.rs` (BEGIN with its
//! settings, SAVEPOINT, a transaction of its own for `requires_new`), `gate.rs` (each
//! statement admitted, checked and noted), `end.rs` (why a body's `Ok` must not commit,
//! COMMIT, ROLLBACK), `release.rs` (a savepoint's RELEASE, deferred to the tree's next
//! step, or made moot by a later one), `owed.rs` (the answer of a statement the body
//! stopped waiting for, read before the next step), over `link.rs` (the owned connection and what is
//! known of its state), `tree.rs` (what nested levels share) and `guard.rs` (the steps
//! that must not be cut off). What to do with an attempt (deadline, retry, panic, observation) is
//! `operation/`'s business, not this folder's.
//!
//! States of a tree of nested transactions (the outermost one and its savepoints):
//! - *open*: statements run; a failed one is noted (a conflict for the retry; on
//!   MySQL/MariaDB, whether the server ended the transaction).
//! - *broken* (`Tree::broken`): a step of the protocol was cut off or failed in a way
//!   that leaves the server's state unknown, or the server ended the transaction itself.
//!   No statement is sent any more and nothing commits: the outermost level rolls back,
//!   or its connection is closed.
//! - *ended*: committed or rolled back; callbacks of the outermost commit are handed to
//!   the operation, which runs them.
//!
//! The guards, step by step (what happens when the step is cut off: its future dropped,
//! or its time up):
//!
//! | step | guard | cut off |
//! |---|---|---|
//! | outermost BEGIN | the link: not yet open, an answer owed | the connection is rolled back off the caller's path, or closed |
//! | SAVEPOINT, RELEASE, ROLLBACK TO | [`guard::Critical`] | the tree is broken: nothing more runs in it, the outermost level rolls back |
//! | a statement | the link: an answer owed | read before the next step, its failure noted (`owed.rs`); the outermost rollback goes off the caller's path |
//! | a nested level dropped unended | `Tx`'s `Drop` | its `ROLLBACK TO` is sent before the tree's next statement |
//! | a savepoint's deferred RELEASE | the link: owed, then unconfirmed while on the wire | cut off before its answer: a rollback past it may follow; any other step, and the outermost COMMIT, break the tree |
//! | outermost COMMIT | the link: an answer owed | the connection is closed; an unanswered COMMIT is `CommitUnknown` |
//! | outermost ROLLBACK | the link | the connection is closed if it fails or does not answer in time |

mod begin;
mod bound;
mod end;
mod gate;
mod guard;
#[cfg(feature = "testing")]
mod hooks;
mod link;
mod owed;
mod release;
mod seaorm;
mod settle;
#[cfg(feature = "postgres")]
mod statements;
mod tree;
mod verdict;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sea_orm::{DbBackend, DbErr};
use tokio::time::Instant;

pub use bound::{DEFAULT_STEP_TIMEOUT, set_step_timeout};
#[cfg(feature = "testing")]
pub(crate) use hooks::{Injection, Injector};
pub(crate) use link::Link;
use tree::Tree;

/// How long a ROLLBACK may take before the connection is given up (and, for a
/// savepoint, the enclosing transaction is broken).
const ROLLBACK_GRACE: Duration = Duration::from_secs(5);

/// The transaction of a `#[safe_db_operation]` (or of [`transaction`](crate::transaction)).
///
/// It implements SeaORM's [`ConnectionTrait`](sea_orm::ConnectionTrait), so every query
/// and mutation accepts it (`Entity::find().one(tx)`, `active.insert(tx)`, raw
/// statements), and [`TransactionTrait`](sea_orm::TransactionTrait). There is no `commit`
/// or `rollback`: the operation that owns the transaction ends it, from the body's result.
/// Passing `tx` to another operation runs that one in a `SAVEPOINT` inside this
/// transaction.
///
/// A `Tx` is only ever lent to the body (`&Tx`), so it cannot outlive its operation.
///
/// A statement that would end the transaction is refused before it is sent, with an error
/// naming it: a hand-written `COMMIT`, `ROLLBACK` or `BEGIN` on every database, and on
/// MySQL/MariaDB the statements it commits implicitly (DDL other than on temporary tables,
/// `LOCK TABLES`, `SET autocommit`, …). After MySQL/MariaDB has rolled the transaction back
/// itself (a deadlock), every later statement fails with that error, unsent.
pub struct Tx {
    backend: DbBackend,
    depth: u32,
    /// This transaction's place in its tree: callbacks registered here carry this id.
    id: u32,
    parent: Option<u32>,
    /// Set when a statement at this level failed; on PostgreSQL that aborts the
    /// transaction, so a later `COMMIT` would silently roll back.
    statement_failed: AtomicBool,
    /// Set when that statement was one the body had stopped waiting for (`owed.rs`).
    abandoned_failed: AtomicBool,
    tree: Arc<Tree>,
    /// Taken by each operation nested in this transaction for its whole life: sqlx keeps
    /// savepoints as a stack, so siblings (`join!(a(tx), b(tx))`) must take turns. Made
    /// when the first one begins: a level without nested operations allocates none.
    children: std::sync::OnceLock<Arc<tokio::sync::Mutex<()>>>,
    /// This transaction's turn among its siblings, if it is nested.
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// When the operation (or the innermost enclosing one with a timeout) must end. On
    /// MariaDB each statement is told to stop there.
    deadline: Option<Instant>,
    /// The enclosing level's deadline, given back to the server's statement bound when
    /// this savepoint ends, if this one set its own.
    restore_bound: Option<Option<Instant>>,
    /// Writes are refused at this level (begun `read_only`, or in a `read_only` savepoint).
    read_only: bool,
    /// MySQL/MariaDB cannot make a savepoint read-only: safe-db refuses its writes itself.
    refuse_writes: bool,
    /// This savepoint made PostgreSQL's transaction read-only (`SET LOCAL
    /// transaction_read_only`). A `RELEASE` would leave the caller read-only, so it ends
    /// with `ROLLBACK TO` instead, which undoes that and nothing else: it wrote nothing.
    read_only_savepoint: bool,
    /// Set (with the operation's name in the tree) when an operation that joined this
    /// transaction without a savepoint (`savepoint = false`) failed: its work cannot be undone alone,
    /// so no statement runs at this level any more and it cannot commit.
    doomed: AtomicBool,
    /// Committed or rolled back: a `Tx` dropped before that was cut off (see its `Drop`).
    ended: bool,
}

/// What is left until `deadline`, if there is one.
fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()))
}

/// An `on_commit` callback, boxed, with its failure as a message.
pub(crate) type Callback = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The error of every statement and commit in a tree broken by a step cut off.
fn cut_off() -> DbErr {
    crate::cause::raise(crate::Cause::TreeBroken)
}

/// The error of a `requires_new` operation called inside a transaction begun by hand.
pub(crate) fn pool_unknown() -> DbErr {
    crate::cause::raise(crate::Cause::PoolUnknown)
}

/// The error of every statement and commit at a level that a `savepoint = false`
/// operation failed in.
fn doomed_error(operation: &'static str) -> DbErr {
    crate::cause::raise(crate::Cause::Doomed { operation })
}

/// A savepoint's `RELEASE` or `ROLLBACK TO` failed with `err`: the enclosing
/// transaction's state is unknown (the server may have rolled it back, or the savepoint
/// be gone), so the tree is broken, unless the error is only that of a statement the
/// savepoint's operation abandoned at its deadline and the server then stopped (MariaDB
/// 1969, MySQL 3024, PostgreSQL 57014), which sqlx reads first.
fn savepoint_end_failed(tree: &Tree, err: &DbErr) {
    let stopped_statement = matches!(crate::error::mysql_number(err), Some(1969 | 3024))
        || crate::error::sqlstate(err).as_deref() == Some("57014");
    if !stopped_statement {
        tree.break_with(err.clone());
    }
}

/// What an `on_commit` callback may return: nothing, or a `Result` whose error is
/// reported (it cannot undo the commit).
pub trait CallbackOutput: Send + 'static {
    /// The error message to report, if the callback failed.
    fn into_result(self) -> Result<(), String>;
}

impl CallbackOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display + Send + 'static> CallbackOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| crate::error::redact(&e.to_string()))
    }
}

/// A callback that only panics (`async { panic!() }`): under edition 2024 such a block's
/// output is `!`, not `()`.
impl CallbackOutput for <fn() -> ! as crate::__private::Returns>::Output {
    fn into_result(self) -> Result<(), String> {
        self
    }
}

/// What the body sees.
impl Tx {
    /// How deep this transaction is nested: 0 for the outermost, 1 for a savepoint in it, …
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Runs `callback` once the outermost transaction has really committed, after the
    /// COMMIT and outside the transaction (it may start new operations).
    ///
    /// Callbacks run in registration order, awaited before the operation returns. One
    /// registered in a savepoint that rolls back is dropped with it; none run when the
    /// operation rolls back, fails to commit, panics, times out or is cancelled, and an
    /// attempt that is retried drops its own. A callback that fails (`Err`) or panics is
    /// reported through `tracing` at error level with the operation's name; the commit
    /// stands, the caller still gets `Ok`, and the callbacks after it still run. Once the
    /// COMMIT has succeeded every callback runs exactly once, even if the caller drops the
    /// operation meanwhile (the rest go on in a task of their own). The operation's
    /// `timeout` does not cover them.
    ///
    /// ```
    /// use safe_db::{safe_db_operation, Tx};
    /// use sea_orm::{ConnectionTrait, DbErr, Statement};
    ///
    /// #[safe_db_operation]
    /// async fn register(tx: &Tx, name: &str) -> Result<(), DbErr> {
    ///     // The name is bound as a value, never formatted into the SQL.
    ///     let sql = "INSERT INTO agents (name) VALUES ($1)";
    ///     let insert = Statement::from_sql_and_values(tx.get_database_backend(), sql, [name.into()]);
    ///     tx.execute_raw(insert).await?;
    ///     let welcome = format!("welcome, {name}");
    ///     tx.on_commit(async move { println!("{welcome}") }); // only if the row is committed
    ///     Ok(())
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), DbErr> {
    /// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
    /// # db.execute_unprepared("CREATE TABLE agents (name TEXT)").await?;
    /// register(&db, "ada").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn on_commit<F>(&self, callback: F)
    where
        F: Future + Send + 'static,
        F::Output: CallbackOutput,
    {
        let boxed: Callback = Box::pin(async move { callback.await.into_result() });
        self.tree.callbacks().push((self.id, boxed));
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &self.backend)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}
