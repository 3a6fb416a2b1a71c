//! The transaction handle an operation's body works with.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, ExecResult, IsolationLevel,
    QueryResult, Statement, TransactionError, TransactionOptions, TransactionTrait,
};

use tokio::time::Instant;

use crate::ErrorKind;

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
    /// This transaction's place in its tree: hooks registered here carry this id.
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

pub(crate) type Hook = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What a tree of nested transactions shares, and what outlives each of them.
pub(crate) struct Tree {
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
    hooks: Mutex<Vec<(u32, Hook)>>,
    /// False when the outermost transaction was begun by hand, outside safe-db: its
    /// COMMIT cannot be seen, so no callback may run.
    managed: bool,
    /// Set, with the error every later statement and the commit get, when the transaction
    /// can no longer be trusted: a savepoint's BEGIN failed or was cancelled, or its
    /// RELEASE / ROLLBACK TO was cancelled (SeaORM then queues a rollback at the enclosing
    /// level, since its `DatabaseTransaction` counts as open before its `SAVEPOINT` has
    /// run, which ends the enclosing transaction), or MySQL/MariaDB rolled the whole
    /// transaction back itself (a deadlock, or a lock wait timeout under
    /// `innodb_rollback_on_timeout`). Either way later statements would run in
    /// autocommit: from then on no statement runs and nothing commits.
    poisoned: std::sync::OnceLock<DbErr>,
    /// A MySQL/MariaDB error that may have ended the transaction (a lock wait timeout, a
    /// full lock table, a snapshot conflict), until the server has said whether it did.
    /// Set before asking, so that a question cut off by cancellation is asked again before
    /// the next statement.
    suspect: Mutex<Option<DbErr>>,
    /// One statement at a time in the tree: the checks, the time budget, the send and the
    /// reading of its outcome are one step, so that no statement slips in after the
    /// server has ended the transaction (`join!` on one `Tx`).
    statements: tokio::sync::Mutex<()>,
}

impl Tree {
    fn new(managed: bool) -> Arc<Tree> {
        Arc::new(Tree {
            conflict: AtomicBool::new(false),
            first_conflict: std::sync::OnceLock::new(),
            next_id: AtomicU32::new(1),
            hooks: Mutex::new(Vec::new()),
            managed,
            poisoned: std::sync::OnceLock::new(),
            suspect: Mutex::new(None),
            statements: tokio::sync::Mutex::new(()),
        })
    }

    /// The error of every statement and of the commit once the tree is poisoned.
    pub(crate) fn poisoned(&self) -> Option<DbErr> {
        self.poisoned.get().cloned()
    }

    fn poison(&self, err: DbErr) {
        let _ = self.poisoned.set(err);
    }

    fn suspect(&self) -> std::sync::MutexGuard<'_, Option<DbErr>> {
        self.suspect.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hooks(&self) -> std::sync::MutexGuard<'_, Vec<(u32, Hook)>> {
        // A panic while the lock is held cannot leave the vector half-edited.
        self.hooks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The part of a transaction that outlives its `DatabaseTransaction`: how it ended
/// decides what happens to its callbacks.
pub(crate) struct Scope {
    tree: Arc<Tree>,
    id: u32,
    parent: Option<u32>,
    /// Held until the savepoint is released or rolled back, then the next sibling goes.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Poisons its tree when dropped armed: held across a savepoint's BEGIN, RELEASE or
/// ROLLBACK TO, and disarmed only once that step has completed.
pub(crate) struct PoisonOnDrop(Option<Arc<Tree>>);

impl PoisonOnDrop {
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for PoisonOnDrop {
    fn drop(&mut self) {
        if let Some(tree) = &self.0 {
            tree.poison(poisoned_error());
        }
    }
}

/// The error of every statement and commit in a poisoned tree.
pub(crate) fn poisoned_error() -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::Internal(
        "safe-db: a nested operation was cancelled or failed while it began or ended its \
         savepoint, which leaves the enclosing transaction in an unknown state; no further \
         statement runs in it and nothing is committed"
            .to_owned(),
    ))
}

impl Scope {
    /// A guard for a savepoint's RELEASE or ROLLBACK TO; none for the outermost level.
    pub(crate) fn guard_savepoint_end(&self) -> Option<PoisonOnDrop> {
        self.parent
            .map(|_| PoisonOnDrop(Some(Arc::clone(&self.tree))))
    }

    /// A savepoint's RELEASE or ROLLBACK TO has returned: with `error`, the enclosing
    /// transaction's state is unknown (the server may have rolled it back, or the
    /// savepoint be gone), so the tree is poisoned, unless the error is only that of a
    /// statement the savepoint's operation abandoned when its deadline passed (the server
    /// stopped it: MariaDB 1969, MySQL 3024, PostgreSQL 57014), which sqlx reads first.
    pub(crate) fn savepoint_ended(&self, guard: PoisonOnDrop, error: Option<&DbErr>) {
        let Some(err) = error else {
            guard.disarm();
            return;
        };
        if ErrorKind::of(err).is_retryable() {
            self.note_conflict(err);
        }
        let stopped_statement = matches!(crate::error::mysql_number(err), Some(1969 | 3024))
            || crate::error::sqlstate(err).as_deref() == Some("57014");
        guard.disarm();
        if !stopped_statement {
            self.tree.poison(err.clone());
        }
    }

    pub(crate) fn note_conflict(&self, err: &DbErr) {
        self.tree.conflict.store(true, Ordering::Relaxed);
        let _ = self.tree.first_conflict.set(err.clone());
    }

    /// The transaction committed (or its savepoint was released). Returns the callbacks
    /// to run now: none for a savepoint, whose callbacks wait for its parent.
    pub(crate) fn committed(self) -> Vec<Hook> {
        let mut hooks = self.tree.hooks();
        match self.parent {
            Some(parent) => {
                for (owner, _) in hooks.iter_mut() {
                    if *owner == self.id {
                        *owner = parent;
                    }
                }
                Vec::new()
            }
            None => {
                let (mine, rest): (Vec<_>, Vec<_>) =
                    hooks.drain(..).partition(|(owner, _)| *owner == self.id);
                *hooks = rest;
                if !self.tree.managed && !mine.is_empty() {
                    tracing::warn!(
                        dropped = mine.len(),
                        "on_commit callbacks dropped: the enclosing transaction was begun by \
                         hand, so safe-db cannot see it commit"
                    );
                    return Vec::new();
                }
                mine.into_iter().map(|(_, hook)| hook).collect()
            }
        }
    }
}

/// What an `on_commit` callback may return: nothing, or a `Result` whose error is
/// reported (it cannot undo the commit).
pub trait HookOutput: Send + 'static {
    /// The error message to report, if the callback failed.
    fn into_result(self) -> Result<(), String>;
}

impl HookOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: std::fmt::Display + Send + 'static> HookOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| crate::error::redact(&e.to_string()))
    }
}

impl Tx {
    pub(crate) fn outermost(txn: DatabaseTransaction, read_only: bool) -> Self {
        let mut tx = Tx::root(txn, 0, Tree::new(true));
        tx.read_only = read_only;
        tx
    }

    /// A transaction nested in one that safe-db does not manage.
    pub(crate) fn unmanaged_savepoint(txn: DatabaseTransaction) -> Self {
        Tx::root(txn, 1, Tree::new(false))
    }

    fn root(txn: DatabaseTransaction, depth: u32, tree: Arc<Tree>) -> Self {
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
        }
    }

    fn nested(&self, txn: DatabaseTransaction, turn: tokio::sync::OwnedMutexGuard<()>) -> Self {
        Tx {
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
        }
    }

    /// Bounds this transaction's statements by `deadline` too (the earlier one holds).
    ///
    /// On PostgreSQL, a deadline of this level's own is also given to the server (`SET
    /// LOCAL statement_timeout`), so that it stops a statement still running at the
    /// deadline; a savepoint gives its caller's timeout back before it is released (see
    /// [`Tx::restore_statement_timeout`]). MariaDB gets the deadline with each statement.
    pub(crate) async fn bound(&mut self, deadline: Option<Instant>) -> Result<(), DbErr> {
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

    /// Before a savepoint with a timeout of its own is released: gives the enclosing
    /// transaction its statement timeout back, since a `SET LOCAL` made in a savepoint
    /// outlives its `RELEASE` (a `ROLLBACK TO` undoes it by itself).
    pub(crate) async fn restore_statement_timeout(&self) -> Result<(), DbErr> {
        match self.restore_timeout {
            Some(inherited) => self
                .txn
                .execute_unprepared(&statement_timeout(inherited))
                .await
                .map(drop),
            None => Ok(()),
        }
    }

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
        F::Output: HookOutput,
    {
        let hook: Hook = Box::pin(async move { callback.await.into_result() });
        self.tree.hooks().push((self.id, hook));
    }

    pub(crate) fn statement_failed(&self) -> bool {
        self.statement_failed.load(Ordering::Relaxed)
    }

    pub(crate) fn first_conflict(&self) -> Option<DbErr> {
        self.tree.first_conflict.get().cloned()
    }

    pub(crate) fn conflicted(&self) -> bool {
        self.tree.conflict.load(Ordering::Relaxed)
    }

    /// The transaction, and what of it outlives the transaction.
    pub(crate) fn into_parts(self) -> (DatabaseTransaction, Scope) {
        let scope = Scope {
            tree: self.tree,
            id: self.id,
            parent: self.parent,
            _turn: self.turn,
        };
        (self.txn, scope)
    }

    /// The error that ends this transaction's tree, if it can no longer commit.
    pub(crate) fn poisoned(&self) -> Option<DbErr> {
        self.tree.poisoned()
    }

    /// Begins a savepoint in this transaction, poisoning the tree if that does not
    /// complete (see [`Tree`]).
    ///
    /// A `read_only` savepoint in a transaction that may write is made read-only too: by
    /// PostgreSQL (`SET LOCAL transaction_read_only`, ended by `ROLLBACK TO`), and by
    /// safe-db on MySQL/MariaDB, which cannot (writes refused before they are sent).
    pub(crate) async fn begin_savepoint(&self, read_only: bool) -> Result<Tx, DbErr> {
        if let Some(err) = self.poisoned() {
            return Err(err);
        }
        let turn = Arc::clone(&self.children).lock_owned().await;
        let guard = PoisonOnDrop(Some(Arc::clone(&self.tree)));
        let txn = self.txn.begin().await?;
        guard.disarm();
        let mut tx = self.nested(txn, turn);
        if read_only && !self.read_only {
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
        Ok(tx)
    }

    /// Ends this transaction's tree for whoever still holds it: every later statement,
    /// nested operation and commit through it fails with `err`.
    #[cfg(feature = "axum")]
    pub(crate) fn abandon(&self, err: DbErr) {
        self.tree.poison(err);
    }

    /// Whether this savepoint ends with `ROLLBACK TO` even when its operation succeeds.
    pub(crate) fn ends_by_rollback(&self) -> bool {
        self.read_only_savepoint
    }

    /// Takes the tree's turn for one statement and checks it: refused before it is sent
    /// when the tree is poisoned or the statement would end the transaction (or write, in
    /// a read-only savepoint on MySQL). Returns the turn, held until the statement's
    /// outcome is noted, and the statement as it must be sent on MariaDB with a deadline.
    async fn before(
        &self,
        sql: &str,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Option<String>), DbErr> {
        let turn = self.tree.statements.lock().await;
        self.admit(sql).await?;
        Ok((turn, self.bounded(sql)))
    }

    /// Refuses a statement before it is sent: in a poisoned tree, or one that would end
    /// the transaction (see [`crate::sql::ends_transaction`]).
    async fn admit(&self, sql: &str) -> Result<(), DbErr> {
        let suspect = self.tree.suspect().clone();
        if let Some(err) = suspect {
            self.settle_suspicion(err).await;
        }
        if let Some(err) = self.tree.poisoned() {
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

    /// The statement as it is sent: on MariaDB with a deadline, told to stop there.
    fn bounded(&self, sql: &str) -> Option<String> {
        let deadline = self.deadline?;
        if self.txn.get_database_backend() != DbBackend::MySql {
            return None;
        }
        crate::sql::with_statement_time(sql, deadline.saturating_duration_since(Instant::now()))
    }

    /// Records a failed statement: a conflict for the retry, and on MySQL/MariaDB, where
    /// the server may have rolled the whole transaction back, poisons the tree if it has.
    async fn note<T>(&self, result: Result<T, DbErr>) -> Result<T, DbErr> {
        if let Err(err) = &result {
            self.statement_failed.store(true, Ordering::Relaxed);
            if ErrorKind::of(err).is_retryable() {
                self.tree.conflict.store(true, Ordering::Relaxed);
                let _ = self.tree.first_conflict.set(err.clone());
            }
            if self.txn.get_database_backend() == DbBackend::MySql {
                match crate::error::mysql_number(err) {
                    // A deadlock always ends the transaction.
                    Some(1213) => self.tree.poison(err.clone()),
                    // These end it only under some settings: ask.
                    Some(1205 | 1206 | 1020) => {
                        *self.tree.suspect() = Some(err.clone());
                        self.settle_suspicion(err.clone()).await;
                    }
                    // Every other server error undoes its own statement only.
                    Some(_) => {}
                    // A lost connection ends it.
                    None if ErrorKind::of(err) == ErrorKind::Unavailable => {
                        self.tree.poison(err.clone())
                    }
                    None => {}
                }
            }
        }
        result
    }

    /// Asks MySQL/MariaDB whether the transaction survived `err`, and poisons the tree
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
            self.tree.poison(err);
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

    async fn execute_raw(&self, mut stmt: Statement) -> Result<ExecResult, DbErr> {
        let (_turn, bounded) = self.before(&stmt.sql).await?;
        if let Some(sql) = bounded {
            stmt.sql = sql;
        }
        self.note(self.txn.execute_raw(stmt).await).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let (_turn, bounded) = self.before(sql).await?;
        let sql = bounded.as_deref().unwrap_or(sql);
        self.note(self.txn.execute_unprepared(sql).await).await
    }

    async fn query_one_raw(&self, mut stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let (_turn, bounded) = self.before(&stmt.sql).await?;
        if let Some(sql) = bounded {
            stmt.sql = sql;
        }
        self.note(self.txn.query_one_raw(stmt).await).await
    }

    async fn query_all_raw(&self, mut stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let (_turn, bounded) = self.before(&stmt.sql).await?;
        if let Some(sql) = bounded {
            stmt.sql = sql;
        }
        self.note(self.txn.query_all_raw(stmt).await).await
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
