//! What a caller may pass to an operation: something a transaction can begin on (the
//! [`Db`](crate::Db) handle's own implementation is beside it, in `db.rs`). Each
//! implementation picks one of the protocol's entry points in `tx/`. The narrower traits
//! [`Connection`], [`InTransaction`] and [`Managed`] are how the compiler checks an
//! operation's propagation (`durable`, `mandatory`, `requires_new` / `savepoint = false`)
//! at its call sites.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::Either;
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use tokio::time::Instant;

use crate::{Options, Tx};

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// Anything an operation can run its transaction on: a [`DatabaseConnection`] or a
/// [`Db`](crate::Db) (a new transaction begins and ends in the call), or an enclosing [`Tx`] or
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
    /// bounded by `deadline`: nested in this one if it is a transaction, unless
    /// `options.requires_new` asks for one of its own on the same pool.
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

    /// The transaction an operation with `savepoint = false` joins, if this is one.
    #[doc(hidden)]
    fn __join(&self) -> impl Future<Output = Result<Option<&Tx>, DbErr>> + Send {
        std::future::ready(Ok(None))
    }

    /// The span that the span of an operation called with this is a child of, when it is
    /// not the current one (a web request's, while its handler is being polled).
    #[doc(hidden)]
    fn __span_parent(&self) -> Option<tracing::Id> {
        None
    }
}

/// A connection, on which an operation begins an outermost transaction of its own:
/// a [`DatabaseConnection`] or a [`Db`](crate::Db). An operation marked `durable` takes only these,
/// so that its `Ok` means committed; a function of yours can ask for one the same way
/// (`db: &impl safe_db::Connection`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a transaction, and this operation must begin its own: it is `durable`",
    label = "pass a connection here (`&db`), not a transaction",
    note = "a `durable` operation is always the outermost one, so that its `Ok` means the data is committed; \
            inside a transaction it would only be a savepoint that the caller could still roll back.\n\
            call it after the caller's transaction has ended, or remove `durable` from it;\n\
            in a test, pass `test.db()` instead of `&test` (a `safe_db::testing::TestTx`): it runs there in a savepoint of the test"
)]
pub trait Connection: Begin {}

/// A transaction an operation runs inside: a caller's [`Tx`], the request's
/// [`RequestTx`](crate::axum::RequestTx), or a [`DatabaseTransaction`] begun by hand. An
/// operation marked `mandatory` takes only these; a function of yours can ask for one
/// the same way (`tx: &impl safe_db::InTransaction`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a transaction, and this operation runs only inside one: it is `mandatory`",
    label = "pass the caller's transaction here (`tx`), not a connection",
    note = "a `mandatory` operation never begins a transaction of its own: it is a step of a larger one.\n\
            call it from an operation's body, with that operation's `tx`"
)]
pub trait InTransaction: Begin {}

/// A connection, or a transaction that safe-db manages: everything but a
/// [`DatabaseTransaction`] begun by hand, whose pool and end safe-db cannot see. An
/// operation marked `requires_new` or `savepoint = false` takes only these.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a transaction begun by hand, which a `requires_new` or `savepoint = false` operation cannot be called with",
    label = "pass a connection (`&db`) or a safe-db transaction (`tx: &Tx`) here",
    note = "safe-db does not know the pool of a `DatabaseTransaction` begun by hand (which `requires_new` \
            takes a second connection from), nor sees it commit (which `savepoint = false` must stop)"
)]
pub trait Managed: Begin {}

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
        Tx::begin(self, None, options, deadline)
    }
}
impl Connection for DatabaseConnection {}
impl Managed for DatabaseConnection {}
impl sealed::Sealed for Tx {}
impl Begin for Tx {
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        if options.requires_new {
            // Boxed: it holds a whole outermost BEGIN, rarely needed.
            Either::Left(Box::pin(self.begin_new(options, deadline)))
        } else {
            Either::Right(self.begin_nested(options, deadline))
        }
    }

    fn __join(&self) -> impl Future<Output = Result<Option<&Tx>, DbErr>> + Send {
        std::future::ready(Ok(Some(self)))
    }
}
impl InTransaction for Tx {}
impl Managed for Tx {}

impl sealed::Sealed for DatabaseTransaction {}
impl Begin for DatabaseTransaction {
    /// A savepoint of a transaction that the caller ends by hand (`requires_new` cannot
    /// be: its pool is not known).
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        if options.requires_new {
            Either::Left(std::future::ready(Err(crate::tx::pool_unknown())))
        } else {
            Either::Right(Tx::begin_in(self, deadline))
        }
    }
}
impl InTransaction for DatabaseTransaction {}

impl<T: Begin + ?Sized> sealed::Sealed for &T {}
impl<T: Begin + ?Sized> Begin for &T {
    fn __from_pool(&self) -> bool {
        (**self).__from_pool()
    }

    fn __span_parent(&self) -> Option<tracing::Id> {
        (**self).__span_parent()
    }

    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        (**self).__begin(options, deadline)
    }

    fn __join(&self) -> impl Future<Output = Result<Option<&Tx>, DbErr>> + Send {
        (**self).__join()
    }
}
impl<T: Connection + ?Sized> Connection for &T {}
impl<T: InTransaction + ?Sized> InTransaction for &T {}
impl<T: Managed + ?Sized> Managed for &T {}

impl<T: Begin + ?Sized + Send> sealed::Sealed for Arc<T> {}
impl<T: Begin + ?Sized + Send> Begin for Arc<T> {
    fn __from_pool(&self) -> bool {
        (**self).__from_pool()
    }

    fn __span_parent(&self) -> Option<tracing::Id> {
        (**self).__span_parent()
    }

    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        (**self).__begin(options, deadline)
    }

    fn __join(&self) -> impl Future<Output = Result<Option<&Tx>, DbErr>> + Send {
        (**self).__join()
    }
}
impl<T: Connection + ?Sized + Send> Connection for Arc<T> {}
impl<T: InTransaction + ?Sized + Send> InTransaction for Arc<T> {}
impl<T: Managed + ?Sized + Send> Managed for Arc<T> {}
