//! The transaction handle an operation's body works with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, ExecResult, IsolationLevel,
    QueryResult, Statement, TransactionError, TransactionOptions, TransactionTrait,
};

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
pub struct Tx {
    txn: DatabaseTransaction,
    depth: u32,
    /// Set when a statement at this level failed; on PostgreSQL that aborts the
    /// transaction, so a later `COMMIT` would silently roll back.
    statement_failed: AtomicBool,
    /// Shared by a whole tree of nested transactions: set when any statement in it lost
    /// a conflict (serialization failure, deadlock, busy), so the outermost operation
    /// retries even when the body swallowed or converted that error.
    conflict: Arc<AtomicBool>,
}

impl Tx {
    pub(crate) fn outermost(txn: DatabaseTransaction) -> Self {
        Tx {
            txn,
            depth: 0,
            statement_failed: AtomicBool::new(false),
            conflict: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn nested(&self, txn: DatabaseTransaction) -> Self {
        Tx {
            txn,
            depth: self.depth + 1,
            statement_failed: AtomicBool::new(false),
            conflict: Arc::clone(&self.conflict),
        }
    }

    pub(crate) fn with_depth(mut self, depth: u32) -> Self {
        self.depth = depth;
        self
    }

    /// How deep this transaction is nested: 0 for the outermost, 1 for a savepoint in it, …
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The SeaORM transaction underneath, for APIs that want one by name.
    pub fn as_database_transaction(&self) -> &DatabaseTransaction {
        &self.txn
    }

    pub(crate) fn into_inner(self) -> DatabaseTransaction {
        self.txn
    }

    pub(crate) fn statement_failed(&self) -> bool {
        self.statement_failed.load(Ordering::Relaxed)
    }

    pub(crate) fn conflicted(&self) -> bool {
        self.conflict.load(Ordering::Relaxed)
    }

    /// The transaction, and the conflict flag of its tree that outlives it.
    pub(crate) fn into_parts(self) -> (DatabaseTransaction, ConflictFlag) {
        (self.txn, ConflictFlag(self.conflict))
    }

    pub(crate) fn note_conflict(&self) {
        self.conflict.store(true, Ordering::Relaxed);
    }

    fn note<T>(&self, result: Result<T, DbErr>) -> Result<T, DbErr> {
        if let Err(err) = &result {
            self.statement_failed.store(true, Ordering::Relaxed);
            if ErrorKind::of(err).is_retryable() {
                self.note_conflict();
            }
        }
        result
    }
}

/// The conflict flag of a transaction tree, kept past the end of one of its transactions.
pub(crate) struct ConflictFlag(Arc<AtomicBool>);

impl ConflictFlag {
    pub(crate) fn note(&self) {
        self.0.store(true, Ordering::Relaxed);
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
        self.note(self.txn.execute_raw(stmt).await)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.note(self.txn.execute_unprepared(sql).await)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.note(self.txn.query_one_raw(stmt).await)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.note(self.txn.query_all_raw(stmt).await)
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
