//! SeaORM's traits for `Tx`: it is a connection every SeaORM API accepts, and its own
//! transaction type (a savepoint begun by hand is a `Tx` too, with the same checks).

use std::future::Future;
use std::pin::Pin;

use sea_orm::{
    AccessMode, ConnectionTrait, DbBackend, DbErr, ExecResult, IsolationLevel, QueryResult,
    Statement, TransactionError, TransactionOptions, TransactionSession, TransactionTrait,
};

use super::Tx;
use crate::Options;

#[async_trait::async_trait]
impl ConnectionTrait for Tx {
    fn get_database_backend(&self) -> DbBackend {
        self.backend
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let (mut link, stmt) = self.prepared(stmt).await?;
        let result = link.execute(stmt).await;
        self.noted(&mut link, result).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut link = self.admit(sql).await?;
        #[cfg(feature = "testing")]
        let injected = match self.injected() {
            Some(Ok(injected)) => Some(injected),
            Some(Err(err)) => return self.noted(&mut link, Err(err)).await,
            None => None,
        };
        #[cfg(feature = "testing")]
        let sql = injected.as_deref().unwrap_or(sql);
        let result = link.execute_unprepared(sql).await;
        self.noted(&mut link, result).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let (mut link, stmt) = self.prepared(stmt).await?;
        let result = link.query_one(stmt).await;
        self.noted(&mut link, result).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let (mut link, stmt) = self.prepared(stmt).await?;
        let result = link.query_all(stmt).await;
        self.noted(&mut link, result).await
    }
}

type Callback<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// Savepoints begun by hand (`tx.begin()`) are `Tx`s nested in this one: their
/// statements are checked like the body's, and a savepoint dropped without `commit` or
/// `rollback` is rolled back before the next statement. Prefer calling another
/// `#[safe_db_operation]` with `tx`: it cannot forget to end them. The isolation level
/// is the outermost transaction's: one asked for here is ignored, as SeaORM ignores it
/// for its own savepoints; a read-only access mode makes the savepoint read-only.
#[async_trait::async_trait]
impl TransactionTrait for Tx {
    type Transaction = Tx;

    async fn begin(&self) -> Result<Tx, DbErr> {
        self.begin_nested(&Options::new(), None).await
    }

    async fn begin_with_config(
        &self,
        _isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<Tx, DbErr> {
        let mut options = Options::new();
        options.read_only = access_mode == Some(AccessMode::ReadOnly);
        self.begin_nested(&options, None).await
    }

    async fn begin_with_options(&self, options: TransactionOptions) -> Result<Tx, DbErr> {
        self.begin_with_config(options.isolation_level, options.access_mode)
            .await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c Tx) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        self.transaction_with_config(callback, None, None).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(&'c Tx) -> Callback<'c, T, E> + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let nested = self
            .begin_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        match callback(&nested).await {
            Ok(value) => TransactionSession::commit(nested)
                .await
                .map(|()| value)
                .map_err(TransactionError::Connection),
            Err(err) => {
                TransactionSession::rollback(nested)
                    .await
                    .map_err(TransactionError::Connection)?;
                Err(TransactionError::Transaction(err))
            }
        }
    }
}

/// Ends a savepoint begun by hand. (The outermost `Tx` is only ever lent to a body, so
/// its owner, the operation, is the only one that can end it.)
#[async_trait::async_trait]
impl TransactionSession for Tx {
    /// Releases the savepoint (a PostgreSQL read-only one is rolled back to instead: it
    /// wrote nothing, and a `RELEASE` would leave the caller read-only), unless its
    /// transaction can no longer commit (see `Tx::why_not_commit`): then it rolls back and
    /// fails with the reason.
    async fn commit(self) -> Result<(), DbErr> {
        if let Some(err) = self.why_not_commit("tx.begin()").await {
            if let Err(rollback) = self.rollback().await {
                tracing::warn!(error = %crate::error::redact(&rollback.to_string()), "rollback failed");
            }
            return Err(err);
        }
        Tx::commit(self, "tx.begin()").await.map(drop)
    }

    async fn rollback(self) -> Result<(), DbErr> {
        Tx::rollback(self).await
    }
}
