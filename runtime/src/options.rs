//! What an operation asks of its transaction: isolation, access mode, time limit, retries.

use std::time::Duration;

/// Transaction isolation level, as in SQL.
///
/// PostgreSQL and MySQL/MariaDB apply it with `SET TRANSACTION ISOLATION LEVEL`.
/// SQLite has no isolation levels: every SQLite transaction is serializable, so the
/// level is accepted and ignored there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// `READ UNCOMMITTED` (PostgreSQL treats it as `READ COMMITTED`).
    ReadUncommitted,
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`: conflicting transactions fail with a serialization failure
    /// (SQLSTATE 40001) and should be retried, see [`Options::retries`].
    Serializable,
}

impl Isolation {
    pub(crate) const fn to_sea_orm(self) -> sea_orm::IsolationLevel {
        match self {
            Isolation::ReadUncommitted => sea_orm::IsolationLevel::ReadUncommitted,
            Isolation::ReadCommitted => sea_orm::IsolationLevel::ReadCommitted,
            Isolation::RepeatableRead => sea_orm::IsolationLevel::RepeatableRead,
            Isolation::Serializable => sea_orm::IsolationLevel::Serializable,
        }
    }

    /// The name used by `#[safe_db_operation(isolation = "…")]`.
    pub const fn name(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "read_uncommitted",
            Isolation::ReadCommitted => "read_committed",
            Isolation::RepeatableRead => "repeatable_read",
            Isolation::Serializable => "serializable",
        }
    }
}

/// How an operation's transaction is run.
///
/// Built with `const` methods, so the attribute turns its arguments into a constant
/// and nothing is parsed at run time:
///
/// ```
/// use std::time::Duration;
/// use safe_db::{Isolation, Options};
///
/// const TRANSFER: Options = Options::new()
///     .isolation(Isolation::Serializable)
///     .timeout(Duration::from_secs(2))
///     .retries(5);
/// assert_eq!(TRANSFER.retries, 5);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Options {
    /// Isolation level of the outermost transaction; `None` keeps the server's default.
    /// A nested operation runs in its caller's transaction and cannot change it.
    pub isolation: Option<Isolation>,
    /// Start the transaction `READ ONLY` (PostgreSQL, MySQL). On SQLite the transaction
    /// begins `DEFERRED` instead of `IMMEDIATE`, taking no write lock up front.
    pub read_only: bool,
    /// Bound on the whole operation, every attempt and back-off included. On expiry the
    /// body is dropped, the transaction rolls back and a timeout error is returned.
    pub timeout: Option<Duration>,
    /// How many times the whole operation is re-run after a serialization failure,
    /// deadlock or SQLite busy error. Only the outermost operation retries.
    pub retries: u32,
    /// Always run in a transaction of its own, on a connection of its own from the same
    /// pool, committed or rolled back independently of any caller, even when called with
    /// a caller's `&Tx` (Spring's `REQUIRES_NEW`). See [`Options::requires_new`].
    pub requires_new: bool,
    /// When called with a caller's transaction, run in a `SAVEPOINT` of its own (`true`,
    /// the default), or join the caller's transaction without one (`false`, Django's
    /// `savepoint=False`). See [`Options::savepoint`].
    pub savepoint: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// The defaults: server isolation, read-write, no time limit, no retries.
    pub const fn new() -> Self {
        Options {
            isolation: None,
            read_only: false,
            timeout: None,
            retries: 0,
            requires_new: false,
            savepoint: true,
        }
    }

    /// Sets the isolation level.
    pub const fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = Some(isolation);
        self
    }

    /// Makes the transaction read-only.
    pub const fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Bounds the whole operation in time.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Re-runs the operation up to `retries` more times on a retryable failure.
    pub const fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Runs in a transaction of its own, on a second connection from the pool of the
    /// handle it is called with (a caller's `&Tx` included), committed before it returns
    /// whatever the caller does afterwards: audit rows and outbox messages that must
    /// survive the caller's rollback. Its `on_commit` callbacks run after its own commit.
    ///
    /// The caller keeps its connection meanwhile: the pool needs one more, and on a pool
    /// with none left the operation fails with [`ErrorKind::PoolExhausted`](crate::ErrorKind)
    /// after the pool's acquire timeout, never waits for ever. Rows the caller has locked
    /// stay locked until the caller ends: writing them here waits for the caller, which
    /// waits for this (bound it with `timeout`). On SQLite, which has one writer at a time,
    /// it can write only while its caller holds no lock: inside a `read_only` caller that
    /// has not read yet (otherwise it waits for its caller, up to the busy timeout).
    /// It cannot be called inside a transaction begun by hand (a `&DatabaseTransaction`,
    /// whose pool safe-db does not know).
    pub const fn requires_new(mut self) -> Self {
        self.requires_new = true;
        self
    }

    /// `false`: called with a caller's transaction, the operation joins it without a
    /// `SAVEPOINT` of its own (two round trips fewer). Then a failure (an `Err`, a panic,
    /// or the operation's future dropped) cannot be rolled back on its own: the caller's
    /// transaction can no longer commit, and its statements are refused, even if the
    /// caller handles the error. Called with a connection it runs as usual.
    ///
    /// In the closure form, the operation still takes a savepoint when it must make the
    /// caller's transaction read-only or bound its own statements in time (`read_only`,
    /// `timeout`), and then a failure rolls back only its own work; `isolation` and
    /// `retries` apply only when it begins a transaction of its own, as for any nested
    /// operation. The attribute rejects those combinations instead. Called with a
    /// `DatabaseTransaction` begun by hand, it takes a savepoint.
    pub const fn savepoint(mut self, savepoint: bool) -> Self {
        self.savepoint = savepoint;
        self
    }
}
