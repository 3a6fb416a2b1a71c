//! What a caller may pass to an operation: something a transaction can begin on, the
//! [`Db`] handle among them. Each implementation picks one of the protocol's entry
//! points in `tx.rs`.

use std::future::Future;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use tokio::time::Instant;

use crate::{Options, Tx};

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Anything an operation can run its transaction on: a [`DatabaseConnection`] or a
/// [`Db`] (a new transaction begins and ends in the call), or an enclosing [`Tx`] or
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
    /// Begins a transaction with `options`' isolation and access mode, its statements
    /// bounded by `deadline`.
    #[doc(hidden)]
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send;

    /// Whether a transaction begun here is an outermost one, on a connection of its own
    /// taken from a pool.
    #[doc(hidden)]
    fn __from_pool(&self) -> bool {
        false
    }
}

impl sealed::Sealed for DatabaseConnection {}
impl Begin for DatabaseConnection {
    fn __from_pool(&self) -> bool {
        true
    }

    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        Tx::begin(self, options, deadline)
    }
}

/// A connected database: the primary pool, and a read replica's if one is configured.
///
/// Operations take `&db` like a `DatabaseConnection`; those marked `read_only` run on the
/// replica. It dereferences to the primary for plain SeaORM queries.
#[derive(Clone, Debug)]
pub struct Db {
    primary: DatabaseConnection,
    replica: Option<DatabaseConnection>,
}

impl Db {
    /// A handle over an existing primary pool, and an optional replica pool.
    pub fn new(primary: DatabaseConnection, replica: Option<DatabaseConnection>) -> Self {
        Db { primary, replica }
    }

    /// The primary pool.
    pub fn primary(&self) -> &DatabaseConnection {
        &self.primary
    }

    /// The replica pool, if any.
    pub fn replica(&self) -> Option<&DatabaseConnection> {
        self.replica.as_ref()
    }

    /// Closes both pools, waiting for their connections to be returned.
    pub async fn close(self) -> Result<(), DbErr> {
        if let Some(replica) = self.replica {
            replica.close().await?;
        }
        self.primary.close().await
    }
}

impl std::ops::Deref for Db {
    type Target = DatabaseConnection;

    fn deref(&self) -> &DatabaseConnection {
        &self.primary
    }
}

impl sealed::Sealed for Db {}
impl Begin for Db {
    fn __from_pool(&self) -> bool {
        true
    }

    /// `read_only` operations run on the replica, if there is one.
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        let conn = match (self.replica(), options.read_only) {
            (Some(replica), true) => replica,
            _ => self.primary(),
        };
        Tx::begin(conn, options, deadline)
    }
}

impl sealed::Sealed for Tx {}
impl Begin for Tx {
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        self.begin_nested(options, deadline)
    }
}

impl sealed::Sealed for DatabaseTransaction {}
impl Begin for DatabaseTransaction {
    /// A savepoint of a transaction that the caller ends by hand.
    fn __begin(
        &self,
        _: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        Tx::begin_in(self, deadline)
    }
}

impl<T: Begin + ?Sized> sealed::Sealed for &T {}
impl<T: Begin + ?Sized> Begin for &T {
    fn __from_pool(&self) -> bool {
        (**self).__from_pool()
    }

    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        (**self).__begin(options, deadline)
    }
}

impl<T: Begin + ?Sized + Send> sealed::Sealed for Arc<T> {}
impl<T: Begin + ?Sized + Send> Begin for Arc<T> {
    fn __from_pool(&self) -> bool {
        (**self).__from_pool()
    }

    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        (**self).__begin(options, deadline)
    }
}
