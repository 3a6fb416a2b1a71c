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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
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
}

impl Options {
    /// The defaults: server isolation, read-write, no time limit, no retries.
    pub const fn new() -> Self {
        Options {
            isolation: None,
            read_only: false,
            timeout: None,
            retries: 0,
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
}
