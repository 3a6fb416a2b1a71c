//! Configuration from `DATABASE_URL` and the environment, with the pool settings of the
//! Python guide's SQLAlchemy service: parsing it into a [`DbConfig`]. Building SeaORM's options
//! from it and connecting the [`Db`](crate::Db) are `connect.rs`'s.

use std::fmt;
use std::time::Duration;

use crate::db_url::DbUrl;

mod connect;
mod error;
mod hosts;

pub use error::ConfigError;

/// The SQLite file used when `DATABASE_URL` is unset.
pub const DEFAULT_URL: &str = "sqlite://safe-db.sqlite?mode=rwc";

/// Pool settings, under the Python guide's SQLAlchemy names.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Pool {
    pool_size: Option<u32>,
    max_overflow: Option<u32>,
    pool_timeout: Option<Duration>,
    /// `Some(None)` is `pool_recycle=-1`: never recycle.
    pool_recycle: Option<Option<Duration>>,
    pool_pre_ping: Option<bool>,
    connect_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

/// The parameters taken out of a URL's query, as `(name, environment variable)`.
const PARAMETERS: [(&str, &str); 7] = [
    ("pool_size", "DATABASE_POOL_SIZE"),
    ("max_overflow", "DATABASE_MAX_OVERFLOW"),
    ("pool_timeout", "DATABASE_POOL_TIMEOUT"),
    ("pool_recycle", "DATABASE_POOL_RECYCLE"),
    ("pool_pre_ping", "DATABASE_POOL_PRE_PING"),
    ("connect_timeout", "DATABASE_CONNECT_TIMEOUT"),
    ("idle_timeout", "DATABASE_IDLE_TIMEOUT"),
];

impl Pool {
    fn set(&mut self, name: &str, shown_as: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |expected| ConfigError::InvalidValue {
            parameter: shown_as.to_owned(),
            value: value.to_owned(),
            expected,
        };
        let whole = |min: u32, expected| {
            value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| invalid(expected))
        };
        let seconds = |expected| {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| invalid(expected))
        };
        match name {
            "pool_size" => {
                self.pool_size = Some(whole(1, "a whole number of connections, at least 1")?)
            }
            "max_overflow" => {
                self.max_overflow =
                    Some(whole(0, "a whole number of extra connections, 0 or more")?)
            }
            "pool_timeout" => {
                self.pool_timeout = Some(seconds("a number of seconds greater than 0")?)
            }
            "pool_recycle" => {
                self.pool_recycle = Some(if value.trim() == "-1" {
                    None
                } else {
                    Some(seconds(
                        "a number of seconds greater than 0, or -1 for never",
                    )?)
                })
            }
            "pool_pre_ping" => {
                self.pool_pre_ping = Some(match value.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    _ => return Err(invalid("true or false")),
                })
            }
            "connect_timeout" => {
                self.connect_timeout = Some(seconds("a number of seconds greater than 0")?)
            }
            "idle_timeout" => {
                self.idle_timeout = Some(seconds("a number of seconds greater than 0")?)
            }
            _ => unreachable!("only PARAMETERS are set"),
        }
        Ok(())
    }
}

/// Where and how to connect: a database URL, pool settings, statement logging, and an
/// optional read replica.
///
/// The pool settings keep the SQLAlchemy names of the Python guide safe-db started from
/// (session handling with SQLAlchemy and FastAPI), as URL query parameters or environment
/// variables (an environment variable wins over the URL), and are removed from the URL
/// before it reaches the driver; any other query parameter (`sslmode`, …) is passed
/// through to it.
///
/// | SQLAlchemy / URL  | environment              | SeaORM / sqlx                         |
/// |-------------------|--------------------------|---------------------------------------|
/// | `pool_size`       | `DATABASE_POOL_SIZE`     | `min_connections` (kept open)         |
/// | `max_overflow`    | `DATABASE_MAX_OVERFLOW`  | `max_connections = pool_size + max_overflow` |
/// | `pool_timeout`    | `DATABASE_POOL_TIMEOUT`  | `acquire_timeout` (seconds)           |
/// | `pool_recycle`    | `DATABASE_POOL_RECYCLE`  | `max_lifetime` (seconds; -1: never)   |
/// | `pool_pre_ping`   | `DATABASE_POOL_PRE_PING` | `test_before_acquire`                 |
/// | `connect_timeout` | `DATABASE_CONNECT_TIMEOUT` | `connect_timeout` (seconds)         |
/// | `idle_timeout`    | `DATABASE_IDLE_TIMEOUT`  | `idle_timeout` (seconds)              |
/// | `echo`            | `SQL_ECHO`, `SQLALCHEMY_ECHO` | statements logged at info level  |
///
/// Statements slower than the slow threshold (2 s, the Python guide's; see
/// [`set_slow_threshold`](crate::set_slow_threshold)) are logged at warn level.
///
/// ```
/// use safe_db::DbConfig;
///
/// let config = DbConfig::from_url("postgres://app:s3cret@db/prod?pool_size=20&max_overflow=10&sslmode=require")?;
/// assert_eq!(config.max_connections(), 30);
/// // The password appears nowhere.
/// assert_eq!(
///     format!("{config}"),
///     "postgres://app:***@db/prod?sslmode=require (pool_size=20, max_overflow=10)"
/// );
/// # Ok::<(), safe_db::ConfigError>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct DbConfig {
    url: DbUrl,
    replica_url: Option<DbUrl>,
    /// More nodes that take writes (`DATABASE_FAILOVER_HOSTS`): the same URL on each.
    failover: Vec<DbUrl>,
    pool: Pool,
    echo: bool,
}

impl DbConfig {
    /// Reads `DATABASE_URL` (default: [`DEFAULT_URL`], an SQLite file in the working
    /// directory, said in a log line), `DATABASE_REPLICA_URL`, the pool variables and
    /// `SQL_ECHO` / `SQLALCHEMY_ECHO` from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        DbConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// [`DbConfig::from_env`] over any source of variables (a map in tests, a secrets
    /// store, …).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let url = var("DATABASE_URL").unwrap_or_else(|| {
            tracing::info!(
                url = DEFAULT_URL,
                "DATABASE_URL is not set: using an embedded SQLite file"
            );
            DEFAULT_URL.to_owned()
        });
        let mut config = DbConfig::from_url(&url)?;
        if let Some(replica) = var("DATABASE_REPLICA_URL") {
            config = config.with_replica(&replica)?;
        }
        if let Some(hosts) = var("DATABASE_FAILOVER_HOSTS") {
            config = config.with_failover_hosts(&hosts)?;
        }
        for (name, env) in PARAMETERS {
            if let Some(value) = var(env) {
                config.pool.set(name, env, &value)?;
            }
        }
        for env in ["SQL_ECHO", "SQLALCHEMY_ECHO"] {
            if let Some(value) = var(env) {
                config.echo = parse_bool(env, &value)?;
            }
        }
        Ok(config)
    }

    /// A configuration from a URL, its pool parameters taken out of the query.
    ///
    /// The password may hold any character, raw or percent-encoded (`/`, `?`, `#`, `@`,
    /// `:`, …), in the userinfo or as a `password=` parameter (any case): it is split off
    /// here and reaches the driver through its own options, never through a URL. A raw
    /// password holding both `?` and `=` is refused (it reads as a query parameter: encode
    /// it), and so is `sslpassword=`, by name.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let mut pool = Pool::default();
        let mut echo = false;
        let url = DbUrl::parse(url, |name, value| {
            if name == "echo" {
                echo = parse_bool("echo", value)?;
                return Ok(true);
            }
            match PARAMETERS.iter().find(|(p, _)| *p == name) {
                Some((p, _)) => pool.set(p, p, value).map(|()| true),
                None => Ok(false),
            }
        })?;
        Ok(DbConfig {
            url,
            replica_url: None,
            failover: Vec::new(),
            pool,
            echo,
        })
    }

    /// Adds a read replica: operations marked `read_only` run there, all others on the
    /// primary. It takes the primary's pool settings: pool parameters in its URL are an
    /// error, so that none is silently ignored.
    pub fn with_replica(mut self, url: &str) -> Result<Self, ConfigError> {
        let url = DbUrl::parse(url, |name, value| {
            if name == "echo" || PARAMETERS.iter().any(|(p, _)| *p == name) {
                return Err(ConfigError::InvalidValue {
                    parameter: format!("{name} (in the replica URL)"),
                    value: value.to_owned(),
                    expected: "nothing: the replica takes the primary's pool settings",
                });
            }
            Ok(false)
        })?;
        self.replica_url = Some(url);
        Ok(self)
    }

    /// More nodes that take writes (a Galera cluster's other nodes), separated by commas:
    /// each `host[:port]` (the primary's URL, user and password on that host, on its port
    /// if none is given) or a full URL of the same kind of database (its own user and
    /// password; a `,` in it percent-encoded). Nodes take the primary's pool settings. See
    /// [`Db::with_failover`](crate::Db::with_failover).
    pub fn with_failover_hosts(mut self, hosts: &str) -> Result<Self, ConfigError> {
        self.failover = hosts::parse(&self.url, hosts, |name| {
            name == "echo" || PARAMETERS.iter().any(|(p, _)| *p == name)
        })?;
        Ok(self)
    }

    /// Logs every statement at info level (the Python guide's `SQLALCHEMY_ECHO`).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// The cap of the pool: `pool_size + max_overflow` (SQLAlchemy's defaults: 5 + 10).
    pub fn max_connections(&self) -> u32 {
        self.pool.pool_size.unwrap_or(5) + self.pool.max_overflow.unwrap_or(10)
    }

    /// Whether a read replica is configured.
    pub fn has_replica(&self) -> bool {
        self.replica_url.is_some()
    }
}

impl fmt::Display for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.url)?;
        let p = &self.pool;
        let mut set: Vec<String> = Vec::new();
        if let Some(v) = p.pool_size {
            set.push(format!("pool_size={v}"));
        }
        if let Some(v) = p.max_overflow {
            set.push(format!("max_overflow={v}"));
        }
        if let Some(v) = p.pool_timeout {
            set.push(format!("pool_timeout={v:?}"));
        }
        if let Some(v) = p.pool_recycle {
            set.push(format!("pool_recycle={v:?}"));
        }
        if let Some(v) = p.pool_pre_ping {
            set.push(format!("pool_pre_ping={v}"));
        }
        if let Some(v) = p.connect_timeout {
            set.push(format!("connect_timeout={v:?}"));
        }
        if let Some(v) = p.idle_timeout {
            set.push(format!("idle_timeout={v:?}"));
        }
        if self.echo {
            set.push("echo".to_owned());
        }
        if !set.is_empty() {
            write!(f, " ({})", set.join(", "))?;
        }
        if let Some(replica) = &self.replica_url {
            write!(f, ", replica {replica}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &self.url)
            .field("replica_url", &self.replica_url)
            .field("failover", &self.failover)
            .field("pool", &self.pool)
            .field("echo", &self.echo)
            .finish()
    }
}

fn parse_bool(parameter: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::InvalidValue {
            parameter: parameter.to_owned(),
            value: value.to_owned(),
            expected: "true or false",
        }),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    pub(super) fn vars<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn pool_parameters_in_the_replica_url_are_refused() {
        let err = DbConfig::from_url("postgres://u@h/db")
            .unwrap()
            .with_replica("postgres://ro:pw@r/db?pool_size=abc")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid pool_size (in the replica URL) \"abc\": expected nothing: the replica \
             takes the primary's pool settings"
        );
    }

    #[test]
    fn unset_database_url_is_an_embedded_sqlite_file() {
        let c = DbConfig::from_vars(vars(&[])).unwrap();
        assert_eq!(c.connect_options().get_url(), DEFAULT_URL);
        assert!(!c.has_replica());
    }

    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn bad_values_name_the_parameter_and_the_value() {
        let cases = [
            (
                "sqlite::memory:?pool_size=abc",
                "invalid pool_size \"abc\": expected a whole number of connections, at least 1",
            ),
            ("sqlite::memory:?pool_size=0", "invalid pool_size \"0\""),
            (
                "sqlite::memory:?pool_timeout=-5",
                "invalid pool_timeout \"-5\"",
            ),
            (
                "sqlite::memory:?max_overflow=-1",
                "invalid max_overflow \"-1\"",
            ),
            (
                "sqlite::memory:?pool_recycle=-2",
                "invalid pool_recycle \"-2\"",
            ),
            (
                "sqlite::memory:?pool_pre_ping=maybe",
                "invalid pool_pre_ping \"maybe\": expected true or false",
            ),
            (
                "oracle://u:pw@h/db",
                "unsupported database URL scheme \"oracle\"",
            ),
            ("not a url", "malformed database URL"),
            (
                "postgres:u:pw@h",
                "malformed database URL: expected scheme://",
            ),
        ];
        for (url, expected) in cases {
            let err = DbConfig::from_url(url).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{url}: {err}");
            assert!(!err.contains(":pw@"), "{err}");
        }
        let err = DbConfig::from_vars(vars(&[("DATABASE_POOL_SIZE", "lots")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid DATABASE_POOL_SIZE \"lots\": expected a whole number of connections, at least 1"
        );
    }

    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn the_password_appears_in_neither_display_nor_debug() {
        let c = DbConfig::from_url("postgres://app:hunter2@db/prod?pool_size=3")
            .unwrap()
            .with_replica("postgres://ro@replica/prod?password=hunter3")
            .unwrap();
        assert!(!c.connect_options().get_url().contains("hunter2"));
        for shown in [format!("{c}"), format!("{c:?}"), format!("{c:#?}")] {
            assert!(
                !shown.contains("hunter2") && !shown.contains("hunter3"),
                "{shown}"
            );
            assert!(shown.contains("app:***@db"), "{shown}");
        }
    }
}
