//! What safe-db asks of a connection pool: a connection given back in a state nobody
//! knows (a statement its caller abandoned still running, answers still owed) is closed
//! instead of reused.

use sea_orm::ConnectOptions;

/// How long a connection given back to the pool may take to finish what its last user
/// left on it before it is closed instead of reused.
#[cfg(any(feature = "mysql", feature = "postgres"))]
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Makes the pool close a connection, instead of reusing it, when what its last user left
/// on it does not finish within 500 ms (PostgreSQL and MySQL/MariaDB).
/// [`DbConfig`](crate::DbConfig) does this for its pools; call it on `ConnectOptions` you
/// build yourself.
///
/// A caller that drops an operation while a statement runs (a `tokio::time::timeout`, a
/// `select!`, a client going away) leaves that statement running. sqlx checks a connection
/// given back to the pool by reading what is still owed to it, with no time limit: the
/// next user of the pool's slot waited for the abandoned statement (seconds, or for ever
/// if sqlx's count of owed answers was thrown off by the cut). With this guard the slot is
/// free again within 500 ms, and a new connection is opened for the next user. Not over
/// TLS: closing a TLS connection, sqlx 0.9 (rustls) waits for the server's next message,
/// which comes only when the abandoned statement ends.
///
/// The server is not told to stop the abandoned statement: it runs on, holding its locks,
/// until it ends or the server notices that its client is gone. PostgreSQL 14+ notices
/// within `client_connection_check_interval` (off by default: set it for the role or in
/// `postgresql.conf`, e.g. `1s`); MariaDB does not notice while the statement runs. A
/// `timeout` on the operation has the server stop it instead (see `docs/guarantees.md`).
///
/// It costs nothing when nothing is owed. It is set through `map_sqlx_postgres_pool_opts`
/// / `map_sqlx_mysql_pool_opts`, of which SeaORM keeps one per driver: it replaces one set
/// before, and one set after replaces it.
pub fn guard_pool_release(options: &mut ConnectOptions) -> &mut ConnectOptions {
    #[cfg(feature = "mysql")]
    options.map_sqlx_mysql_pool_opts(|pool| pool.after_release(|conn, _| Box::pin(settled(conn))));
    #[cfg(feature = "postgres")]
    options
        .map_sqlx_postgres_pool_opts(|pool| pool.after_release(|conn, _| Box::pin(settled(conn))));
    options
}

/// Whether `conn` finished what it owed within [`RELEASE_GRACE`]. Still busy, it is
/// closed gracefully (`Ok(false)`): a hard close of a TLS connection waits for the server's
/// next message, which an idle server never sends. A connection that fails otherwise than
/// with a database error is broken, and closed hard (`Err`).
#[cfg(any(feature = "mysql", feature = "postgres"))]
async fn settled<C: sea_orm::sqlx::Connection>(conn: &mut C) -> Result<bool, sea_orm::sqlx::Error> {
    let settle = async {
        loop {
            // `flush` reads what is owed and sends nothing when nothing is (sqlx's own
            // check on release follows it).
            match conn.flush().await {
                Ok(()) => return Ok(true),
                // The answer of a statement its caller abandoned (stopped by the server at
                // its deadline, or failed): read; what follows it is read next.
                Err(sea_orm::sqlx::Error::Database(_)) => continue,
                Err(other) => return Err(other),
            }
        }
    };
    match tokio::time::timeout(RELEASE_GRACE, settle).await {
        Ok(settled) => settled,
        Err(_) => Ok(false),
    }
}
