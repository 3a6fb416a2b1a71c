//! What a configuration value that cannot be used is, said without its secrets.

use std::fmt;

/// A configuration value that could not be used. Never contains a password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A pool parameter (URL query or environment variable) has an invalid value.
    InvalidValue {
        /// The parameter, as the user wrote it (`pool_size`, `DATABASE_POOL_SIZE`, …).
        parameter: String,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// The URL's scheme names no database safe-db can reach with its enabled features.
    UnsupportedScheme {
        /// The scheme given.
        scheme: String,
        /// Why it is not supported.
        reason: &'static str,
    },
    /// The URL is not of the form `scheme://…` (nothing of it is repeated, since a
    /// malformed URL may hold a password where a host was expected).
    MalformedUrl,
    /// A URL query parameter safe-db will not pass on (`sslpassword`: a secret the driver
    /// cannot use). Its value is not kept.
    UnsupportedParameter {
        /// The parameter, as the user wrote it.
        parameter: String,
        /// Why it is refused, and what to do instead.
        reason: &'static str,
    },
    /// An entry of `DATABASE_FAILOVER_HOSTS` that is neither `host[:port]` nor a full
    /// database URL. Nothing of it is repeated: it may hold a password.
    FailoverHost {
        /// Which entry, counting from 1.
        position: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::InvalidValue {
                parameter,
                value,
                expected,
            } => write!(f, "invalid {parameter} {value:?}: expected {expected}"),
            ConfigError::UnsupportedScheme { scheme, reason } => {
                write!(f, "unsupported database URL scheme {scheme:?}: {reason}")
            }
            ConfigError::MalformedUrl => f.write_str(
                "malformed database URL: expected scheme://…, e.g. postgres://user@host/db \
                 (a password holding `?` and `=`, and an `@` in a query parameter, must be \
                 percent-encoded)",
            ),
            ConfigError::UnsupportedParameter { parameter, reason } => {
                write!(
                    f,
                    "unsupported database URL parameter {parameter:?}: {reason}"
                )
            }
            ConfigError::FailoverHost { position, problem } => write!(
                f,
                "invalid DATABASE_FAILOVER_HOSTS entry {position} (counting from 1): \
                 {problem}; expected `host[:port]` entries or full database URLs, separated \
                 by commas"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
