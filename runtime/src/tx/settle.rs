//! What becomes of a connection whose link is dropped while its state is not idle
//! (`link.rs`'s table): rolled back on a task of its own, off the caller's path, within
//! [`SETTLE_GRACE`], after reading what it still owes within [`OWED_GRACE`]; closed when
//! that fails, and at once when nothing can settle it.

use std::time::Duration;

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use sea_orm::sqlx;

use super::link::{Conn, dispatch};
use crate::dialect;

/// How long a ROLLBACK run for a dropped transaction may take before its connection is
/// closed instead of reused.
pub(crate) const SETTLE_GRACE: Duration = Duration::from_secs(5);

/// How long the answer of a statement whose caller stopped waiting may take to come
/// before its connection is closed instead of reused: the next user of a pool's slot
/// would otherwise wait for it (seconds, or for ever). Closed, the connection leaves the
/// statement to the server, which PostgreSQL 14+ stops once it notices the client gone
/// (`client_connection_check_interval`).
pub(crate) const OWED_GRACE: Duration = Duration::from_millis(500);

/// Whether sqlx counts a transaction on `conn` (PostgreSQL: see [`Link::end_step`](super::link::Link::end_step)).
pub(super) fn counted(conn: &Conn) -> bool {
    #[cfg(feature = "postgres")]
    if let Conn::Postgres(c) = conn {
        return super::link::pg_counted(c);
    }
    let _ = conn;
    false
}

fn is_sqlite(conn: &Conn) -> bool {
    #[cfg(feature = "sqlite")]
    if let Conn::Sqlite(_) = conn {
        return true;
    }
    let _ = conn;
    false
}

/// Reads what a connection still owes (the answers of statements whose callers stopped
/// waiting), sending nothing: their errors are read past, the first returned.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
pub(super) async fn drain<C: sqlx::Connection>(
    conn: &mut C,
) -> Result<Option<sqlx::Error>, sqlx::Error> {
    let mut first = None;
    loop {
        match conn.flush().await {
            Ok(()) => return Ok(first),
            Err(err @ sqlx::Error::Database(_)) => {
                first.get_or_insert(err);
            }
            Err(other) => return Err(other),
        }
    }
}

/// Closes a connection at once, without the graceful goodbye (which over TLS waits for a
/// server that may never answer): the server ends the session and rolls back.
pub(super) fn close(conn: Conn) {
    dispatch!(conn, c => drop(c.detach()), t => drop(t));
}

/// A dropped transaction's ROLLBACK: through sqlx's transaction manager if sqlx counts
/// the transaction (PostgreSQL: see [`Link::end_step`](super::link::Link::end_step)), else as a plain statement.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
async fn rollback_on<C>(conn: &mut C) -> Result<(), sqlx::Error>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    type Manager<C> = <<C as sqlx::Connection>::Database as sqlx::Database>::TransactionManager;
    if <Manager<C> as sqlx_core::transaction::TransactionManager>::get_transaction_depth(conn) > 0 {
        return <Manager<C> as sqlx_core::transaction::TransactionManager>::rollback(conn).await;
    }
    sqlx::raw_sql(dialect::ROLLBACK)
        .execute(conn)
        .await
        .map(drop)
}

/// Rolls back a transaction its owner dropped, reading first what it still owes, and
/// gives the connection back; closes it if that fails or takes longer than
/// [`SETTLE_GRACE`].
pub(super) async fn settle(mut conn: Conn, owed: bool) {
    let sqlite = is_sqlite(&conn);
    #[cfg(feature = "mysql")]
    let mysql = matches!(conn, Conn::MySql(_));
    #[cfg(not(feature = "mysql"))]
    let mysql = false;
    if owed {
        let drained = tokio::time::timeout(OWED_GRACE, async {
            dispatch!(&mut conn, c => drain(&mut **c).await.is_ok(), _t => true)
        })
        .await;
        if drained != Ok(true) {
            tracing::debug!(
                "safe-db: a statement abandoned by its caller did not end within \
                 {OWED_GRACE:?}; its connection is closed"
            );
            close(conn);
            return;
        }
    }
    let rolled_back = tokio::time::timeout(SETTLE_GRACE, async {
        dispatch!(&mut conn,
            c => {
                let done = rollback_on(&mut **c).await;
                // SQLite's state is local: an error means no transaction was left. A MariaDB
                // session may still carry the transaction's statement bound.
                (done.is_ok() || sqlite)
                    && (!mysql
                        || sqlx::raw_sql(crate::dialect::RESET_BOUND)
                            .execute(&mut **c)
                            .await
                            .is_ok())
            },
            _t => true)
    })
    .await;
    if rolled_back != Ok(true) {
        tracing::warn!(
            "safe-db: a dropped transaction's connection could not be rolled back within \
             {SETTLE_GRACE:?}; it is closed"
        );
        close(conn);
    }
}
