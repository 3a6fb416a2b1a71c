//! The connection a transaction owns, and what it knows of its state.
//!
//! A `Tx` begun on an sqlx pool (every `DatabaseConnection` made by `Database::connect` or
//! `DbConfig`) takes one connection from it and sends every statement of its tree on it
//! itself: the BEGIN with its settings, the statements, savepoints, and the COMMIT or
//! ROLLBACK. It therefore knows, at every moment, whether the connection is idle, inside
//! the transaction, or owes an answer it has not read, and it never gives back to the pool
//! a connection whose state it does not know (diesel_async's broken-connection rule):
//!
//! | the link is dropped while | what happens |
//! |---|---|
//! | idle (committed or rolled back, answered) | the connection goes back to the pool |
//! | inside the transaction, or an answer owed | a task rolls back within [`SETTLE_GRACE`](super::settle::SETTLE_GRACE), then gives it back; if the ROLLBACK fails or does not answer in time, the connection is closed |
//! | untrusted (a step refused or unanswered) | the connection is closed at once |
//! | no tokio runtime to roll back on | the connection is closed at once |
//!
//! A transaction begun by hand (a `DatabaseTransaction` passed to an operation) or on a
//! SeaORM connection that is not an sqlx pool (mock, proxy) is run through SeaORM's own
//! `DatabaseTransaction` instead ([`Conn::SeaOrm`]): its connection is SeaORM's to manage.

use std::borrow::Cow;
use std::sync::Arc;

#[cfg(feature = "postgres")]
use sqlx_core::transaction::TransactionManager as Manager;

use super::settle::{close, counted, settle};
use crate::dialect;
use sea_orm::{
    ConnAcquireErr, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, RuntimeErr, Statement,
};

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use futures_util::FutureExt;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
use sea_orm::sqlx;

/// The connection under a transaction's tree.
pub(crate) enum Conn {
    #[cfg(feature = "postgres")]
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    #[cfg(feature = "mysql")]
    MySql(sqlx::pool::PoolConnection<sqlx::MySql>),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    /// A transaction SeaORM runs: begun by hand, or on a connection that is not an sqlx
    /// pool.
    SeaOrm(DatabaseTransaction),
}

/// An owned connection and what is known of its state.
pub(crate) struct Link {
    conn: Option<Conn>,
    backend: DbBackend,
    /// BEGIN has answered and no COMMIT or ROLLBACK has yet.
    open: bool,
    /// Something was sent whose answer has not been read (its caller stopped waiting).
    owed: bool,
    /// The connection's state cannot be settled by a ROLLBACK: it is closed when dropped.
    untrusted: bool,
    /// Statements are prepared under a name kept in the connection's statement cache;
    /// else as the unnamed statement (a PostgreSQL pool with the cache off: see
    /// [`statement_cache_on`](super::statements::statement_cache_on)).
    persistent: bool,
    /// A savepoint's RELEASE not yet sent, or sent and cut off (`tx/release.rs`).
    pub(super) released: super::release::Released,
}

/// Applies `$body` to the sqlx connection of whichever driver `$conn` holds (the code is
/// the same, the types differ), or `$sea` to a SeaORM transaction.
macro_rules! dispatch {
    ($conn:expr, $c:ident => $body:expr, $t:ident => $sea:expr) => {
        match $conn {
            #[cfg(feature = "postgres")]
            Conn::Postgres($c) => $body,
            #[cfg(feature = "mysql")]
            Conn::MySql($c) => $body,
            #[cfg(feature = "sqlite")]
            Conn::Sqlite($c) => $body,
            Conn::SeaOrm($t) => $sea,
        }
    };
}
pub(super) use dispatch;

/// A statement with its values bound, as SeaORM's drivers build it; `persistent`: prepared
/// under a name sqlx keeps in the connection's statement cache, else as the unnamed
/// statement (see [`Link::persistent`]).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn query<DB>(
    stmt: Statement,
    persistent: bool,
) -> sqlx::query::Query<'static, DB, sea_query_sqlx::SqlxValues>
where
    DB: sqlx::Database + sqlx::database::HasStatementCache,
    sea_query_sqlx::SqlxValues: sqlx::IntoArguments<DB>,
{
    // Moved, not copied: the SQL and its values are the caller's own (SeaORM hands each
    // statement over by value).
    let values = stmt
        .values
        .unwrap_or_else(|| sea_orm::sea_query::Values(Vec::new()));
    sqlx::query_with(
        sqlx::AssertSqlSafe(stmt.sql),
        sea_query_sqlx::SqlxValues(values),
    )
    .persistent(persistent)
}

/// What sqlx's `Executor::execute` does with a statement's answer (sqlx-core 0.9: its
/// `fetch_many`, rows skipped, results summed, the first error returned and the rest left
/// unread), read here from `fetch_many` itself: `execute` wraps that stream in two more
/// boxed layers of adapters and boxes the future, which was most of what a protocol step
/// cost the caller's thread on SQLite beside the driver's own work.
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
async fn executed<R: Default + Extend<R>, Row>(
    mut answers: futures_util::stream::BoxStream<'_, Result<sqlx::Either<R, Row>, sqlx::Error>>,
) -> Result<R, sqlx::Error> {
    use futures_util::StreamExt;
    let mut done = R::default();
    while let Some(answer) = answers.next().await {
        match answer? {
            sqlx::Either::Left(result) => done.extend(Some(result)),
            sqlx::Either::Right(_row) => {}
        }
    }
    Ok(done)
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn exec_err(err: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err)))
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn query_err(err: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(err)))
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn acquire_err(err: sqlx::Error) -> DbErr {
    match err {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(other))),
    }
}

/// Sends on `$link`: what an abandoned statement still owes is read first, then `$send`
/// runs on its connection (bound to `$conn`; the link gone, it fails). What is owed marks
/// the link until the answer is read: a future dropped while it is awaited leaves the
/// mark.
macro_rules! send {
    ($link:expr, $conn:ident => $send:expr) => {{
        debug_assert!(
            !$link.released.owed(),
            "sent before the RELEASE owed (tx/release.rs)"
        );
        if $link.owed {
            // Boxed: rare, and held inline it would add to the size of every send's future.
            // Its failure, if any, is moot here: the caller noted it first (`owed.rs`), or
            // rolls back past it.
            Box::pin($link.read_owed()).await?;
        }
        let $conn = $link.conn.as_mut().ok_or_else(crate::error::link_gone)?;
        let fut = async move { $send };
        $link.owed = true;
        let out = fut.await;
        $link.owed = false;
        out
    }};
}

/// One of safe-db's protocol statements on `conn` (see [`Link::step`]).
async fn step_on(conn: &mut Conn, sql: Cow<'static, str>) -> Result<(), DbErr> {
    match conn {
        #[cfg(feature = "sqlite")]
        Conn::Sqlite(c) => executed(sqlx::Executor::fetch_many(
            &mut **c,
            sqlx::query(sqlx::AssertSqlSafe(sql)),
        ))
        .await
        .map(drop)
        .map_err(exec_err),
        #[cfg(feature = "postgres")]
        Conn::Postgres(c) => executed(sqlx::Executor::fetch_many(
            &mut **c,
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)),
        ))
        .await
        .map(drop)
        .map_err(exec_err),
        #[cfg(feature = "mysql")]
        Conn::MySql(c) => executed(sqlx::Executor::fetch_many(
            &mut **c,
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)),
        ))
        .await
        .map(drop)
        .map_err(exec_err),
        Conn::SeaOrm(t) => sea_orm::ConnectionTrait::execute_unprepared(t, &sql)
            .await
            .map(drop),
    }
}

/// Whether sqlx counts a transaction on this PostgreSQL connection (a BEGIN sent through
/// its transaction manager, not yet ended there).
#[cfg(feature = "postgres")]
pub(super) fn pg_counted(conn: &sqlx::postgres::PgConnection) -> bool {
    <sqlx::postgres::PgTransactionManager as Manager>::get_transaction_depth(conn) > 0
}

impl Link {
    /// Takes a connection from `db`'s pool, or `None` when `db` is not an sqlx pool.
    ///
    /// Each driver's `acquire` future is boxed: held inline, the three of them made every
    /// BEGIN's future 18 KB in a release build, copied at each move (measured: half the
    /// instructions of a one-statement transaction).
    pub(crate) async fn acquire(db: &DatabaseConnection) -> Option<Result<Link, DbErr>> {
        use sea_orm::DatabaseConnectionType as Type;
        #[cfg(feature = "postgres")]
        let persistent = match &db.inner {
            Type::SqlxPostgresPoolConnection(_) => {
                super::statements::statement_cache_on(db.get_postgres_connection_pool())
            }
            _ => true,
        };
        #[cfg(not(feature = "postgres"))]
        let persistent = true;
        let conn = match &db.inner {
            #[cfg(feature = "postgres")]
            Type::SqlxPostgresPoolConnection(_) => db
                .get_postgres_connection_pool()
                .acquire()
                .boxed()
                .await
                .map(Conn::Postgres),
            #[cfg(feature = "mysql")]
            Type::SqlxMySqlPoolConnection(_) => db
                .get_mysql_connection_pool()
                .acquire()
                .boxed()
                .await
                .map(Conn::MySql),
            #[cfg(feature = "sqlite")]
            Type::SqlxSqlitePoolConnection(_) => db
                .get_sqlite_connection_pool()
                .acquire()
                .boxed()
                .await
                .map(Conn::Sqlite),
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
        return Some(
            conn.map(|conn| {
                let mut link = Link::new(conn, db.get_database_backend());
                link.persistent = persistent;
                link
            })
            .map_err(acquire_err),
        );
        #[cfg(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")))]
        {
            let _ = (conn, persistent);
            None
        }
    }

    /// A link on a transaction SeaORM runs (already open).
    pub(crate) fn sea_orm(txn: DatabaseTransaction) -> Link {
        use sea_orm::ConnectionTrait;
        let backend = txn.get_database_backend();
        let mut link = Link::new(Conn::SeaOrm(txn), backend);
        link.open = true;
        link
    }

    fn new(conn: Conn, backend: DbBackend) -> Link {
        Link {
            conn: Some(conn),
            backend,
            open: false,
            owed: false,
            untrusted: false,
            persistent: true,
            released: super::release::Released::None,
        }
    }

    pub(crate) fn backend(&self) -> DbBackend {
        self.backend
    }

    /// Whether SeaORM runs the transaction (it begins and ends it itself).
    pub(crate) fn is_sea_orm(&self) -> bool {
        matches!(self.conn, Some(Conn::SeaOrm(_)))
    }

    /// The transaction is open (its BEGIN answered), or over (its COMMIT or ROLLBACK did).
    pub(crate) fn set_open(&mut self, open: bool) {
        self.open = open;
    }

    /// From now on this connection is closed rather than reused: a step was refused or
    /// went unanswered, and nobody knows what state the server keeps for it.
    pub(crate) fn distrust(&mut self) {
        self.untrusted = true;
    }

    /// Whether the connection will be closed rather than reused.
    pub(crate) fn untrusted(&self) -> bool {
        self.untrusted
    }

    /// Whether an answer is still owed (a statement whose caller stopped waiting).
    pub(crate) fn owes(&self) -> bool {
        self.owed
    }

    /// Reads what an abandoned statement still owes, so that its answer (an error, maybe)
    /// is not taken for the next statement's. Returns the first error the server
    /// reported in it (the statement failed after its caller stopped waiting: what that
    /// means for the transaction is `owed.rs`'s business); fails if the connection does.
    pub(super) async fn read_owed(&mut self) -> Result<Option<DbErr>, DbErr> {
        if !self.owed {
            return Ok(None);
        }
        let mut failed = None;
        if let Some(conn) = self.conn.as_mut() {
            dispatch!(conn,
                c => failed = super::settle::drain(&mut **c).await.map_err(exec_err)?.map(exec_err),
                _t => {});
        }
        self.owed = false;
        Ok(failed)
    }

    /// Sends a prepared statement.
    pub(crate) async fn execute(&mut self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let persistent = self.persistent;
        send!(self, conn => {
            dispatch!(conn,
                c => executed(sqlx::Executor::fetch_many(&mut **c, query(stmt, persistent)))
                    .await
                    .map(Into::into)
                    .map_err(exec_err),
                t => sea_orm::ConnectionTrait::execute_raw(t, stmt).await)
        })
    }

    /// Sends SQL as it is, unprepared (several statements may go in one message).
    pub(crate) async fn execute_unprepared(&mut self, sql: &str) -> Result<ExecResult, DbErr> {
        send!(self, conn => {
            dispatch!(conn,
                c => executed(sqlx::Executor::fetch_many(
                        &mut **c,
                        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)),
                    ))
                    .await
                    .map(Into::into)
                    .map_err(exec_err),
                t => sea_orm::ConnectionTrait::execute_unprepared(t, sql).await)
        })
    }

    /// Sends one of safe-db's own protocol statements (`dialect.rs`): on a server as one
    /// simple message, its settings riding along; on SQLite as a statement prepared once
    /// and kept in the connection's cache. (BEGIN, COMMIT and the savepoints are a few
    /// fixed strings there: parsing each anew was a fifth of a one-statement transaction's
    /// instructions.) Taken by value: sqlx keeps a fixed string as it is and an owned one
    /// without a copy, where a borrowed one is copied into an allocation of its own.
    pub(crate) async fn step(&mut self, sql: Cow<'static, str>) -> Result<(), DbErr> {
        send!(self, conn => step_on(conn, sql).await)
    }

    /// Sends the outermost BEGIN (`sql`, with its settings). On PostgreSQL through sqlx's
    /// transaction manager, as sqlx's own `begin` does: the message is queued and its
    /// answer read without the row stream a statement takes, and sqlx counts the
    /// transaction until [`end_step`](Self::end_step) ends it.
    pub(crate) async fn begin_step(&mut self, sql: Cow<'static, str>) -> Result<(), DbErr> {
        send!(self, conn => match conn {
            // Boxed, as a statement's row stream is: held inline, it would take the
            // operation's boxed begin past the allocator's small-size caches.
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) => Box::pin(<sqlx::postgres::PgTransactionManager as Manager>::begin(
                &mut **c,
                Some(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql))),
            ))
            .await
            .map_err(exec_err),
            other => step_on(other, sql).await,
        })
    }

    /// Sends the outermost COMMIT (`commit`) or ROLLBACK. A PostgreSQL transaction that
    /// sqlx counts (begun by [`begin_step`](Self::begin_step)) ends through sqlx's
    /// transaction manager, which stops counting it once the server has answered: the pool
    /// never gets back a connection sqlx takes to be inside a transaction (its next
    /// `begin` would send a SAVEPOINT).
    pub(crate) async fn end_step(&mut self, commit: bool) -> Result<(), DbErr> {
        send!(self, conn => match conn {
            #[cfg(feature = "postgres")]
            Conn::Postgres(c) if pg_counted(c) => {
                type Pg = sqlx::postgres::PgTransactionManager;
                let ended = if commit {
                    <Pg as Manager>::commit(&mut **c).await
                } else {
                    <Pg as Manager>::rollback(&mut **c).await
                };
                ended.map_err(exec_err)
            }
            other => {
                let sql = if commit { dialect::COMMIT } else { dialect::ROLLBACK };
                step_on(other, sql.into()).await
            }
        })
    }

    /// Sends a query and reads its first row.
    pub(crate) async fn query_one(
        &mut self,
        stmt: Statement,
    ) -> Result<Option<QueryResult>, DbErr> {
        let persistent = self.persistent;
        send!(self, conn => {
            dispatch!(conn,
                c => match query(stmt, persistent).fetch_optional(&mut **c).await {
                    Ok(row) => Ok(row.map(Into::into)),
                    Err(err) => Err(query_err(err)),
                },
                t => sea_orm::ConnectionTrait::query_one_raw(t, stmt).await)
        })
    }

    /// Sends a query and reads all its rows.
    pub(crate) async fn query_all(&mut self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let persistent = self.persistent;
        send!(self, conn => {
            dispatch!(conn,
                c => match query(stmt, persistent).fetch_all(&mut **c).await {
                    Ok(rows) => Ok(rows.into_iter().map(Into::into).collect()),
                    Err(err) => Err(query_err(err)),
                },
                t => sea_orm::ConnectionTrait::query_all_raw(t, stmt).await)
        })
    }

    /// Ends a SeaORM-run transaction (`commit`: its COMMIT or RELEASE); the link is then
    /// empty.
    pub(crate) async fn end_sea_orm(&mut self, commit: bool) -> Result<(), DbErr> {
        match self.conn.take() {
            Some(Conn::SeaOrm(txn)) => {
                self.open = false;
                if commit {
                    txn.commit().await
                } else {
                    txn.rollback().await
                }
            }
            other => {
                self.conn = other;
                Ok(())
            }
        }
    }

    /// Gives the connection back now: to the pool when its state is known to be idle,
    /// otherwise as described in this module's documentation.
    pub(crate) fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if let Conn::SeaOrm(txn) = conn {
            // SeaORM queues its rollback if it is still open.
            drop(txn);
            return;
        }
        // (A transaction sqlx still counts is settled like an open one: the pool must not
        // get it back counted.)
        if !self.open && !self.owed && !self.untrusted && !counted(&conn) {
            drop(conn);
            return;
        }
        if self.untrusted {
            close(conn);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(settle(conn, self.owed));
            }
            Err(_) => close(conn),
        }
    }

    /// Streams a query's rows (feature `stream`) into `rows`, one at a time.
    #[cfg(feature = "stream")]
    pub(crate) async fn stream_into(
        &mut self,
        stmt: Statement,
        rows: tokio::sync::mpsc::Sender<Result<QueryResult, DbErr>>,
    ) {
        use futures_util::StreamExt;
        if let Err(err) = self.read_owed().await {
            let _ = rows.send(Err(err)).await;
            return;
        }
        debug_assert!(!self.released.owed(), "streamed before the RELEASE owed");
        let persistent = self.persistent;
        let Some(conn) = self.conn.as_mut() else {
            let _ = rows.send(Err(crate::error::link_gone())).await;
            return;
        };
        self.owed = true;
        dispatch!(conn,
        c => {
            let mut stream = query(stmt, persistent).fetch(&mut **c);
            while let Some(row) = stream.next().await {
                let row = row.map(Into::into).map_err(query_err);
                if rows.send(row).await.is_err() {
                    // The reader went away: what is left of the answer is owed.
                    return;
                }
            }
        },
        t => {
            match sea_orm::StreamTrait::stream_raw(t, stmt).await {
                Ok(mut stream) => {
                    while let Some(row) = stream.next().await {
                        if rows.send(row).await.is_err() {
                            return;
                        }
                    }
                }
                Err(err) => {
                    let _ = rows.send(Err(err)).await;
                }
            }
        });
        self.owed = false;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.release();
    }
}
