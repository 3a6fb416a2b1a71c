//! Every SQL string safe-db writes itself, per database (the outbox's, the idempotency
//! keys' and the testing kit's in rooms of their own here): the BEGIN with its settings, the
//! savepoints, the COMMIT and ROLLBACK, the server-side statement bounds, and the one
//! question it asks MySQL/MariaDB. (What safe-db *reads* of the caller's SQL, to refuse a
//! statement, is `sql/`'s business; safe-db never rewrites the caller's SQL.)
//!
//! Settings go in the message of the step they belong to, so that they cost no round
//! trip of their own: PostgreSQL takes `BEGIN ISOLATION LEVEL … READ ONLY;
//! SET LOCAL statement_timeout = …` as one simple query, MariaDB
//! `SET TRANSACTION ISOLATION LEVEL …; SET … max_statement_time = …; START TRANSACTION
//! READ ONLY` as one multi-statement query.

#[cfg(feature = "axum")]
pub(crate) mod idempotency;
#[cfg(feature = "outbox")]
pub(crate) mod outbox;
#[cfg(feature = "testing")]
pub(crate) mod testing;

use std::borrow::Cow;
use std::fmt::Write;
use std::time::Duration;

use sea_orm::DbBackend;

use crate::Isolation;

/// What an outermost BEGIN asks for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Begin {
    pub(crate) isolation: Option<Isolation>,
    pub(crate) read_only: bool,
    /// The statements' server-side bound: what is left until the deadline.
    pub(crate) bound: Option<Duration>,
}

fn isolation_sql(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::ReadUncommitted => "READ UNCOMMITTED",
        Isolation::ReadCommitted => "READ COMMITTED",
        Isolation::RepeatableRead => "REPEATABLE READ",
        Isolation::Serializable => "SERIALIZABLE",
    }
}

/// The outermost BEGIN with its settings, as one message (without settings, a fixed
/// statement rather than a string made for each transaction).
pub(crate) fn begin(backend: DbBackend, begin: Begin) -> Cow<'static, str> {
    // Without an isolation level or a bound, one of a few fixed strings: no allocation.
    let fixed = begin.isolation.is_none() && begin.bound.is_none();
    match backend {
        DbBackend::Postgres if fixed && !begin.read_only => Cow::Borrowed("BEGIN"),
        DbBackend::Postgres if fixed => Cow::Borrowed("BEGIN READ ONLY"),
        DbBackend::MySql if fixed && !begin.read_only => Cow::Borrowed("START TRANSACTION"),
        DbBackend::MySql if fixed => Cow::Borrowed("START TRANSACTION READ ONLY"),
        DbBackend::Postgres => {
            let mut sql = "BEGIN".to_owned();
            if let Some(isolation) = begin.isolation {
                let _ = write!(sql, " ISOLATION LEVEL {}", isolation_sql(isolation));
            }
            if begin.read_only {
                sql.push_str(" READ ONLY");
            }
            if let Some(left) = begin.bound {
                let _ = write!(sql, "; {}", statement_timeout(Some(left)));
            }
            Cow::Owned(sql)
        }
        DbBackend::MySql => {
            let mut sql = String::new();
            if let Some(isolation) = begin.isolation {
                let _ = write!(
                    sql,
                    "SET TRANSACTION ISOLATION LEVEL {}; ",
                    isolation_sql(isolation)
                );
            }
            if let Some(left) = begin.bound {
                let _ = write!(sql, "{}; ", max_statement_time(Some(left)));
            }
            sql.push_str(if begin.read_only {
                "START TRANSACTION READ ONLY"
            } else {
                "START TRANSACTION"
            });
            Cow::Owned(sql)
        }
        // SQLite has no isolation levels or access modes. A writer takes the write lock at
        // BEGIN, where a busy database is waited out, instead of failing with "database is
        // locked" when a read lock cannot be upgraded mid-transaction.
        _ if begin.read_only => Cow::Borrowed("BEGIN DEFERRED"),
        _ => Cow::Borrowed("BEGIN IMMEDIATE"),
    }
}

/// The outermost COMMIT: one statement, alone in its message, so that its answer is the
/// COMMIT's and nothing else's. (Sent after another statement in one message, a Galera
/// node's COMMIT was seen reported committed when it was not: `tests/galera/`.)
pub(crate) const COMMIT: &str = "COMMIT";

/// The outermost ROLLBACK.
pub(crate) const ROLLBACK: &str = "ROLLBACK";

/// MariaDB: gives the session back its own statement bound (saved by the first
/// [`max_statement_time`] of the transaction), after a transaction that set one: sent after
/// its COMMIT or ROLLBACK, before the connection goes back to the pool.
pub(crate) const RESET_BOUND: &str = "SET @safe_db_bound = NULL /*M! , max_statement_time = \
     CAST(IFNULL(@safe_db_saved, @@session.max_statement_time) AS DOUBLE), \
     @safe_db_saved = NULL */";

/// A savepoint's name: one per depth, since siblings take turns.
fn savepoint_name(depth: u32) -> String {
    format!("safe_db_{depth}")
}

/// A savepoint's three steps without settings, for the first depths: fixed statements
/// rather than strings made for each nested transaction. Index `depth - 1`.
const SAVEPOINTS: [&str; 4] = [
    "SAVEPOINT safe_db_1",
    "SAVEPOINT safe_db_2",
    "SAVEPOINT safe_db_3",
    "SAVEPOINT safe_db_4",
];
const RELEASES: [&str; 4] = [
    "RELEASE SAVEPOINT safe_db_1",
    "RELEASE SAVEPOINT safe_db_2",
    "RELEASE SAVEPOINT safe_db_3",
    "RELEASE SAVEPOINT safe_db_4",
];
const ROLLBACKS_TO: [&str; 4] = [
    "ROLLBACK TO SAVEPOINT safe_db_1",
    "ROLLBACK TO SAVEPOINT safe_db_2",
    "ROLLBACK TO SAVEPOINT safe_db_3",
    "ROLLBACK TO SAVEPOINT safe_db_4",
];

/// `table`'s statement for `depth`, if it has one.
fn fixed(table: &[&'static str; 4], depth: u32) -> Option<&'static str> {
    table.get(depth.checked_sub(1)? as usize).copied()
}

/// Begins the savepoint of a nested level, with its settings in the same message: a
/// PostgreSQL `read_only` savepoint, and the level's own statement bound.
pub(crate) fn savepoint(
    backend: DbBackend,
    depth: u32,
    read_only: bool,
    bound: Option<Option<Duration>>,
) -> Cow<'static, str> {
    let read_only = read_only && backend == DbBackend::Postgres;
    let bound = bound.and_then(|bound| bound_sql(backend, bound));
    if !read_only
        && bound.is_none()
        && let Some(sql) = fixed(&SAVEPOINTS, depth)
    {
        return Cow::Borrowed(sql);
    }
    let mut parts = vec![format!("SAVEPOINT {}", savepoint_name(depth))];
    if read_only {
        parts.push("SET LOCAL transaction_read_only = on".to_owned());
    }
    parts.extend(bound);
    Cow::Owned(parts.join("; "))
}

/// Releases a nested level's savepoint, giving the enclosing level its statement bound
/// back first when this level set its own (a `SET LOCAL` outlives a `RELEASE`).
pub(crate) fn release(
    backend: DbBackend,
    depth: u32,
    restore: Option<Option<Duration>>,
) -> Cow<'static, str> {
    let mut parts: Vec<String> = restore
        .and_then(|bound| bound_sql(backend, bound))
        .into_iter()
        .collect();
    if parts.is_empty()
        && let Some(sql) = fixed(&RELEASES, depth)
    {
        return Cow::Borrowed(sql);
    }
    parts.push(format!("RELEASE SAVEPOINT {}", savepoint_name(depth)));
    Cow::Owned(parts.join("; "))
}

/// Rolls a nested level back to its savepoint (which undoes its `SET LOCAL`s on
/// PostgreSQL), giving MariaDB's session bound back to the enclosing level if this one set
/// its own.
pub(crate) fn rollback_to(
    backend: DbBackend,
    depth: u32,
    restore: Option<Option<Duration>>,
) -> Cow<'static, str> {
    let restore = match backend {
        DbBackend::MySql => restore.and_then(|bound| bound_sql(backend, bound)),
        _ => None,
    };
    if restore.is_none()
        && let Some(sql) = fixed(&ROLLBACKS_TO, depth)
    {
        return Cow::Borrowed(sql);
    }
    let mut parts = vec![format!("ROLLBACK TO SAVEPOINT {}", savepoint_name(depth))];
    parts.extend(restore);
    Cow::Owned(parts.join("; "))
}

/// The statement that bounds the statements after it on the server, if the database has
/// one.
pub(crate) fn bound_sql(backend: DbBackend, bound: Option<Duration>) -> Option<String> {
    match backend {
        DbBackend::Postgres => Some(statement_timeout(bound)),
        DbBackend::MySql => Some(max_statement_time(bound)),
        _ => None,
    }
}

/// PostgreSQL: `SET LOCAL statement_timeout` for what is left; with none, the session's
/// own setting.
pub(crate) fn statement_timeout(left: Option<Duration>) -> String {
    match left {
        Some(left) => {
            let ms = left.as_millis().clamp(1, i32::MAX as u128);
            format!("SET LOCAL statement_timeout = {ms}")
        }
        None => "SET LOCAL statement_timeout TO DEFAULT".to_owned(),
    }
}

/// MariaDB: the session's `max_statement_time` for what is left (rounded up to 100 ms,
/// the server's granularity in practice); with none, the session's own value again. The
/// first one of a transaction saves the session's own value (`@safe_db_saved`), which
/// [`RESET_BOUND`] gives back. MySQL has no such setting: the executable comment `/*M! … */`
/// is read by MariaDB only, and MySQL sets a user variable and nothing else.
pub(crate) fn max_statement_time(left: Option<Duration>) -> String {
    match left {
        Some(left) => {
            let ms = left.as_millis().div_ceil(100).max(1) * 100;
            format!(
                "SET @safe_db_bound = 1 /*M! , @safe_db_saved = IFNULL(@safe_db_saved, \
                 @@session.max_statement_time), max_statement_time = {}.{:03} */",
                ms / 1000,
                ms % 1000
            )
        }
        // A user variable is not taken as a system variable's value as it is: cast.
        None => "SET @safe_db_bound = NULL /*M! , max_statement_time = \
                 CAST(IFNULL(@safe_db_saved, @@session.max_statement_time) AS DOUBLE) */"
            .to_owned(),
    }
}

/// MySQL/MariaDB: whether the session is still inside a transaction (after an error that
/// ends it only under some settings). MySQL has no `@@in_transaction`: the question then
/// fails, and the transaction is taken as ended.
pub(crate) const IN_TRANSACTION: &str = "SELECT CAST(@@in_transaction AS SIGNED)";

/// PostgreSQL: whether a node is a standby (in recovery), as libpq's
/// `target_session_attrs=read-write` asks before it takes a server, and, on a primary, the
/// timeline it writes on (from its current WAL file's name; 0 in recovery), by which a
/// former primary back after a failover is told from the promoted one.
pub(crate) const PG_ROLE: &str = "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
     THEN 0 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END";

/// PostgreSQL: the primary's WAL position after a commit (read-your-writes on a standby).
pub(crate) const PRIMARY_WAL_POSITION: &str = "SELECT pg_current_wal_insert_lsn()::text";

/// PostgreSQL: a read replica's state: in recovery, its replay position, whether it has
/// received WAL it has not replayed, and the age in milliseconds of its last replayed
/// transaction.
pub(crate) const REPLICA_STATE: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
     pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), \
     CAST(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000 AS BIGINT)";

/// MariaDB Galera: whether a node is ready (`wsrep_ready`, `ON`) and `Synced`
/// (`wsrep_local_state`, 4). Both NULL on a server without Galera.
pub(crate) const GALERA_HEALTH: &str = "SELECT \
     MAX(IF(VARIABLE_NAME = 'WSREP_READY', VARIABLE_VALUE, NULL)), \
     MAX(IF(VARIABLE_NAME = 'WSREP_LOCAL_STATE', VARIABLE_VALUE, NULL)) \
     FROM information_schema.GLOBAL_STATUS \
     WHERE VARIABLE_NAME IN ('WSREP_READY', 'WSREP_LOCAL_STATE')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_begin_carries_its_settings_in_one_message() {
        let sql = begin(
            DbBackend::Postgres,
            Begin {
                isolation: Some(Isolation::Serializable),
                read_only: true,
                bound: Some(Duration::from_millis(1500)),
            },
        );
        assert_eq!(
            sql,
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SET LOCAL statement_timeout = 1500"
        );
        assert_eq!(begin(DbBackend::Postgres, Begin::default()), "BEGIN");
    }

    #[test]
    fn mariadb_begin_sets_isolation_and_bound_before_start_transaction() {
        let sql = begin(
            DbBackend::MySql,
            Begin {
                isolation: Some(Isolation::RepeatableRead),
                read_only: true,
                bound: Some(Duration::from_millis(1234)),
            },
        );
        assert_eq!(
            sql,
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SET @safe_db_bound = 1 \
             /*M! , @safe_db_saved = IFNULL(@safe_db_saved, @@session.max_statement_time), \
             max_statement_time = 1.300 */; START TRANSACTION READ ONLY"
        );
    }

    #[test]
    fn fixed_steps_are_the_ones_made() {
        for depth in 1..=5 {
            let name = savepoint_name(depth);
            assert_eq!(
                savepoint(DbBackend::Sqlite, depth, false, None),
                format!("SAVEPOINT {name}")
            );
            assert_eq!(
                release(DbBackend::Postgres, depth, None),
                format!("RELEASE SAVEPOINT {name}")
            );
            assert_eq!(
                rollback_to(DbBackend::MySql, depth, None),
                format!("ROLLBACK TO SAVEPOINT {name}")
            );
        }
        assert_eq!(
            begin(DbBackend::MySql, Begin::default()),
            "START TRANSACTION"
        );
        assert_eq!(
            begin(DbBackend::Sqlite, Begin::default()),
            "BEGIN IMMEDIATE"
        );
    }

    #[test]
    fn savepoints_carry_their_settings() {
        assert_eq!(
            savepoint(
                DbBackend::Postgres,
                2,
                true,
                Some(Some(Duration::from_millis(20)))
            ),
            "SAVEPOINT safe_db_2; SET LOCAL transaction_read_only = on; SET LOCAL \
             statement_timeout = 20"
        );
        assert_eq!(
            release(DbBackend::Postgres, 2, Some(None)),
            "SET LOCAL statement_timeout TO DEFAULT; RELEASE SAVEPOINT safe_db_2"
        );
        assert_eq!(
            release(DbBackend::Sqlite, 1, None),
            "RELEASE SAVEPOINT safe_db_1"
        );
        assert_eq!(
            rollback_to(DbBackend::Postgres, 1, Some(None)),
            "ROLLBACK TO SAVEPOINT safe_db_1"
        );
    }
}
