//! What a caller may pass to an operation: something a transaction can begin on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sea_orm::{
    AccessMode, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, SqliteTransactionMode,
    TransactionOptions, TransactionTrait,
};

use crate::{Options, Tx};

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Anything an operation can run its transaction on: a [`DatabaseConnection`] (a new
/// transaction begins and ends in the call), or an enclosing [`Tx`] or
/// [`DatabaseTransaction`] (the operation runs in a `SAVEPOINT` inside it).
///
/// Callers of a `#[safe_db_operation]` pass `&db` or `tx` where the function declares
/// `tx: &Tx`. The trait is sealed: its one method is an implementation detail.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is neither a database connection nor a transaction",
    label = "a safe-db operation needs a `&DatabaseConnection` or a `&Tx` here",
    note = "pass the connection (`&db`, a `sea_orm::DatabaseConnection`) to run the operation in a new transaction,\n\
            or the caller's `tx: &safe_db::Tx` to run it inside that transaction (as a SAVEPOINT)"
)]
pub trait Begin: Sync + sealed::Sealed {
    #[doc(hidden)]
    fn __begin(&self, options: &Options) -> impl Future<Output = Result<Tx, DbErr>> + Send;
}

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

impl sealed::Sealed for DatabaseConnection {}
impl Begin for DatabaseConnection {
    async fn __begin(&self, options: &Options) -> Result<Tx, DbErr> {
        let read_only = options.read_only;
        let options = outermost_options(self.get_database_backend(), options);
        let conn = self.clone();
        let begun = Shielded(Some(Box::pin(async move {
            conn.begin_with_options(options).await
        })))
        .await;
        Ok(Tx::outermost(begun?, read_only))
    }
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

impl sealed::Sealed for Tx {}
impl Begin for Tx {
    async fn __begin(&self, options: &Options) -> Result<Tx, DbErr> {
        // A savepoint cannot change the isolation: the outermost decides. A read-only
        // one is made read-only (see `Tx::begin_savepoint`).
        self.begin_savepoint(options.read_only).await
    }
}

impl sealed::Sealed for DatabaseTransaction {}
impl Begin for DatabaseTransaction {
    async fn __begin(&self, _: &Options) -> Result<Tx, DbErr> {
        // A savepoint of a transaction that the caller ends by hand.
        Ok(Tx::unmanaged_savepoint(self.begin().await?))
    }
}

impl<T: Begin + ?Sized> sealed::Sealed for &T {}
impl<T: Begin + ?Sized> Begin for &T {
    fn __begin(&self, options: &Options) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        (**self).__begin(options)
    }
}

impl<T: Begin + ?Sized + Send> sealed::Sealed for Arc<T> {}
impl<T: Begin + ?Sized + Send> Begin for Arc<T> {
    fn __begin(&self, options: &Options) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        (**self).__begin(options)
    }
}
