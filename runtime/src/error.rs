//! A classified error type, and the classification of SeaORM's `DbErr` behind it.

use std::fmt;

use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, SqlErr};

/// What kind of failure an [`Error`] is: the part a caller branches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A record the operation needed does not exist.
    NotFound,
    /// A unique or primary-key constraint was violated.
    UniqueViolation,
    /// A foreign-key constraint was violated.
    ForeignKeyViolation,
    /// The transaction lost a conflict with another one (serialization failure, deadlock,
    /// SQLite busy); re-running it may succeed. See [`Options::retries`](crate::Options::retries).
    SerializationFailure,
    /// The operation, a statement or a lock wait ran out of time.
    Timeout,
    /// No connection could be had from the pool within its acquire timeout.
    PoolExhausted,
    /// The database could not be reached, or the connection was lost.
    Unavailable,
    /// A write was attempted in a read-only transaction.
    ReadOnly,
    /// The input was rejected by the application before or while writing.
    Validation,
    /// Any other database error.
    Database,
}

impl ErrorKind {
    /// Whether re-running the whole transaction may succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::SerializationFailure)
    }

    /// Classifies a SeaORM error by SQLSTATE, driver error code and [`DbErr::sql_err`],
    /// on SQLite, PostgreSQL and MySQL/MariaDB alike.
    pub fn of(err: &DbErr) -> ErrorKind {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => return ErrorKind::UniqueViolation,
            Some(SqlErr::ForeignKeyConstraintViolation(_)) => {
                return ErrorKind::ForeignKeyViolation;
            }
            _ => {}
        }
        match err {
            DbErr::RecordNotFound(_) => ErrorKind::NotFound,
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => ErrorKind::PoolExhausted,
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => ErrorKind::Unavailable,
            DbErr::Conn(RuntimeErr::Internal(_)) => ErrorKind::Unavailable,
            DbErr::Conn(runtime) | DbErr::Exec(runtime) | DbErr::Query(runtime) => {
                of_runtime(runtime, matches!(err, DbErr::Conn(_)))
            }
            _ => ErrorKind::Database,
        }
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn of_runtime(runtime: &RuntimeErr, is_connect: bool) -> ErrorKind {
    use sea_orm::sqlx::Error as SqlxError;
    let fallback = if is_connect {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Database
    };
    let RuntimeErr::SqlxError(sqlx) = runtime else {
        return fallback;
    };
    match &**sqlx {
        SqlxError::Database(db) => of_database(db.as_ref()).unwrap_or(fallback),
        // While connecting, a pool that times out never reached the server.
        SqlxError::PoolTimedOut if is_connect => ErrorKind::Unavailable,
        SqlxError::PoolTimedOut => ErrorKind::PoolExhausted,
        SqlxError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
        SqlxError::PoolClosed
        | SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::Protocol(_)
        | SqlxError::WorkerCrashed => ErrorKind::Unavailable,
        _ => fallback,
    }
}

#[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
fn of_runtime(_: &RuntimeErr, is_connect: bool) -> ErrorKind {
    if is_connect {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Database
    }
}

/// Reads the driver's own code: MySQL's error number first (its SQLSTATEs are too
/// coarse: a deadlock and a plain serialization failure share 40001), then the SQLSTATE
/// (PostgreSQL, MySQL) or the extended result code (SQLite).
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn of_database(db: &(dyn sea_orm::sqlx::error::DatabaseError + 'static)) -> Option<ErrorKind> {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return match my.number() {
            1213 => Some(ErrorKind::SerializationFailure), // ER_LOCK_DEADLOCK
            1205 | 3024 | 1969 => Some(ErrorKind::Timeout), // lock wait, max_execution_time, max_statement_time
            1792 => Some(ErrorKind::ReadOnly), // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
            1040 | 1203 | 2002 | 2003 | 2006 | 2013 | 1927 | 1053 => Some(ErrorKind::Unavailable),
            1048 | 1364 | 1406 | 1366 | 3819 | 4025 => Some(ErrorKind::Validation),
            _ => None,
        };
    }
    let code = db.code()?;
    #[cfg(feature = "sqlite")]
    if db
        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
    {
        // Extended result codes; the primary code is the low byte.
        let extended: i32 = code.parse().ok()?;
        return match extended & 0xff {
            5 | 6 => Some(ErrorKind::SerializationFailure), // SQLITE_BUSY, SQLITE_LOCKED
            8 => Some(ErrorKind::ReadOnly),                 // SQLITE_READONLY
            10 | 14 | 26 => Some(ErrorKind::Unavailable),   // IOERR, CANTOPEN, NOTADB
            19 => Some(ErrorKind::Validation),              // other CONSTRAINT failures
            _ => None,
        };
    }
    match code.as_ref() {
        "40001" | "40P01" => Some(ErrorKind::SerializationFailure),
        "57014" | "55P03" | "25P03" => Some(ErrorKind::Timeout),
        "25006" => Some(ErrorKind::ReadOnly),
        c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
            Some(ErrorKind::Unavailable)
        }
        c if c.starts_with("23") || c.starts_with("22") => Some(ErrorKind::Validation),
        _ => None,
    }
}

/// safe-db's error: a [kind](ErrorKind) to branch on and a message safe to log.
///
/// Any error type with `From<sea_orm::DbErr>` works in an operation; this one is there
/// for services that want failures classified the same way on every database.
/// Its messages never contain a connection string or a password.
///
/// ```
/// use safe_db::{Error, ErrorKind};
///
/// let err = Error::not_found("agent", 7);
/// assert_eq!(err.kind(), ErrorKind::NotFound);
/// assert_eq!(err.to_string(), "agent 7 not found");
/// ```
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<DbErr>,
}

impl Error {
    /// A record the operation needed does not exist.
    pub fn not_found(entity: &str, key: impl fmt::Display) -> Self {
        Error {
            kind: ErrorKind::NotFound,
            message: format!("{entity} {key} not found"),
            source: None,
        }
    }

    /// The application rejected its input.
    pub fn validation(message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Validation,
            message: message.into(),
            source: None,
        }
    }

    /// An error of the given kind with a message of the application's.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether re-running the whole transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// The database error this was classified from, if any.
    pub fn db_err(&self) -> Option<&DbErr> {
        self.source.as_ref()
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        Error {
            kind: ErrorKind::of(&err),
            message: redact(&err.to_string()),
            source: Some(err),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not derived: the source's Debug could print a connection string.
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Replaces the password of every `scheme://user:password@host`, and the value of every
/// `password=` parameter, in `text` by `***`.
pub(crate) fn redact(text: &str) -> String {
    let text = redact_userinfo(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("password=") {
        let (head, tail) = rest.split_at(at + "password=".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        if end > 0 {
            out.push_str("***");
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact("cannot connect to postgres://app:s3cr3t@db:5432/prod now"),
            "cannot connect to postgres://app:***@db:5432/prod now"
        );
        assert_eq!(
            redact("mysql://root@localhost/x"),
            "mysql://root@localhost/x"
        );
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("a://u:p@h b://v:q@i"), "a://u:***@h b://v:***@i");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=s3cret x"),
            "postgres://u@h/db?sslmode=require&password=*** x"
        );
    }

    #[test]
    fn error_display_never_shows_the_password() {
        let err = Error::from(DbErr::Conn(RuntimeErr::Internal(
            "failed to connect to postgres://app:hunter2@db/prod".into(),
        )));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn classifies_pool_and_lookup_errors() {
        assert_eq!(
            ErrorKind::of(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
            ErrorKind::PoolExhausted
        );
        assert_eq!(
            ErrorKind::of(&DbErr::RecordNotFound("agent".into())),
            ErrorKind::NotFound
        );
        assert_eq!(
            ErrorKind::of(&DbErr::Custom("x".into())),
            ErrorKind::Database
        );
    }
}
