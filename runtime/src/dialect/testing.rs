//! The SQL the testing kit (`safe_db::testing`) writes: databases of a test's own, their
//! sweeping, the template's mark, the set-up lock, and injected failures.

use sea_orm::DbBackend;

/// Makes database `name` (a name the kit made up, never the caller's input).
pub(crate) fn create_database(name: &str) -> String {
    format!("CREATE DATABASE {name}")
}

/// Makes database `name` as a copy of `template` (PostgreSQL).
pub(crate) fn create_database_from(name: &str, template: &str) -> String {
    format!("CREATE DATABASE {name} TEMPLATE {template}")
}

/// Drops database `name`; on PostgreSQL ending its sessions first (`WITH (FORCE)`).
pub(crate) fn drop_database(postgres: bool, name: &str) -> String {
    if postgres {
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    } else {
        format!("DROP DATABASE IF EXISTS {name}")
    }
}

/// Marks database `name` with `mark` (PostgreSQL): how a template is told from a database
/// the kit did not make.
pub(crate) fn comment_on_database(name: &str, mark: &str) -> String {
    format!("COMMENT ON DATABASE {name} IS '{mark}'")
}

/// The comment on the database named by `$1` (PostgreSQL); no row if there is none.
pub(crate) const DATABASE_COMMENT: &str =
    "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1";

/// The names of every database on the server.
pub(crate) fn list_databases(postgres: bool) -> (DbBackend, &'static str) {
    if postgres {
        (DbBackend::Postgres, "SELECT datname FROM pg_database")
    } else {
        (
            DbBackend::MySql,
            "SELECT schema_name FROM information_schema.schemata",
        )
    }
}

/// The server-side lock a shared database's set-up runs under, and its release.
pub(crate) fn setup_lock(postgres: bool) -> (&'static str, &'static str) {
    if postgres {
        (
            "SELECT pg_advisory_lock(7243014017)",
            "SELECT pg_advisory_unlock(7243014017)",
        )
    } else {
        (
            "SELECT GET_LOCK('safe_db_test_setup', 600)",
            "SELECT RELEASE_LOCK('safe_db_test_setup')",
        )
    }
}

/// The lock a template is made under (PostgreSQL), held until its connection closes.
pub(crate) const TEMPLATE_LOCK: &str = "SELECT pg_advisory_lock(7243014018)";

/// Ends the session that sends it: an injected lost connection.
pub(crate) fn end_own_session(backend: DbBackend) -> Option<&'static str> {
    match backend {
        DbBackend::Postgres => Some("SELECT pg_terminate_backend(pg_backend_pid())"),
        DbBackend::MySql => Some("KILL CONNECTION_ID()"),
        _ => None,
    }
}

/// Makes the server raise an error: SQLSTATE `code` on PostgreSQL (which aborts the
/// transaction as a real one would), `mysql` (SQLSTATE, error number) on MySQL/MariaDB.
pub(crate) fn raise_error(
    backend: DbBackend,
    code: &str,
    mysql: (&str, u16),
    message: &str,
) -> Option<String> {
    match backend {
        DbBackend::Postgres => Some(format!(
            "DO $$BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{message}'; END$$"
        )),
        DbBackend::MySql => {
            let (state, number) = mysql;
            Some(format!(
                "SIGNAL SQLSTATE '{state}' SET MYSQL_ERRNO = {number}, MESSAGE_TEXT = '{message}'"
            ))
        }
        _ => None,
    }
}
