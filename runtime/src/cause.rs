//! The conditions safe-db raises itself, typed: a caller matches on [`Cause`] (through
//! [`Error::cause`](crate::Error::cause) or [`Cause::of`]), never on a message. Each
//! travels inside a `DbErr` as the database error of an sqlx error (the one shape a
//! `DbErr` carries a typed value in), with a SQLSTATE naming it for code that only reads
//! those; [`ErrorKind`] is derived from the cause.

use std::fmt;
use std::time::Duration;

use sea_orm::{DbErr, RuntimeErr};

use crate::ErrorKind;

/// What safe-db refused, or found, on its own account.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A step of the protocol (a savepoint's SAVEPOINT, RELEASE or ROLLBACK TO) was cut off
    /// or failed, or the server ended the transaction itself: no further statement runs in
    /// it and nothing is committed.
    TreeBroken,
    /// An operation that joined this transaction without a savepoint (`savepoint = false`)
    /// failed: this level runs nothing more and rolls back.
    Doomed {
        /// The operation that failed.
        operation: &'static str,
    },
    /// The body returned `Ok` after its transaction lost a conflict it swallowed.
    ConflictSwallowed {
        /// The operation.
        operation: &'static str,
    },
    /// The body returned `Ok` after a statement failed on PostgreSQL, which aborts the
    /// transaction: a COMMIT would silently roll back.
    FailedStatementSwallowed {
        /// The operation.
        operation: &'static str,
    },
    /// The body returned `Ok` after a statement it had stopped waiting for (a `timeout`
    /// or `select!` around it) failed on PostgreSQL, which aborts the transaction: a
    /// COMMIT would silently roll back.
    AbandonedStatementFailed {
        /// The operation.
        operation: &'static str,
    },
    /// A statement was refused before it was sent.
    Refused {
        /// The statement's keyword (`COMMIT`, `CREATE TABLE`, …).
        keyword: String,
        /// Why.
        reason: Refusal,
    },
    /// A write in a `read_only` savepoint on MySQL/MariaDB (which cannot make one
    /// read-only), refused before it was sent.
    ReadOnly {
        /// The statement's keyword.
        keyword: String,
    },
    /// The COMMIT was sent and its outcome is unknown: its answer was lost with the
    /// connection, did not come in time, or the server reported an error during it.
    CommitUnknown,
    /// The operation's `timeout` ran out.
    TimedOut {
        /// The operation.
        operation: &'static str,
        /// Its timeout.
        limit: Duration,
    },
    /// The server did not answer a step of the protocol in time; its connection is closed.
    StepUnanswered {
        /// `BEGIN`, `SAVEPOINT`, `RELEASE`, `ROLLBACK`, …
        step: &'static str,
        /// The bound it had.
        limit: Duration,
    },
    /// The transaction's connection had already been given back or closed.
    ConnectionGone,
    /// A `requires_new` operation inside a transaction begun by hand, whose pool safe-db
    /// does not know.
    PoolUnknown,
    /// A database node (of a `Db` with failover, or a read replica) could not be reached
    /// or did not answer in time.
    NodeUnreachable {
        /// Which node (0 is the primary).
        node: usize,
        /// What was seen.
        detail: String,
    },
    /// A Galera node that is not `Synced` with `wsrep_ready = ON`.
    NodeUnfit {
        /// Which node.
        node: usize,
        /// `wsrep_ready`.
        ready: String,
        /// `wsrep_local_state` (4 when `Synced`).
        state: String,
    },
    /// A PostgreSQL node of a `Db` with failover that is a standby (in recovery): it takes
    /// no writes until it is promoted.
    NodeStandby {
        /// Which node.
        node: usize,
    },
    /// A PostgreSQL node of a `Db` with failover that is a primary on an older timeline
    /// than another node was seen on: a former primary back after a failover (split
    /// brain). It is not used.
    NodeBehind {
        /// Which node.
        node: usize,
        /// Its timeline.
        timeline: u32,
        /// The newest timeline seen on a primary.
        newest: u32,
    },
    /// A node of a `Db` with failover whose pool had no free connection in time: skipped,
    /// not left aside.
    NodeBusy {
        /// Which node.
        node: usize,
        /// How long the operation waited for one of its connections.
        waited: Duration,
    },
    /// The request whose transaction this is has ended (`safe_db::axum`).
    RequestEnded,
    /// An operation on a test's `Db` began inside another one that holds the test
    /// transaction's turn, in the same task (`safe_db::testing`).
    TestTurnWaited,
    /// An `Idempotency-Key` changed hands three times while a request tried to claim it
    /// (`safe_db::axum::Idempotency`): contention; retry the request.
    IdempotencyKeyContended,
    /// A `TestTx` could not begin: the pool had no connection left while another
    /// `TestTx` was alive on this thread (a self-deadlock when that one holds the last).
    TestSelfDeadlock {
        /// `TestTx`s alive on this thread.
        alive: u32,
    },
    /// `TestTx::rollback` while a handle from `TestTx::db()` is still alive.
    TestHeld {
        /// Where `TestTx::db()` was called (`file:line`).
        taken_at: Vec<String>,
    },
    /// A message's payload could not be serialized to JSON (`safe_db::outbox`, feature
    /// `outbox`); nothing was recorded.
    Unserializable {
        /// The message's topic.
        topic: String,
        /// What serde said.
        detail: String,
    },
}

/// Why a statement was refused.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It would end the transaction, which the operation ends itself (`COMMIT`, `ROLLBACK`,
    /// `BEGIN`, …).
    EndsTransaction,
    /// It manages a savepoint, which a nested operation does (`SAVEPOINT`, `RELEASE`,
    /// `ROLLBACK TO`).
    ManagesSavepoint,
    /// MySQL/MariaDB would commit implicitly before it (DDL, `LOCK TABLES`, …).
    ImplicitCommit,
    /// MySQL/MariaDB could commit implicitly in SQL safe-db cannot read before it runs
    /// (`PREPARE`, `EXECUTE`, compound statements).
    Unreadable,
}

impl Refusal {
    fn why(self) -> &'static str {
        match self {
            Refusal::EndsTransaction => "the operation ends its transaction itself",
            Refusal::ManagesSavepoint => {
                "call another operation with `tx` instead, which manages its savepoint"
            }
            Refusal::ImplicitCommit => {
                "MySQL and MariaDB commit the transaction implicitly before it, so a later \
                 rollback could not undo the work before it; run it outside the operation, \
                 on the connection"
            }
            Refusal::Unreadable => {
                "MySQL and MariaDB could commit the transaction implicitly in SQL that safe-db \
                 cannot read before it runs"
            }
        }
    }
}

impl Cause {
    /// The kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Cause::ReadOnly { .. } => ErrorKind::ReadOnly,
            Cause::Unserializable { .. } => ErrorKind::Validation,
            Cause::CommitUnknown => ErrorKind::CommitUnknown,
            Cause::TimedOut { .. } | Cause::StepUnanswered { .. } => ErrorKind::Timeout,
            Cause::ConnectionGone
            | Cause::NodeUnreachable { .. }
            | Cause::NodeUnfit { .. }
            | Cause::NodeStandby { .. }
            | Cause::NodeBehind { .. }
            | Cause::TestTurnWaited => ErrorKind::Unavailable,
            Cause::IdempotencyKeyContended => ErrorKind::SerializationFailure,
            Cause::TestSelfDeadlock { .. } | Cause::NodeBusy { .. } => ErrorKind::PoolExhausted,
            Cause::TreeBroken
            | Cause::Doomed { .. }
            | Cause::ConflictSwallowed { .. }
            | Cause::FailedStatementSwallowed { .. }
            | Cause::AbandonedStatementFailed { .. }
            | Cause::Refused { .. }
            | Cause::PoolUnknown
            | Cause::TestHeld { .. }
            | Cause::RequestEnded => ErrorKind::Database,
        }
    }

    /// The SQLSTATE it is reported with.
    fn sqlstate(&self) -> &'static str {
        match self {
            Cause::ReadOnly { .. } => "25006", // read_only_sql_transaction
            Cause::Unserializable { .. } => "22023", // invalid_parameter_value
            Cause::CommitUnknown => "08007",   // transaction_resolution_unknown
            Cause::TimedOut { .. } | Cause::StepUnanswered { .. } => "57014", // query_canceled
            Cause::ConnectionGone
            | Cause::NodeUnreachable { .. }
            | Cause::NodeUnfit { .. }
            | Cause::NodeStandby { .. }
            | Cause::NodeBehind { .. }
            | Cause::TestTurnWaited => "08006", // connection_failure
            Cause::TreeBroken
            | Cause::Doomed { .. }
            | Cause::ConflictSwallowed { .. }
            | Cause::FailedStatementSwallowed { .. }
            | Cause::AbandonedStatementFailed { .. } => "25P02", // in_failed_sql_transaction
            Cause::Refused { .. } => "25001",  // active_sql_transaction
            Cause::PoolUnknown | Cause::RequestEnded | Cause::TestHeld { .. } => "25000", // invalid_transaction_state
            Cause::TestSelfDeadlock { .. } | Cause::NodeBusy { .. } => "53300", // too_many_connections
            Cause::IdempotencyKeyContended => "40001", // serialization_failure
        }
    }

    /// The cause inside `err`, if safe-db raised it.
    pub fn of(err: &DbErr) -> Option<&Cause> {
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        if let DbErr::Conn(RuntimeErr::SqlxError(sqlx))
        | DbErr::Exec(RuntimeErr::SqlxError(sqlx))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx)) = err
            && let sea_orm::sqlx::Error::Database(db) = &**sqlx
        {
            return db.try_downcast_ref::<Raised>().map(|raised| &raised.cause);
        }
        let _ = err;
        None
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("safe-db: ")?;
        match self {
            Cause::TreeBroken => f.write_str(
                "a nested operation was cancelled or failed while it began or ended its \
                 savepoint, or the server ended the transaction, which leaves it in an \
                 unknown state; no further statement runs in it and nothing is committed",
            ),
            Cause::Doomed { operation } => write!(
                f,
                "operation `{operation}` failed inside this transaction without a savepoint \
                 of its own (`savepoint = false`), so its work cannot be undone alone: no \
                 further statement runs in this transaction and it rolls back; nothing is \
                 committed"
            ),
            Cause::ConflictSwallowed { operation } => write!(
                f,
                "operation `{operation}` returned Ok after its transaction lost a conflict; \
                 nothing was committed"
            ),
            Cause::FailedStatementSwallowed { operation } => write!(
                f,
                "operation `{operation}` returned Ok after a statement in its transaction \
                 failed, and PostgreSQL aborts a transaction on any error; nothing was \
                 committed (run the statement that may fail in a nested operation)"
            ),
            Cause::AbandonedStatementFailed { operation } => write!(
                f,
                "operation `{operation}` returned Ok after a statement it had stopped waiting \
                 for failed on the server, and PostgreSQL aborts a transaction on any error; \
                 nothing was committed (await the statement, or return the error of the \
                 timeout around it)"
            ),
            Cause::Refused { keyword, reason } => write!(
                f,
                "`{keyword}` is refused inside a safe-db operation: {} (nothing was sent)",
                reason.why()
            ),
            Cause::ReadOnly { keyword } => write!(
                f,
                "`{keyword}` refused: a read_only operation must not write, and it runs in a \
                 savepoint of a transaction that may (nothing was sent)"
            ),
            Cause::CommitUnknown => f.write_str(
                "the COMMIT was sent and its outcome is unknown (its answer was lost, late, or \
                 an error during it): it may have committed; it is not re-run",
            ),
            Cause::TimedOut { operation, limit } => write!(
                f,
                "operation `{operation}` did not complete within its timeout of {limit:?}; \
                 nothing was committed"
            ),
            Cause::StepUnanswered { step, limit } => write!(
                f,
                "the server did not answer the {step} within {limit:?}; the connection is \
                 closed, never reused"
            ),
            Cause::ConnectionGone => {
                f.write_str("the transaction's connection has already been given back or closed")
            }
            Cause::PoolUnknown => f.write_str(
                "a `requires_new` operation was called inside a transaction begun by hand (a \
                 `DatabaseTransaction`), whose pool safe-db does not know; call it with the \
                 connection instead",
            ),
            Cause::NodeUnreachable { node, detail } => {
                write!(f, "database node {node} cannot be used: {detail}")
            }
            Cause::NodeUnfit { node, ready, state } => write!(
                f,
                "database node {node} is not fit to serve (wsrep_ready = {ready}, \
                 wsrep_local_state = {state}; Synced is 4)"
            ),
            Cause::NodeBehind {
                node,
                timeline,
                newest,
            } => write!(
                f,
                "database node {node} is a primary on timeline {timeline}, but timeline \
                 {newest} was seen on another: a former primary back after a failover (split \
                 brain); it is not used"
            ),
            Cause::NodeBusy { node, waited } => write!(
                f,
                "database node {node}'s pool had no free connection within {waited:?}"
            ),
            Cause::NodeStandby { node } => write!(
                f,
                "database node {node} is a standby (in recovery): it takes writes only once \
                 it is promoted"
            ),
            Cause::RequestEnded => f.write_str(
                "the request's transaction was used after its request ended (a RequestTx \
                 kept in a spawned task?); it has been ended, and no statement runs in it",
            ),
            Cause::TestTurnWaited => f.write_str(
                "an operation on `TestTx::db()` waited 5 s for another operation of the \
                 test's transaction to end; operations on it take turns in one transaction, \
                 so one begun from inside another (where production takes a second connection \
                 from the pool) cannot run: pass that operation the caller's `tx`",
            ),
            Cause::IdempotencyKeyContended => f.write_str(
                "an Idempotency-Key changed hands three times while this request tried to \
                 claim it (requests with one key racing): retry the request",
            ),
            Cause::TestSelfDeadlock { alive } => write!(
                f,
                "a `TestTx` could not begin: the pool has no connection left, and {alive} \
                 other `TestTx` alive on this thread holds one. If it holds the last, this \
                 test waits for itself (a self-deadlock, not an outage): run the code in the \
                 first `TestTx` (pass `&test`, or `test.db()` for code that keeps a `Db`), or \
                 give the pool more connections"
            ),
            Cause::TestHeld { taken_at } => write!(
                f,
                "`TestTx::rollback` while a handle from `TestTx::db()` is alive (a router or \
                 service keeping it?); `test.db()` was called at {}: drop that handle (and its \
                 clones) first. The transaction rolls back when the last one is dropped",
                taken_at.join(", ")
            ),
            Cause::Unserializable { topic, detail } => write!(
                f,
                "the payload of an outbox message on topic `{topic}` cannot be serialized to \
                 JSON ({detail}); nothing was recorded"
            ),
        }
    }
}

/// A cause as the database error of an sqlx error.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
#[derive(Debug)]
struct Raised {
    cause: Cause,
    message: String,
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl std::error::Error for Raised {}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
impl sea_orm::sqlx::error::DatabaseError for Raised {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.cause.sqlstate().into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sea_orm::sqlx::error::ErrorKind {
        sea_orm::sqlx::error::ErrorKind::Other
    }
}

/// `cause` as a `DbErr`: a connection error for the causes of kind `Unavailable` (as
/// SeaORM reports a lost connection), a statement's error otherwise. `detail` is appended
/// to the message (already redacted by the caller, if it holds a server's words).
pub(crate) fn raise_with(cause: Cause, detail: Option<&str>) -> DbErr {
    let mut message = cause.to_string();
    if let Some(detail) = detail {
        message.push_str(": ");
        message.push_str(detail);
    }
    let connection = cause.kind() == ErrorKind::Unavailable;
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    {
        let sqlx = std::sync::Arc::new(sea_orm::sqlx::Error::Database(Box::new(Raised {
            cause,
            message,
        })));
        if connection {
            DbErr::Conn(RuntimeErr::SqlxError(sqlx))
        } else {
            DbErr::Exec(RuntimeErr::SqlxError(sqlx))
        }
    }
}

/// `cause` as a `DbErr`.
pub(crate) fn raise(cause: Cause) -> DbErr {
    raise_with(cause, None)
}
