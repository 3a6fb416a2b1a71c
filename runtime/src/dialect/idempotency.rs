//! The SQL of idempotency keys (`safe_db::axum::Idempotency`): the table, and the
//! statements that claim a key, look at it, take over a stale claim, store the response in
//! the request's transaction, release a claim and sweep expired keys. Times are read from
//! the database's clock (milliseconds since 1970), so that servers of one service with
//! skewed clocks agree; every value is bound.

use sea_orm::{DbBackend, Statement, Value};

/// The table, created if absent.
pub(crate) fn create_table(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => {
            "CREATE TABLE IF NOT EXISTS safe_db_idempotency (\
             idem_key VARCHAR(255) NOT NULL PRIMARY KEY, \
             fingerprint VARCHAR(64) NOT NULL, \
             token VARCHAR(64) NOT NULL, \
             state SMALLINT NOT NULL, \
             locked_until BIGINT NOT NULL, \
             expires_at BIGINT NOT NULL, \
             status INTEGER NULL, \
             headers TEXT NULL, \
             body BYTEA NULL)"
        }
        // A binary collation: keys compare byte for byte, as on the other databases
        // (the default collation would make `Key-ABC` and `key-abc` one key).
        DbBackend::MySql => {
            "CREATE TABLE IF NOT EXISTS safe_db_idempotency (\
             idem_key VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL \
             PRIMARY KEY, \
             fingerprint VARCHAR(64) NOT NULL, \
             token VARCHAR(64) NOT NULL, \
             state SMALLINT NOT NULL, \
             locked_until BIGINT NOT NULL, \
             expires_at BIGINT NOT NULL, \
             status INTEGER NULL, \
             headers TEXT NULL, \
             body LONGBLOB NULL)"
        }
        _ => {
            "CREATE TABLE IF NOT EXISTS safe_db_idempotency (\
             idem_key TEXT NOT NULL PRIMARY KEY, \
             fingerprint TEXT NOT NULL, \
             token TEXT NOT NULL, \
             state INTEGER NOT NULL, \
             locked_until INTEGER NOT NULL, \
             expires_at INTEGER NOT NULL, \
             status INTEGER NULL, \
             headers TEXT NULL, \
             body BLOB NULL)"
        }
    }
}

/// The database's clock, in milliseconds since 1970.
fn now(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        DbBackend::MySql => "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        _ => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    }
}

/// The `n`th placeholder (from 1).
fn p(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

fn stmt<const N: usize>(backend: DbBackend, sql: String, values: [Value; N]) -> Statement {
    Statement::from_sql_and_values(backend, sql, values)
}

/// Claims `key` for a request: a unique violation means it is taken.
pub(crate) fn claim(
    backend: DbBackend,
    key: &str,
    fingerprint: &str,
    token: &str,
    lock_ms: i64,
    ttl_ms: i64,
) -> Statement {
    let now = now(backend);
    let sql = format!(
        "INSERT INTO safe_db_idempotency (idem_key, fingerprint, token, state, locked_until, \
         expires_at) VALUES ({}, {}, {}, 0, {now} + {}, {now} + {})",
        p(backend, 1),
        p(backend, 2),
        p(backend, 3),
        p(backend, 4),
        p(backend, 5),
    );
    stmt(
        backend,
        sql,
        [
            key.into(),
            fingerprint.into(),
            token.into(),
            lock_ms.into(),
            ttl_ms.into(),
        ],
    )
}

/// The key's row: fingerprint, token, state, whether its claim is stale (lock run out),
/// whether it expired, status, headers, body.
pub(crate) fn look(backend: DbBackend, key: &str) -> Statement {
    let now = now(backend);
    let sql = format!(
        "SELECT fingerprint, token, state, \
         CASE WHEN locked_until < {now} THEN 1 ELSE 0 END, \
         CASE WHEN expires_at < {now} THEN 1 ELSE 0 END, \
         status, headers, body FROM safe_db_idempotency WHERE idem_key = {}",
        p(backend, 1)
    );
    stmt(backend, sql, [key.into()])
}

/// Takes over `key` from the claim `old` (expired, or in flight with its lock run out): a
/// row changed means it is this request's now.
pub(crate) fn take_over(
    backend: DbBackend,
    key: &str,
    old: &str,
    fingerprint: &str,
    token: &str,
    lock_ms: i64,
    ttl_ms: i64,
) -> Statement {
    let now = now(backend);
    let sql = format!(
        "UPDATE safe_db_idempotency SET fingerprint = {}, token = {}, state = 0, \
         locked_until = {now} + {}, expires_at = {now} + {}, status = NULL, headers = NULL, \
         body = NULL WHERE idem_key = {} AND token = {} AND (expires_at < {now} OR \
         (state = 0 AND locked_until < {now}))",
        p(backend, 1),
        p(backend, 2),
        p(backend, 3),
        p(backend, 4),
        p(backend, 5),
        p(backend, 6),
    );
    stmt(
        backend,
        sql,
        [
            fingerprint.into(),
            token.into(),
            lock_ms.into(),
            ttl_ms.into(),
            key.into(),
            old.into(),
        ],
    )
}

/// Stores the response under this request's claim, in the request's transaction: one row
/// changed, or the claim was lost.
pub(crate) fn store(
    backend: DbBackend,
    key: &str,
    token: &str,
    status: u16,
    headers: &str,
    body: Vec<u8>,
) -> Statement {
    let sql = format!(
        "UPDATE safe_db_idempotency SET state = 1, status = {}, headers = {}, body = {} \
         WHERE idem_key = {} AND token = {} AND state = 0",
        p(backend, 1),
        p(backend, 2),
        p(backend, 3),
        p(backend, 4),
        p(backend, 5),
    );
    stmt(
        backend,
        sql,
        [
            i32::from(status).into(),
            headers.into(),
            body.into(),
            key.into(),
            token.into(),
        ],
    )
}

/// Releases this request's claim if no response was stored under it (the request's
/// transaction rolled back, or never stored one). Run after that transaction has written
/// the row, it waits for the transaction's end on the row's lock, then sees its outcome.
pub(crate) fn release(backend: DbBackend, key: &str, token: &str) -> Statement {
    let sql = format!(
        "DELETE FROM safe_db_idempotency WHERE idem_key = {} AND token = {} AND state = 0",
        p(backend, 1),
        p(backend, 2),
    );
    stmt(backend, sql, [key.into(), token.into()])
}

/// Deletes the keys that expired.
pub(crate) fn sweep(backend: DbBackend) -> Statement {
    let sql = format!(
        "DELETE FROM safe_db_idempotency WHERE expires_at < {}",
        now(backend)
    );
    Statement::from_string(backend, sql)
}
