//! The transaction an operation's body works with, and the whole protocol that begins
//! and ends it: [`Tx::begin`] / [`Tx::begin_nested`], [`Tx::why_not_commit`],
//! [`Tx::commit`] (which hands back the callbacks to run) and [`Tx::rollback`]. Each
//! step that must not be cut off is guarded by [`Critical`]. What to do with an attempt
//! (deadline, retry, panic, observation) is `operation.rs`'s business, not this file's.
//!
//! States of a tree of nested transactions (the outermost one and its savepoints):
//! - *open*: statements run; a failed one is noted (a conflict for the retry; on
//!   MySQL/MariaDB, whether the server ended the transaction).
//! - *broken* (`Tree::broken`): a step of the protocol was cut off or failed in a way
//!   that leaves the server's state unknown, or the server ended the transaction itself.
//!   No statement is sent any more and nothing commits: the outermost level rolls back.
//! - *ended*: committed or rolled back; callbacks of the outermost commit are handed to
//!   the operation, which runs them.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    ExecResult, IsolationLevel, QueryResult, RuntimeErr, SqliteTransactionMode, Statement,
    TransactionError, TransactionOptions, TransactionTrait,
};

use tokio::time::Instant;

use crate::{Begin, Db, ErrorKind, Options};

/// How long a ROLLBACK may take before the connection is given up (and, for a
/// savepoint, the enclosing transaction is broken).
const ROLLBACK_GRACE: Duration = Duration::from_secs(5);

/// The transaction of a `#[safe_db_operation]` (or of [`transaction`](crate::transaction)).
///
/// It implements SeaORM's [`ConnectionTrait`], so every query and mutation accepts it
/// (`Entity::find().one(tx)`, `active.insert(tx)`, raw statements), and
/// [`TransactionTrait`]. There is no `commit` or `rollback`: the operation that owns the
/// transaction ends it, from the body's result. Passing `tx` to another operation runs
/// that one in a `SAVEPOINT` inside this transaction.
///
/// A `Tx` is only ever lent to the body (`&Tx`), so it cannot outlive its operation.
///
/// A statement that would end the transaction is refused before it is sent, with an error
/// naming it: a hand-written `COMMIT`, `ROLLBACK` or `BEGIN` on every database, and on
/// MySQL/MariaDB the statements it commits implicitly (DDL other than on temporary tables,
/// `LOCK TABLES`, `SET autocommit`, …). After MySQL/MariaDB has rolled the transaction back
/// itself (a deadlock), every later statement fails with that error, unsent.
pub struct Tx {
    txn: DatabaseTransaction,
    depth: u32,
    /// This transaction's place in its tree: callbacks registered here carry this id.
    id: u32,
    parent: Option<u32>,
    /// Set when a statement at this level failed; on PostgreSQL that aborts the
    /// transaction, so a later `COMMIT` would silently roll back.
    statement_failed: AtomicBool,
    tree: Arc<Tree>,
    /// Taken by each operation nested in this transaction for its whole life: sqlx keeps
    /// savepoints as a stack, so siblings (`join!(a(tx), b(tx))`) must take turns.
    children: Arc<tokio::sync::Mutex<()>>,
    /// This transaction's turn among its siblings, if it is nested.
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// When the operation (or the innermost enclosing one with a timeout) must end. On
    /// MariaDB each statement is told to stop there.
    deadline: Option<Instant>,
    /// The enclosing transaction's deadline, to give back to PostgreSQL's
    /// `statement_timeout` before this savepoint is released, if this one set its own.
    restore_timeout: Option<Option<Instant>>,
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
}

/// `SET LOCAL statement_timeout` for what is left until `deadline`; with none, the
/// session's own setting.
fn statement_timeout(deadline: Option<Instant>) -> String {
    match deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().clamp(1, i32::MAX as u128);
            format!("SET LOCAL statement_timeout = {ms}")
        }
        None => "SET LOCAL statement_timeout TO DEFAULT".to_owned(),
    }
}

/// An `on_commit` callback, boxed, with its failure as a message.
pub(crate) type Callback = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a tree of nested transactions shares, and what outlives each of them.
struct Tree {
    /// Set when any statement in the tree lost a conflict (serialization failure,
    /// deadlock, busy), so the outermost operation retries even when the body swallowed
    /// or converted that error.
    conflict: AtomicBool,
    /// The first statement error that was a conflict, returned when a body swallowed it.
    first_conflict: std::sync::OnceLock<DbErr>,
    next_id: AtomicU32,
    /// After-commit callbacks, each tagged with the transaction that holds it now: a
    /// released savepoint hands its callbacks to its parent, so only those that reach the
    /// outermost transaction run, and a savepoint rolled back or dropped takes its own along.
    callbacks: Mutex<Vec<(u32, Callback)>>,
    /// False when the outermost transaction was begun by hand, outside safe-db: its
    /// COMMIT cannot be seen, so no callback may run.
    commit_visible: bool,
    /// The handle the outermost transaction was begun on, where a `requires_new`
    /// operation in the tree takes its own connection; none when it was begun by hand.
    home: Option<Db>,
    /// Set, with the error every later statement and the commit get, when the transaction
    /// can no longer be trusted: a savepoint's BEGIN failed or was cancelled, or its
    /// RELEASE / ROLLBACK TO was cancelled (SeaORM then queues a rollback at the enclosing
    /// level, since its `DatabaseTransaction` counts as open before its `SAVEPOINT` has
    /// run, which ends the enclosing transaction), or MySQL/MariaDB rolled the whole
    /// transaction back itself (a deadlock, or a lock wait timeout under
    /// `innodb_rollback_on_timeout`). Either way later statements would run in
    /// autocommit: from then on no statement runs and nothing commits.
    broken: std::sync::OnceLock<DbErr>,
    /// A MySQL/MariaDB error that may have ended the transaction (a lock wait timeout, a
    /// full lock table, a snapshot conflict), until the server has said whether it did.
    /// Set before asking, so that a question cut off by cancellation is asked again before
    /// the next statement.
    suspect: Mutex<Option<DbErr>>,
    /// Set when a statement was sent and its caller stopped waiting for the answer (the
    /// operation was dropped, or its body at the deadline): the connection is busy until
    /// the server ends that statement.
    abandoned: AtomicBool,
    /// One statement at a time in the tree: the checks, the time budget, the send and the
    /// reading of its outcome are one step, so that no statement slips in after the
    /// server has ended the transaction (`join!` on one `Tx`).
    statements: tokio::sync::Mutex<()>,
    /// The node of a `Db` with failover the outermost transaction began on.
    node: std::sync::OnceLock<usize>,
    /// Set when a statement lost the connection: on a `Db` with failover, the outermost
    /// operation may re-run on another node.
    lost_connection: AtomicBool,
    /// The operations that doomed a level (`savepoint = false`), by the level's id.
    doomed_by: Mutex<Vec<(u32, &'static str)>>,
    /// A test's transaction (`safe_db::testing`): `requires_new` operations nest in it.
    #[cfg(feature = "testing")]
    test: AtomicBool,
    /// Failures injected into the levels of the tree, by id (`safe_db::testing::Faults`):
    /// kept here rather than in each `Tx`, which then does not grow in tests.
    #[cfg(feature = "testing")]
    armed: Mutex<Vec<(u32, Arc<crate::testing::Armed>)>>,
}

impl Tree {
    fn new(commit_visible: bool, home: Option<Db>) -> Arc<Tree> {
        Arc::new(Tree {
            home,
            conflict: AtomicBool::new(false),
            first_conflict: std::sync::OnceLock::new(),
            next_id: AtomicU32::new(1),
            callbacks: Mutex::new(Vec::new()),
            commit_visible,
            broken: std::sync::OnceLock::new(),
            suspect: Mutex::new(None),
            abandoned: AtomicBool::new(false),
            statements: tokio::sync::Mutex::new(()),
            doomed_by: Mutex::new(Vec::new()),
            node: std::sync::OnceLock::new(),
            lost_connection: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            test: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            armed: Mutex::new(Vec::new()),
        })
    }

    fn broken(&self) -> Option<DbErr> {
        self.broken.get().cloned()
    }

    /// From now on no statement runs in the tree and nothing commits; the first reason
    /// given is the one every later statement gets.
    fn break_with(&self, err: DbErr) {
        let _ = self.broken.set(err);
    }

    fn lost_conflict(&self, err: &DbErr) {
        self.conflict.store(true, Ordering::Relaxed);
        let _ = self.first_conflict.set(err.clone());
    }

    fn suspect(&self) -> std::sync::MutexGuard<'_, Option<DbErr>> {
        self.suspect.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn callbacks(&self) -> std::sync::MutexGuard<'_, Vec<(u32, Callback)>> {
        // A panic while the lock is held cannot leave the vector half-edited.
        self.callbacks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Held across one step of the protocol that must not be interrupted: a savepoint's
/// `SAVEPOINT`, `RELEASE` or `ROLLBACK TO`. Dropped before [`Critical::done`] (the step
/// was cut off by cancellation, or failed where the caller returns with `?`), it leaves
/// the enclosing transaction in a state nobody knows, so the tree is broken: nothing more
/// runs in it, and its outermost level rolls back.
///
/// The outermost level's steps need no guard (`Critical::step(None)`): its `BEGIN` runs
/// to its end on a task of its own ([`Shielded`]), and a `COMMIT` or `ROLLBACK` cut off
/// leaves sqlx a rollback to queue before the connection is reused.
///
/// A guard, not a function taking the step's future: a future passed by value to an
/// `async fn` is counted twice in the caller's size (rust-lang/rust#62958), and every
/// level of a chain of nested operations would pay for it.
#[must_use = "a critical step is guarded until `done` is called"]
struct Critical(Option<Arc<Tree>>);

impl Critical {
    fn step(tree: Option<&Arc<Tree>>) -> Critical {
        Critical(tree.cloned())
    }

    /// The step completed (with whatever result): the guard is lifted.
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Critical {
    fn drop(&mut self) {
        if let Some(tree) = self.0.take() {
            tree.break_with(cut_off());
        }
    }
}

/// Held while a statement is on the wire: dropped before [`InFlight::landed`], its caller
/// stopped waiting, and the statement may still be running on the server.
pub(crate) struct InFlight<'a>(Option<&'a Tree>);

impl InFlight<'_> {
    /// The statement's answer came: whatever an earlier statement's caller abandoned was
    /// read before it, so nothing is owed on the connection any more.
    pub(crate) fn landed(mut self) {
        if let Some(tree) = self.0.take() {
            tree.abandoned.store(false, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(tree) = self.0.take() {
            tree.abandoned.store(true, Ordering::Relaxed);
        }
    }
}

/// The error of every statement and commit in a tree broken by a step cut off.
fn cut_off() -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(
        "safe-db: a nested operation was cancelled or failed while it began or ended its \
         savepoint, which leaves the enclosing transaction in an unknown state; no further \
         statement runs in it and nothing is committed"
            .to_owned(),
    ))
}

/// The error of a `requires_new` operation called inside a transaction begun by hand.
pub(crate) fn pool_unknown() -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(
        "safe-db: a `requires_new` operation was called inside a transaction begun by hand \
         (a `DatabaseTransaction`), whose pool safe-db does not know; call it with the \
         connection instead"
            .to_owned(),
    ))
}

/// The error of every statement and commit at a level that a `savepoint = false`
/// operation failed in.
fn doomed_error(operation: &str) -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(format!(
        "safe-db: operation `{operation}` failed inside this transaction without a savepoint \
         of its own (`savepoint = false`), so its work cannot be undone alone: no further \
         statement runs in this transaction and it rolls back; nothing is committed"
    )))
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

/// The outermost transaction's options as SeaORM takes them.
fn outermost_options(backend: DbBackend, options: &Options) -> TransactionOptions {
    let mut out = TransactionOptions::default();
    if backend == DbBackend::Sqlite {
        // SQLite has no isolation levels or access modes. A writer takes the write
        // lock at BEGIN, where a busy database is waited out, instead of failing with
        // "database is locked" when a read lock cannot be upgraded mid-transaction.
        out.sqlite_transaction_mode = Some(if options.read_only {
            SqliteTransactionMode::Deferred
        } else {
            SqliteTransactionMode::Immediate
        });
    } else {
        out.isolation_level = options.isolation.map(|i| i.to_sea_orm());
        out.access_mode = options.read_only.then_some(AccessMode::ReadOnly);
    }
    out
}

/// PostgreSQL's `SET TRANSACTION` for an isolation level and access mode, if any is set
/// (what SeaORM would send on its own).
fn postgres_settings(
    isolation: Option<IsolationLevel>,
    access: Option<AccessMode>,
) -> Option<String> {
    if isolation.is_none() && access.is_none() {
        return None;
    }
    let mut sql = "SET TRANSACTION".to_owned();
    if let Some(isolation) = isolation {
        sql.push_str(&format!(" ISOLATION LEVEL {isolation}"));
    }
    if let Some(access) = access {
        sql.push_str(&format!(" {access}"));
    }
    Some(sql)
}

type Beginning = Pin<Box<dyn Future<Output = Result<DatabaseTransaction, DbErr>> + Send>>;

/// An outermost BEGIN that runs to its end even if the caller drops it.
///
/// Cut off half-way, a BEGIN leaves its connection in a state nobody tracks: sqlx 0.9
/// counts the transaction only once `BEGIN` has answered, so a connection whose `BEGIN`
/// was sent goes back to the pool inside a transaction that no one ends (and on MySQL,
/// where SeaORM sends `SET TRANSACTION …` before `BEGIN`, with a one-shot isolation or
/// read-only setting waiting for the next, unrelated transaction). Dropped unfinished,
/// this hands the BEGIN to a task of its own; when it completes there, the transaction
/// it yields is dropped, which rolls it back before the connection returns to the pool.
struct Shielded(Option<Beginning>);

impl Future for Shielded {
    type Output = Result<DatabaseTransaction, DbErr>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let begin = self.0.as_mut().expect("polled after completion");
        let out = std::task::ready!(begin.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(out)
    }
}

impl Drop for Shielded {
    fn drop(&mut self) {
        if let Some(begin) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                drop(begin.await);
            });
        }
    }
}

/// The protocol: begin.
impl Tx {
    fn new(txn: DatabaseTransaction, depth: u32, tree: Arc<Tree>) -> Self {
        Tx {
            txn,
            depth,
            id: 0,
            parent: None,
            statement_failed: AtomicBool::new(false),
            tree,
            children: Arc::new(tokio::sync::Mutex::new(())),
            turn: None,
            deadline: None,
            restore_timeout: None,
            read_only: false,
            refuse_writes: false,
            read_only_savepoint: false,
            doomed: AtomicBool::new(false),
        }
    }

    /// Begins an outermost transaction on `conn` with `options`' isolation and access
    /// mode, its statements bounded by `deadline`. `home` is the [`Db`] that `conn` was
    /// chosen from, if it was: `requires_new` operations in the transaction begin there.
    pub(crate) async fn begin(
        conn: &DatabaseConnection,
        home: Option<&Db>,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let backend = conn.get_database_backend();
        let mut config = outermost_options(backend, options);
        // PostgreSQL takes the settings after BEGIN: sent with the statement timeout in
        // one message below, rather than one message each (SeaORM's `SET TRANSACTION`,
        // then safe-db's `SET LOCAL`).
        if backend == DbBackend::Postgres {
            config.isolation_level = None;
            config.access_mode = None;
        }
        let begin = conn.clone();
        let begun = Shielded(Some(Box::pin(async move {
            begin.begin_with_options(config).await
        })))
        .await?;
        // Made after the BEGIN, so that the future holds less across it.
        let home = match home {
            Some(db) => db.clone(),
            None => Db::new(conn.clone(), None),
        };
        let mut tx = Tx::new(begun, 0, Tree::new(true, Some(home)));
        tx.read_only = options.read_only;
        if backend != DbBackend::Postgres {
            tx.bound(deadline).await?;
            return Ok(tx);
        }
        tx.deadline = deadline;
        let settings = postgres_settings(
            options.isolation.map(|i| i.to_sea_orm()),
            options.read_only.then_some(AccessMode::ReadOnly),
        );
        let sql = match (settings, deadline) {
            (Some(settings), Some(_)) => format!("{settings}; {}", statement_timeout(deadline)),
            (Some(settings), None) => settings,
            (None, Some(_)) => statement_timeout(deadline),
            (None, None) => return Ok(tx),
        };
        // Dropped before this completes, the transaction is rolled back as usual.
        tx.txn.execute_unprepared(&sql).await?;
        Ok(tx)
    }

    /// Begins a savepoint in a transaction that safe-db does not manage (begun by hand).
    pub(crate) async fn begin_in(
        txn: &DatabaseTransaction,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let mut tx = Tx::new(txn.begin().await?, 1, Tree::new(false, None));
        tx.bound(deadline).await?;
        Ok(tx)
    }

    /// Begins a savepoint in this transaction, breaking the tree if that does not
    /// complete (see [`Critical`]). The isolation is the outermost level's to choose.
    ///
    /// A `read_only` savepoint in a transaction that may write is made read-only too: by
    /// PostgreSQL (`SET LOCAL transaction_read_only`, ended by `ROLLBACK TO`), and by
    /// safe-db on MySQL/MariaDB, which cannot (writes refused before they are sent).
    pub(crate) async fn begin_nested(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        if let Some(err) = self.tree.broken() {
            return Err(err);
        }
        let turn = Arc::clone(&self.children).lock_owned().await;
        // After the turn: a sibling that joined this level may have failed meanwhile.
        if let Some(err) = self.why_not_join() {
            return Err(err);
        }
        // A SAVEPOINT that fails breaks the tree like one cut off: SeaORM counts the
        // savepoint as open before it has run, so dropping it queues a rollback at the
        // enclosing level, which may end the whole transaction.
        let step = Critical::step(Some(&self.tree));
        let txn = self.txn.begin().await?;
        step.done();
        let mut tx = Tx {
            txn,
            depth: self.depth + 1,
            id: self.tree.next_id.fetch_add(1, Ordering::Relaxed),
            parent: Some(self.id),
            statement_failed: AtomicBool::new(false),
            tree: Arc::clone(&self.tree),
            children: Arc::new(tokio::sync::Mutex::new(())),
            turn: Some(turn),
            deadline: self.deadline,
            restore_timeout: None,
            read_only: self.read_only,
            refuse_writes: self.refuse_writes,
            read_only_savepoint: false,
            doomed: AtomicBool::new(false),
        };
        if options.read_only && !self.read_only {
            tx.read_only = true;
            match tx.get_database_backend() {
                DbBackend::Postgres => {
                    // Dropped before this completes, the savepoint is rolled back as usual.
                    tx.txn
                        .execute_unprepared("SET LOCAL transaction_read_only = on")
                        .await?;
                    tx.read_only_savepoint = true;
                }
                DbBackend::MySql => tx.refuse_writes = true,
                // SQLite has no read-only transactions (see the README).
                _ => {}
            }
        }
        tx.bound(deadline).await?;
        Ok(tx)
    }

    /// Begins a transaction of its own, outside this one, on the handle this
    /// transaction's tree was begun on (`requires_new`).
    ///
    /// Not in a tree that can no longer commit (broken, or this level doomed), and bounded
    /// by this transaction's deadline too: the server stops its statements when the
    /// caller's time is up.
    pub(crate) async fn begin_new(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        if let Some(err) = self.why_not_join() {
            return Err(err);
        }
        #[cfg(feature = "testing")]
        if self.tree.test.load(Ordering::Relaxed) {
            // Inside a test's transaction everything nests, so that the test leaves nothing.
            return self.begin_nested(options, deadline).await;
        }
        let deadline = match (deadline, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match &self.tree.home {
            Some(home) => home.__begin(options, deadline).await,
            None => Err(pool_unknown()),
        }
    }

    /// Bounds this transaction's statements by `deadline` too (the earlier one holds).
    ///
    /// On PostgreSQL, a deadline of this level's own is also given to the server (`SET
    /// LOCAL statement_timeout`), so that it stops a statement still running at the
    /// deadline; a savepoint gives its caller's timeout back before it is released (see
    /// [`Tx::commit`]). MariaDB gets the deadline with each statement.
    async fn bound(&mut self, deadline: Option<Instant>) -> Result<(), DbErr> {
        let inherited = self.deadline;
        self.deadline = match (inherited, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.deadline == inherited || self.txn.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        if let Some(own) = self.deadline {
            self.txn
                .execute_unprepared(&statement_timeout(Some(own)))
                .await?;
            if self.depth > 0 {
                self.restore_timeout = Some(inherited);
            }
        }
        Ok(())
    }
}

/// The protocol: end.
impl Tx {
    /// The connection was lost (`err`): the node it was on is left aside, and on a `Db`
    /// with failover the outermost operation may re-run elsewhere.
    fn lost_connection(&self, err: &DbErr) {
        self.tree.lost_connection.store(true, Ordering::Relaxed);
        if let (Some(home), Some(node)) = (&self.tree.home, self.tree.node.get()) {
            home.node_lost(*node, err);
        }
    }

    /// Records the node of a `Db` with failover this outermost transaction began on.
    pub(crate) fn set_node(&mut self, node: usize) {
        let _ = self.tree.node.set(node);
    }

    /// Whether the operation may re-run: it lost a conflict, or (on a `Db` with failover)
    /// its connection before the COMMIT was sent.
    pub(crate) fn may_retry(&self) -> bool {
        self.lost_conflict()
            || (self.tree.lost_connection.load(Ordering::Relaxed)
                && self.tree.home.as_ref().is_some_and(Db::fails_over))
    }

    /// Whether a statement in this transaction's tree lost a conflict (serialization
    /// failure, deadlock, busy): the outermost operation may retry.
    pub(crate) fn lost_conflict(&self) -> bool {
        self.tree.conflict.load(Ordering::Relaxed)
    }

    /// Why a body's `Ok` must not be committed, if it must not: the tree is broken, a
    /// statement lost a conflict, or (PostgreSQL) a statement at this level failed, which
    /// aborts the transaction so that a COMMIT would silently roll back. A MySQL/MariaDB
    /// error that may have ended the transaction and has not been asked about yet (a
    /// streamed row's) is asked about first: one round trip, after those errors only.
    pub(crate) async fn why_not_commit(&self, operation: &str) -> Option<DbErr> {
        let suspect = self.tree.suspect().clone();
        if let Some(err) = suspect {
            self.settle_suspicion(err).await;
        }
        if let Some(err) = self.tree.broken() {
            return Some(err);
        }
        if self.lost_conflict() {
            // The conflict itself (a serialization failure, deadlock or busy error), so
            // that it is classified, and retried, as what it is.
            return Some(self.tree.first_conflict.get().cloned().unwrap_or_else(|| {
                DbErr::Exec(RuntimeErr::Internal(format!(
                    "safe-db: operation `{operation}` returned Ok after its transaction lost \
                     a conflict; nothing was committed"
                )))
            }));
        }
        if let Some(err) = self.doomed() {
            return Some(err);
        }
        if self.statement_failed.load(Ordering::Relaxed)
            && self.get_database_backend() == DbBackend::Postgres
        {
            return Some(DbErr::Exec(RuntimeErr::Internal(format!(
                "safe-db: operation `{operation}` returned Ok after a statement in its \
                 transaction failed, and PostgreSQL aborts a transaction on any error; \
                 nothing was committed (run the statement that may fail in a nested operation)"
            ))));
        }
        None
    }

    /// Commits (a savepoint: releases), and returns the callbacks to run now: those of
    /// the outermost transaction, once its COMMIT has succeeded; none for a savepoint,
    /// whose callbacks pass to its parent. The caller has asked [`Tx::why_not_commit`].
    ///
    /// No deadline here: once COMMIT is sent the server carries it out, and cutting the
    /// wait would report as failed a transaction that committed. (On PostgreSQL the
    /// deadline's statement_timeout still bounds it.)
    pub(crate) async fn commit(self) -> Result<Vec<Callback>, DbErr> {
        // An injected failure (`safe_db::testing`): rolled back, as by a failed COMMIT.
        #[cfg(feature = "testing")]
        if let Some(armed) = self.armed()
            && let Some(err) = Box::pin(self.commit_fault(armed)).await
        {
            // A lost connection at an outermost COMMIT is reported as a real one would be.
            let unknown = self.parent.is_none()
                && self.tree.commit_visible
                && ErrorKind::of(&err) == ErrorKind::Unavailable;
            if let Err(rollback) = Box::pin(self.rollback()).await {
                tracing::warn!(error = %crate::error::redact(&rollback.to_string()), "rollback failed");
            }
            return Err(if unknown {
                crate::error::commit_unknown(&err)
            } else {
                err
            });
        }
        // A `SET LOCAL` made in a savepoint outlives its `RELEASE`: give the enclosing
        // transaction its statement timeout back first (a `ROLLBACK TO` undoes it itself).
        if let Some(inherited) = self.restore_timeout
            && !self.read_only_savepoint
            && let Err(err) = self
                .txn
                .execute_unprepared(&statement_timeout(inherited))
                .await
        {
            // Boxed: this rare path would otherwise add a whole rollback to the size of
            // every commit's future.
            if let Err(rollback) = Box::pin(self.rollback()).await {
                tracing::warn!(error = %crate::error::redact(&rollback.to_string()), "rollback failed");
            }
            return Err(err);
        }
        let Tx {
            txn,
            tree,
            id,
            parent,
            turn,
            read_only_savepoint,
            read_only,
            ..
        } = self;
        let backend = txn.get_database_backend();
        // A read-only savepoint ends with `ROLLBACK TO`: a `RELEASE` would leave the
        // caller read-only, and it wrote nothing.
        let step = Critical::step(parent.map(|_| &tree));
        let ended = if read_only_savepoint {
            txn.rollback().await
        } else {
            txn.commit().await
        };
        step.done();
        // Its answer came: nothing abandoned is owed on the connection any more.
        tree.abandoned.store(false, Ordering::Relaxed);
        if let Err(err) = &ended {
            if ErrorKind::of(err).is_retryable() {
                tree.lost_conflict(err);
            }
            if parent.is_some() {
                savepoint_end_failed(&tree, err);
            }
        }
        // The next sibling may begin its savepoint.
        drop(turn);
        // An outermost COMMIT whose answer was lost with the connection: it may have
        // committed, or not. Said as such, and never re-run.
        let ended = match ended {
            Err(err)
                if parent.is_none()
                    && tree.commit_visible
                    && backend != DbBackend::Sqlite
                    && ErrorKind::of(&err) == ErrorKind::Unavailable =>
            {
                if let (Some(home), Some(node)) = (&tree.home, tree.node.get()) {
                    home.node_lost(*node, &err);
                }
                Err(crate::error::commit_unknown(&err))
            }
            other => other,
        };
        ended?;
        // A commit that may have written, on a `Db` whose standby serves `read_only`
        // operations: they must not read older data than this (boxed: rare, and one round
        // trip).
        if parent.is_none()
            && !read_only
            && let Some(home) = &tree.home
        {
            home.note_commit();
        }
        let mut callbacks = tree.callbacks();
        let Some(parent) = parent else {
            let (mine, rest): (Vec<_>, Vec<_>) =
                callbacks.drain(..).partition(|(owner, _)| *owner == id);
            *callbacks = rest;
            if !tree.commit_visible && !mine.is_empty() {
                tracing::warn!(
                    dropped = mine.len(),
                    "on_commit callbacks dropped: the enclosing transaction was begun by \
                     hand, so safe-db cannot see it commit"
                );
                return Ok(Vec::new());
            }
            return Ok(mine.into_iter().map(|(_, callback)| callback).collect());
        };
        for (owner, _) in callbacks.iter_mut() {
            if *owner == id {
                *owner = parent;
            }
        }
        Ok(Vec::new())
    }

    /// Rolls back (a savepoint: to its start). Callbacks registered at this level are
    /// dropped with it. An outermost transaction (PostgreSQL, MySQL/MariaDB, no deadline)
    /// with a statement still running that its caller abandoned is dropped instead, its
    /// rollback queued, so as not to wait behind that statement. A rollback that does not answer
    /// within a grace period is given up: the connection is then closed by the pool (and
    /// an enclosing transaction is broken), since its state is unknown.
    pub(crate) async fn rollback(self) -> Result<(), DbErr> {
        let Tx {
            txn,
            tree,
            parent,
            deadline,
            id,
            ..
        } = self;
        // Its callbacks (and those its released savepoints handed it) will never run: drop
        // them now, with whatever they hold, rather than with the tree.
        tree.callbacks().retain(|(owner, _)| *owner != id);
        // Not on SQLite: its worker runs the statement to its end holding the write
        // lock, which the next writer would then wait for instead of this rollback.
        // Not with a deadline either: the server stops the statement there, so the wait
        // is short, and the rollback's answer is read here rather than by the pool.
        if parent.is_none()
            && deadline.is_none()
            && tree.abandoned.load(Ordering::Relaxed)
            && txn.get_database_backend() != DbBackend::Sqlite
        {
            // A statement whose caller stopped waiting may still be running: a ROLLBACK
            // now would wait behind it. Dropped, the transaction queues its rollback, read
            // when the connection is given back; a pool guarded by `guard_pool_release`
            // closes it instead if the statement does not end within its grace, and
            // PostgreSQL then stops the statement.
            drop(txn);
            return Ok(());
        }
        let nested = parent.map(|_| &tree);
        let step = Critical::step(nested);
        let rolled_back = tokio::time::timeout(ROLLBACK_GRACE, txn.rollback()).await;
        if rolled_back.is_ok() {
            step.done();
            tree.abandoned.store(false, Ordering::Relaxed);
        }
        // Cut off by the grace period, the step is not done: an enclosing transaction is
        // broken when `step` is dropped.
        match rolled_back {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                if nested.is_some() {
                    if ErrorKind::of(&err).is_retryable() {
                        tree.lost_conflict(&err);
                    }
                    savepoint_end_failed(&tree, &err);
                }
                Err(err)
            }
            Err(_) => Err(DbErr::Exec(RuntimeErr::Internal(format!(
                "safe-db: the rollback did not answer within {ROLLBACK_GRACE:?}; the \
                 connection is given up"
            )))),
        }
    }

    /// An operation that joined this transaction without a savepoint failed: nothing
    /// more runs at this level, and it cannot commit (see [`Tx::why_not_commit`]).
    pub(crate) fn doom(&self, operation: &'static str) {
        let mut names = self
            .tree
            .doomed_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !self.doomed.swap(true, Ordering::Relaxed) {
            names.push((self.id, operation));
        }
    }

    /// The error of a doomed level, if this one is.
    fn doomed(&self) -> Option<DbErr> {
        if !self.doomed.load(Ordering::Relaxed) {
            return None;
        }
        let names = self
            .tree
            .doomed_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let name = names
            .iter()
            .find(|(id, _)| *id == self.id)
            .map_or("?", |(_, n)| n);
        Some(doomed_error(name))
    }

    /// Why an operation cannot join this transaction without a savepoint, if it cannot:
    /// the tree is broken, or an operation that joined this level before failed.
    pub(crate) fn why_not_join(&self) -> Option<DbErr> {
        if let Some(err) = self.tree.broken() {
            return Some(err);
        }
        self.doomed()
    }

    /// Makes this (outermost) transaction a test's (`safe_db::testing::TestTx`).
    #[cfg(feature = "testing")]
    pub(crate) fn enter_test(&mut self) {
        self.tree.test.store(true, Ordering::Relaxed);
    }

    /// The primary pool this transaction's tree was begun on.
    #[cfg(feature = "testing")]
    pub(crate) fn home_primary(&self) -> DatabaseConnection {
        match &self.tree.home {
            Some(home) => home.primary().clone(),
            None => unreachable!("a test's transaction begins on a connection"),
        }
    }

    /// Arms this attempt's injected failures.
    #[cfg(feature = "testing")]
    pub(crate) fn arm(&mut self, armed: Option<Box<crate::testing::Armed>>) {
        if let Some(armed) = armed {
            let mut all = self.tree.armed.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|(id, _)| *id != self.id);
            all.push((self.id, Arc::from(armed)));
        }
    }

    /// The failures injected into this level, if any.
    #[cfg(feature = "testing")]
    fn armed(&self) -> Option<Arc<crate::testing::Armed>> {
        let all = self.tree.armed.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .find(|(id, _)| *id == self.id)
            .map(|(_, armed)| Arc::clone(armed))
    }

    /// The after-commit callbacks held at this level.
    #[cfg(feature = "testing")]
    pub(crate) fn captured_callbacks(&self) -> usize {
        let id = self.id;
        self.tree
            .callbacks()
            .iter()
            .filter(|(owner, _)| *owner == id)
            .count()
    }

    /// Takes the after-commit callbacks held at this level, in registration order.
    #[cfg(feature = "testing")]
    pub(crate) fn take_callbacks(&self) -> Vec<Callback> {
        let mut callbacks = self.tree.callbacks();
        let (mine, rest): (Vec<_>, Vec<_>) = callbacks
            .drain(..)
            .partition(|(owner, _)| *owner == self.id);
        *callbacks = rest;
        mine.into_iter().map(|(_, callback)| callback).collect()
    }

    /// The injected failure of this attempt's commit, if one is armed: the server is made
    /// to raise it for real where it can. The caller rolls back.
    #[cfg(feature = "testing")]
    async fn commit_fault(&self, armed: Arc<crate::testing::Armed>) -> Option<DbErr> {
        let (failure, injection) = armed.commit(self.get_database_backend())?;
        let err = match injection {
            crate::testing::Injection::Fail(err) => err,
            crate::testing::Injection::Send(sql) => match self.txn.execute_unprepared(&sql).await {
                Err(err) => err,
                Ok(_) => crate::testing::not_raised(failure),
            },
        };
        if ErrorKind::of(&err).is_retryable() {
            self.tree.lost_conflict(&err);
        }
        Some(err)
    }

    /// The statement about to be sent, if its failure is injected: `Ok(sql)` to send
    /// instead (the server raises the failure), `Err` to fail with unsent.
    #[cfg(feature = "testing")]
    fn injected(&self) -> Option<Result<String, DbErr>> {
        match self.armed()?.statement(self.get_database_backend())? {
            crate::testing::Injection::Send(sql) => Some(Ok(sql)),
            crate::testing::Injection::Fail(err) => {
                if ErrorKind::of(&err) == ErrorKind::Unavailable {
                    self.tree.break_with(err.clone());
                }
                Some(Err(err))
            }
        }
    }

    /// Whether writes are refused at this level.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Ends this transaction's tree for whoever still holds it: every later statement,
    /// nested operation and commit through it fails with `err`.
    #[cfg(feature = "axum")]
    pub(crate) fn abandon(&self, err: DbErr) {
        self.tree.break_with(err);
    }
}

/// What the body sees.
impl Tx {
    /// How deep this transaction is nested: 0 for the outermost, 1 for a savepoint in it, …
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The SeaORM transaction underneath, for APIs that want one by name.
    pub fn as_database_transaction(&self) -> &DatabaseTransaction {
        &self.txn
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
    /// use sea_orm::{ConnectionTrait, DbErr};
    ///
    /// #[safe_db_operation]
    /// async fn register(tx: &Tx, name: &str) -> Result<(), DbErr> {
    ///     tx.execute_unprepared(&format!("INSERT INTO agents (name) VALUES ('{name}')")).await?;
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

/// The statements the body sends: checked, bounded, and their failures noted.
impl Tx {
    /// Takes the tree's turn for one statement and checks it: refused before it is sent
    /// when the tree is broken or the statement would end the transaction (or write, in
    /// a read-only savepoint on MySQL). Returns the turn, held until the statement's
    /// outcome is noted, and the statement as it must be sent on MariaDB with a deadline.
    async fn admit(
        &self,
        sql: &str,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Option<String>), DbErr> {
        let turn = self.tree.statements.lock().await;
        self.refuse(sql).await?;
        Ok((turn, self.bounded(sql)))
    }

    /// Refuses a statement before it is sent: in a broken tree, or one that would end
    /// the transaction (see [`crate::sql::ends_transaction`]).
    async fn refuse(&self, sql: &str) -> Result<(), DbErr> {
        let suspect = self.tree.suspect().clone();
        if let Some(err) = suspect {
            self.settle_suspicion(err).await;
        }
        if let Some(err) = self.tree.broken() {
            return Err(err);
        }
        if let Some(err) = self.doomed() {
            return Err(err);
        }
        let backend = self.txn.get_database_backend();
        if self.refuse_writes
            && let Some(what) = crate::sql::writes(backend, sql)
        {
            return Err(crate::error::read_only_refused(&what));
        }
        match crate::sql::ends_transaction(backend, sql) {
            None => Ok(()),
            Some(what) => {
                let why = match what.as_str() {
                    "COMMIT"
                    | "ROLLBACK"
                    | "BEGIN"
                    | "END"
                    | "ABORT"
                    | "START TRANSACTION"
                    | "PREPARE TRANSACTION" => "the operation ends its transaction itself",
                    "SAVEPOINT" | "RELEASE" => {
                        "call another operation with `tx` instead, which manages its savepoint"
                    }
                    "EXECUTE" | "PREPARE" | "IF" | "WHILE" | "LOOP" | "REPEAT" | "CASE" => {
                        "MySQL and MariaDB could commit the transaction implicitly in SQL that \
                         safe-db cannot read before it runs"
                    }
                    _ => {
                        "MySQL and MariaDB commit the transaction implicitly before it, so a \
                         later rollback could not undo the work before it; run it outside the \
                         operation, on the connection"
                    }
                };
                Err(DbErr::Exec(sea_orm::RuntimeErr::Internal(format!(
                    "safe-db: `{what}` is refused inside a safe-db operation: {why} (nothing \
                     was sent)"
                ))))
            }
        }
    }

    /// Takes the tree's turn for `stmt` and makes it what is sent (see [`Tx::admit`]):
    /// bounded by the deadline on MariaDB, or replaced by its injected failure
    /// (`safe_db::testing`; an injected failure made on the client is noted and returned).
    async fn prepared(
        &self,
        mut stmt: Statement,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Statement), DbErr> {
        let (turn, bounded) = self.admit(&stmt.sql).await?;
        if let Some(sql) = bounded {
            stmt.sql = sql;
        }
        #[cfg(feature = "testing")]
        match self.injected() {
            Some(Ok(sql)) => stmt = Statement::from_string(stmt.db_backend, sql),
            Some(Err(err)) => {
                self.note_failure(&err).await;
                return Err(err);
            }
            None => {}
        }
        Ok((turn, stmt))
    }

    /// The statement as it is sent: on MariaDB with a deadline, told to stop there.
    fn bounded(&self, sql: &str) -> Option<String> {
        let deadline = self.deadline?;
        if self.txn.get_database_backend() != DbBackend::MySql {
            return None;
        }
        crate::sql::with_statement_time(sql, deadline.saturating_duration_since(Instant::now()))
    }

    /// A statement's result, its failure noted first (see [`Tx::note_failure`]).
    async fn noted<T>(&self, result: Result<T, DbErr>) -> Result<T, DbErr> {
        if let Err(err) = &result {
            self.note_failure(err).await;
        }
        result
    }

    /// Records a failed statement: a conflict for the retry, and on MySQL/MariaDB, where
    /// the server may have rolled the whole transaction back, breaks the tree if it has.
    async fn note_failure(&self, err: &DbErr) {
        if self.note_failure_now(err) {
            self.settle_suspicion(err.clone()).await;
        }
    }

    /// What of [`Tx::note_failure`] needs no round trip. Returns whether the server must
    /// be asked if the transaction survived (the question is also left in `suspect`, so
    /// that the next statement asks it if this caller does not).
    pub(crate) fn note_failure_now(&self, err: &DbErr) -> bool {
        self.statement_failed.store(true, Ordering::Relaxed);
        if ErrorKind::of(err) == ErrorKind::Unavailable {
            self.lost_connection(err);
        }
        if ErrorKind::of(err).is_retryable() {
            self.tree.lost_conflict(err);
        }
        if self.txn.get_database_backend() == DbBackend::MySql {
            match crate::error::mysql_number(err) {
                // A deadlock always ends the transaction.
                Some(1213) => self.tree.break_with(err.clone()),
                // These end it only under some settings: ask.
                Some(1205 | 1206 | 1020) => {
                    *self.tree.suspect() = Some(err.clone());
                    return true;
                }
                // A session the server ended (a `KILL`) ends the transaction with it.
                Some(_) if ErrorKind::of(err) == ErrorKind::Unavailable => {
                    self.tree.break_with(err.clone())
                }
                // Every other server error undoes its own statement only.
                Some(_) => {}
                // A lost connection ends it.
                None if ErrorKind::of(err) == ErrorKind::Unavailable => {
                    self.tree.break_with(err.clone())
                }
                None => {}
            }
        }
        false
    }

    /// Opens a stream of a statement's rows (feature `stream`): the statement is checked
    /// like any other, and holds the tree's statement turn until the stream ends or is
    /// dropped.
    #[cfg(feature = "stream")]
    pub(crate) async fn open_stream(
        &self,
        stmt: Statement,
    ) -> Result<crate::stream::TxStream<'_>, DbErr> {
        let (turn, stmt) = self.prepared(stmt).await?;
        let flight = InFlight(Some(&self.tree));
        match sea_orm::StreamTrait::stream_raw(&self.txn, stmt).await {
            Ok(inner) => Ok(crate::stream::TxStream {
                inner,
                tx: self,
                _turn: turn,
                flight: Some(flight),
            }),
            Err(err) => {
                flight.landed();
                self.note_failure(&err).await;
                Err(err)
            }
        }
    }

    /// Asks MySQL/MariaDB whether the transaction survived `err`, and breaks the tree
    /// with it if not (or if the answer cannot be had: MySQL, unlike MariaDB, has no
    /// `@@in_transaction`). One round trip, after those errors only.
    async fn settle_suspicion(&self, err: DbErr) {
        let asked = self
            .txn
            .query_one_raw(Statement::from_string(
                DbBackend::MySql,
                "SELECT CAST(@@in_transaction AS SIGNED)",
            ))
            .await;
        let open = matches!(
            asked.map(|row| row.map(|r| r.try_get_by_index::<i64>(0))),
            Ok(Some(Ok(1)))
        );
        if !open {
            self.tree.break_with(err);
        }
        *self.tree.suspect() = None;
    }
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &self.txn.get_database_backend())
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Tx {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let (_turn, stmt) = self.prepared(stmt).await?;
        let flight = InFlight(Some(&self.tree));
        let result = self.txn.execute_raw(stmt).await;
        flight.landed();
        self.noted(result).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let (_turn, bounded) = self.admit(sql).await?;
        #[cfg(feature = "testing")]
        let (bounded, sql) = match self.injected() {
            Some(Ok(injected)) => (Some(injected), sql),
            Some(Err(err)) => return self.noted(Err(err)).await,
            None => (bounded, sql),
        };
        let sql = bounded.as_deref().unwrap_or(sql);
        let flight = InFlight(Some(&self.tree));
        let result = self.txn.execute_unprepared(sql).await;
        flight.landed();
        self.noted(result).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let (_turn, stmt) = self.prepared(stmt).await?;
        let flight = InFlight(Some(&self.tree));
        let result = self.txn.query_one_raw(stmt).await;
        flight.landed();
        self.noted(result).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let (_turn, stmt) = self.prepared(stmt).await?;
        let flight = InFlight(Some(&self.tree));
        let result = self.txn.query_all_raw(stmt).await;
        flight.landed();
        self.noted(result).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}

/// Hand-managed nested transactions (`tx.begin()`) are savepoints of this transaction.
/// Prefer calling another `#[safe_db_operation]` with `tx`: it cannot forget to end them.
#[async_trait::async_trait]
impl TransactionTrait for Tx {
    type Transaction = DatabaseTransaction;

    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.txn.begin().await
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.txn
            .begin_with_config(isolation_level, access_mode)
            .await
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.txn.begin_with_options(options).await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
            > + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.txn.transaction(callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
            > + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.txn
            .transaction_with_config(callback, isolation_level, access_mode)
            .await
    }
}
