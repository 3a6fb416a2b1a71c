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
    /// The connection was lost while the COMMIT was on the wire: the transaction may have
    /// committed, or not. It is not re-run (that could apply it twice); the caller must
    /// find out, e.g. by reading back what it wrote.
    CommitUnknown,
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
        if let Some(cause) = crate::Cause::of(err) {
            return cause.kind();
        }
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

/// MySQL/MariaDB error numbers, read before the SQLSTATE: MySQL's SQLSTATEs are too
/// coarse (a deadlock and a plain serialization failure share 40001, most data errors
/// are HY000). Unique and foreign-key violations are read earlier, by `DbErr::sql_err`.
/// The same mistake gets the same kind as on PostgreSQL (`tests/errors.rs` proves it).
#[cfg(feature = "mysql")]
const MYSQL_NUMBERS: &[(u16, ErrorKind)] = &[
    (1213, ErrorKind::SerializationFailure), // ER_LOCK_DEADLOCK (also Galera certification)
    (1020, ErrorKind::SerializationFailure), // ER_CHECKREAD: record changed since last read (innodb_snapshot_isolation)
    (1205, ErrorKind::Timeout),              // ER_LOCK_WAIT_TIMEOUT
    (3024, ErrorKind::Timeout),              // ER_QUERY_TIMEOUT (MySQL max_execution_time)
    (1969, ErrorKind::Timeout),              // ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
    (1792, ErrorKind::ReadOnly),             // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    (1290, ErrorKind::ReadOnly),             // ER_OPTION_PREVENTS_STATEMENT (server --read-only)
    (1836, ErrorKind::ReadOnly),             // ER_READ_ONLY_MODE (InnoDB read-only)
    (1153, ErrorKind::Validation),           // ER_NET_PACKET_TOO_LARGE (its SQLSTATE is 08S01)
    (1040, ErrorKind::Unavailable),          // ER_CON_COUNT_ERROR
    (1203, ErrorKind::Unavailable),          // ER_TOO_MANY_USER_CONNECTIONS
    (1053, ErrorKind::Unavailable),          // ER_SERVER_SHUTDOWN
    (1927, ErrorKind::Unavailable),          // ER_CONNECTION_KILLED
    (1047, ErrorKind::Unavailable), // ER_UNKNOWN_COM_ERROR: a Galera node outside the primary component
    (1180, ErrorKind::Unavailable), // ER_ERROR_DURING_COMMIT (at COMMIT: CommitUnknown)
    (2002, ErrorKind::Unavailable), // CR_CONNECTION_ERROR
    (2003, ErrorKind::Unavailable), // CR_CONN_HOST_ERROR
    (2006, ErrorKind::Unavailable), // CR_SERVER_GONE_ERROR
    (2013, ErrorKind::Unavailable), // CR_SERVER_LOST
    (1048, ErrorKind::Validation),  // ER_BAD_NULL_ERROR: NOT NULL
    (1364, ErrorKind::Validation),  // ER_NO_DEFAULT_FOR_FIELD
    (1406, ErrorKind::Validation),  // ER_DATA_TOO_LONG
    (1264, ErrorKind::Validation),  // ER_WARN_DATA_OUT_OF_RANGE
    (1690, ErrorKind::Validation),  // ER_DATA_OUT_OF_RANGE (arithmetic)
    (1365, ErrorKind::Validation),  // ER_DIVISION_BY_ZERO
    (1366, ErrorKind::Validation),  // ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: bad number
    (1292, ErrorKind::Validation),  // ER_TRUNCATED_WRONG_VALUE: bad date, number
    (1265, ErrorKind::Validation),  // WARN_DATA_TRUNCATED
    (3819, ErrorKind::Validation),  // ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
    (4025, ErrorKind::Validation),  // ER_CONSTRAINT_FAILED (MariaDB CHECK)
];

/// SQLSTATEs (PostgreSQL, and MySQL where no number above matched), exact or by class.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
const SQLSTATES: &[(&str, ErrorKind)] = &[
    ("08007", ErrorKind::CommitUnknown), // transaction_resolution_unknown
    // Read earlier from the driver's own error (`DbErr::sql_err`); here for an error that
    // carries only the SQLSTATE (`safe_db::testing`'s, on SQLite).
    ("23505", ErrorKind::UniqueViolation), // unique_violation
    ("23503", ErrorKind::ForeignKeyViolation), // foreign_key_violation
    ("40001", ErrorKind::SerializationFailure), // serialization_failure
    ("40P01", ErrorKind::SerializationFailure), // deadlock_detected
    ("57014", ErrorKind::Timeout),         // query_canceled (statement_timeout)
    ("55P03", ErrorKind::Timeout),         // lock_not_available (lock_timeout)
    ("25P03", ErrorKind::Timeout),         // idle_in_transaction_session_timeout
    ("25006", ErrorKind::ReadOnly),        // read_only_sql_transaction
    ("53300", ErrorKind::Unavailable),     // too_many_connections
    ("08", ErrorKind::Unavailable),        // class: connection exception
    ("57P", ErrorKind::Unavailable),       // admin / crash shutdown, cannot connect now
    ("23", ErrorKind::Validation),         // class: integrity constraint (not null, check)
    ("22", ErrorKind::Validation),         // class: data exception (range, number, length, ÷0)
];

/// SQLite primary result codes (the low byte of the extended code).
#[cfg(feature = "sqlite")]
const SQLITE_CODES: &[(i32, ErrorKind)] = &[
    (5, ErrorKind::SerializationFailure), // SQLITE_BUSY
    (6, ErrorKind::SerializationFailure), // SQLITE_LOCKED
    (8, ErrorKind::ReadOnly),             // SQLITE_READONLY
    (10, ErrorKind::Unavailable),         // SQLITE_IOERR
    (14, ErrorKind::Unavailable),         // SQLITE_CANTOPEN
    (26, ErrorKind::Unavailable),         // SQLITE_NOTADB
    (19, ErrorKind::Validation),          // SQLITE_CONSTRAINT (not null, check, datatype)
    (20, ErrorKind::Validation),          // SQLITE_MISMATCH
];

/// A step of the protocol whose connection has already been given up (a link used after
/// its transaction ended).
pub(crate) fn link_gone() -> DbErr {
    crate::cause::raise(crate::Cause::ConnectionGone)
}

/// A Galera node that is not fit to serve (`ready`: `wsrep_ready`; `state`:
/// `wsrep_local_state`, 4 when `Synced`): left aside like one that cannot be reached.
pub(crate) fn node_unfit(node: usize, ready: &str, state: &str) -> DbErr {
    crate::cause::raise(crate::Cause::NodeUnfit {
        node,
        ready: ready.to_owned(),
        state: state.to_owned(),
    })
}

/// A ROLLBACK that did not answer within `grace`: its connection is given up.
pub(crate) fn rollback_unanswered(grace: std::time::Duration) -> DbErr {
    step_unanswered("ROLLBACK", grace)
}

/// A step of the protocol (`step`: BEGIN, SAVEPOINT, …) that the server did not answer
/// within `bound`: its connection is closed. Classified [`ErrorKind::Timeout`].
pub(crate) fn step_unanswered(step: &'static str, limit: std::time::Duration) -> DbErr {
    crate::cause::raise(crate::Cause::StepUnanswered { step, limit })
}

/// An outermost COMMIT whose answer was lost with the connection (`err`): classified
/// [`ErrorKind::CommitUnknown`], with SQLSTATE 08007 (transaction resolution unknown).
pub(crate) fn commit_unknown(err: &DbErr) -> DbErr {
    crate::cause::raise_with(crate::Cause::CommitUnknown, Some(&redact(&err.to_string())))
}

/// An outermost COMMIT sent and not answered within `bound`: classified
/// [`ErrorKind::CommitUnknown`].
pub(crate) fn commit_unanswered(bound: std::time::Duration) -> DbErr {
    crate::cause::raise_with(
        crate::Cause::CommitUnknown,
        Some(&format!(
            "no answer within {bound:?}; the connection is closed"
        )),
    )
}

/// A server's error as `safe_db::testing` injects it on SQLite (where the server cannot
/// be made to raise it), with a SQLSTATE that [`ErrorKind::of`] reads.
#[cfg(feature = "testing")]
#[derive(Debug)]
pub(crate) struct Coded {
    message: String,
    code: &'static str,
    unique: bool,
}

#[cfg(feature = "testing")]
impl Coded {
    /// `unique`: a unique violation, as sqlx's error kind says it.
    pub(crate) fn new(message: String, code: &'static str, unique: bool) -> Self {
        Coded {
            message,
            code,
            unique,
        }
    }

    /// As a statement's error.
    pub(crate) fn into_db_err(self) -> DbErr {
        let err = std::sync::Arc::new(sea_orm::sqlx::Error::Database(Box::new(self)));
        DbErr::Exec(RuntimeErr::SqlxError(err))
    }
}

#[cfg(feature = "testing")]
impl fmt::Display for Coded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(feature = "testing")]
impl std::error::Error for Coded {}

#[cfg(feature = "testing")]
impl sea_orm::sqlx::error::DatabaseError for Coded {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.into())
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
        if self.unique {
            sea_orm::sqlx::error::ErrorKind::UniqueViolation
        } else {
            sea_orm::sqlx::error::ErrorKind::Other
        }
    }
}

/// A write refused by safe-db in a read-only savepoint (MySQL/MariaDB cannot make one
/// read-only): classified [`ErrorKind::ReadOnly`], with PostgreSQL's SQLSTATE for it.
pub(crate) fn read_only_refused(what: &str) -> DbErr {
    crate::cause::raise(crate::Cause::ReadOnly {
        keyword: what.to_owned(),
    })
}

/// The database's own error inside `err`, if the server (or SQLite) reported one.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn database_error(err: &DbErr) -> Option<&(dyn sea_orm::sqlx::error::DatabaseError + 'static)> {
    match err {
        DbErr::Conn(RuntimeErr::SqlxError(sqlx))
        | DbErr::Exec(RuntimeErr::SqlxError(sqlx))
        | DbErr::Query(RuntimeErr::SqlxError(sqlx)) => match &**sqlx {
            sea_orm::sqlx::Error::Database(db) => Some(db.as_ref()),
            _ => None,
        },
        _ => None,
    }
}

/// The SQLSTATE of `err`, if it is a database error.
pub(crate) fn sqlstate(err: &DbErr) -> Option<String> {
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    return database_error(err)?.code().map(|c| c.into_owned());
    #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
    {
        let _ = err;
        None
    }
}

/// The MySQL/MariaDB error number of `err`, if it is a MySQL server error.
pub(crate) fn mysql_number(err: &DbErr) -> Option<u16> {
    #[cfg(feature = "mysql")]
    return database_error(err)?
        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()
        .map(|my| my.number());
    #[cfg(not(feature = "mysql"))]
    {
        let _ = err;
        None
    }
}

/// Reads the driver's own code: MySQL's error number first, then the SQLSTATE
/// (PostgreSQL, MySQL) or the extended result code (SQLite), through the tables above.
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
fn of_database(db: &(dyn sea_orm::sqlx::error::DatabaseError + 'static)) -> Option<ErrorKind> {
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        let number = my.number();
        if let Some((_, kind)) = MYSQL_NUMBERS.iter().find(|(n, _)| *n == number) {
            return Some(*kind);
        }
    }
    let code = db.code()?;
    #[cfg(feature = "sqlite")]
    if db
        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
    {
        let primary = code.parse::<i32>().ok()? & 0xff;
        return SQLITE_CODES
            .iter()
            .find(|(c, _)| *c == primary)
            .map(|(_, kind)| *kind);
    }
    SQLSTATES
        .iter()
        .find(|(state, _)| code.starts_with(state))
        .map(|(_, kind)| *kind)
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

    /// What safe-db found or refused, if it raised this error itself (a refused statement,
    /// an unknown commit, a timeout, …): match on it rather than on the message.
    pub fn cause(&self) -> Option<&crate::Cause> {
        self.source.as_ref().and_then(crate::Cause::of)
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
/// `password=` parameter (`sslpassword=` and any case too), in `text` by `***`.
pub(crate) fn redact(text: &str) -> String {
    let text = redact_userinfo(text);
    // ASCII lowercase keeps every byte where it was: indices into `lower` are into `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(at) = lower[from..].find("password=") {
        let value = from + at + "password=".len();
        out.push_str(&text[from..value]);
        let end = text[value..]
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .map_or(text.len(), |end| value + end);
        if end > value {
            out.push_str("***");
        }
        from = end;
    }
    out.push_str(&text[from..]);
    out
}

/// The password of `scheme://user:password@host` runs from the user's `:` to the last `@`
/// before the next URL (or the end of the text): passwords hold `/`, spaces, `?`, `#`, `:`
/// and `@`, so no other character can end it. When a URL without a password is followed
/// by an `@` (an e-mail address), more than the password is hidden: hiding too much is the
/// side to err on.
fn redact_userinfo(text: &str) -> String {
    let is_scheme = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // This URL ends where the next one's scheme begins.
        let end = tail.find("://").map_or(tail.len(), |next| {
            tail[..next].trim_end_matches(is_scheme).len()
        });
        let url = &tail[..end];
        let user_end = url
            .find(|c: char| c == ':' || c == '@' || c == '/' || c.is_whitespace())
            .unwrap_or(url.len());
        match url.rfind('@') {
            Some(at) if url[user_end..].starts_with(':') && at > user_end => {
                out.push_str(&url[..=user_end]);
                out.push_str("***");
                out.push_str(&url[at..]);
            }
            _ => out.push_str(url),
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

    /// Issue 30, item 8: the password of `scheme://user:password@host` runs to the last
    /// `@` before the host, whatever it holds.
    #[test]
    fn redacts_passwords_holding_url_characters() {
        for password in ["pa/ss", "pa ss", "p?a#s:s", "a@b/c d?e#f:g", "x:y@z"] {
            for text in [
                format!("cannot connect to postgres://app:{password}@db:5432/prod now"),
                format!("'mysql://app:{password}@db/shop' refused"),
                format!("a://u:{password}@h b://v:{password}@i"),
            ] {
                let shown = redact(&text);
                assert!(!shown.contains(password), "{text} -> {shown}");
                assert!(shown.contains(":***@"), "{text} -> {shown}");
            }
        }
        assert_eq!(
            redact("to postgres://app:a/b c@db:5432/prod, then mysql://r:x y@h/s"),
            "to postgres://app:***@db:5432/prod, then mysql://r:***@h/s"
        );
        assert_eq!(
            redact("url postgres://u@h/db?Password=s3cret&sslpassword=k3y x"),
            "url postgres://u@h/db?Password=***&sslpassword=*** x"
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
