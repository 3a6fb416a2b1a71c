//! Database URLs: the scheme checked, the password split off (it reaches the driver
//! through its own options, never through a URL that could be logged), query parameters
//! taken out, and a form that may be shown.
//!
//! Passwords from secret stores hold raw `/`, `?`, `#`, `@` or `:`: the userinfo is found
//! before the URL is parsed (it ends at the last `@`), and the rest is parsed by the `url`
//! crate. Secret query parameters (`password`, `sslpassword`, in any case) are split off
//! or refused, never passed on. Nothing of input that cannot be parsed is ever repeated.

use std::fmt;

use sea_orm::ConnectOptions;

use crate::ConfigError;

/// A database URL without its password, and the password.
#[derive(Clone, PartialEq)]
pub(crate) struct DbUrl {
    /// What the driver (and SeaORM, which records it in spans) gets: no password.
    url: String,
    password: Option<String>,
}

impl DbUrl {
    /// Parses `raw`, handing each query parameter to `take`, which keeps it out of the URL
    /// by returning `Ok(true)`. A `password=` parameter (any case) is taken as the
    /// password; `sslpassword=` is refused (see [`Secret`]).
    pub(crate) fn parse(
        raw: &str,
        mut take: impl FnMut(&str, &str) -> Result<bool, ConfigError>,
    ) -> Result<DbUrl, ConfigError> {
        let (scheme, rest) = scheme(raw)?;
        if scheme == "sqlite" {
            // A path, not an authority: nothing secret in it.
            let (path, query) = match rest.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (rest, None),
            };
            let mut kept = Vec::new();
            for pair in query
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
            {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if Secret::of(name).is_some() {
                    return Err(ConfigError::UnsupportedParameter {
                        parameter: name.to_owned(),
                        reason: "SQLite takes no password: remove it from the URL",
                    });
                }
                if !take(name, value)? {
                    kept.push(pair);
                }
            }
            let query = if kept.is_empty() {
                String::new()
            } else {
                format!("?{}", kept.join("&"))
            };
            return Ok(DbUrl {
                url: format!("sqlite:{path}{query}"),
                password: None,
            });
        }
        let body = rest.strip_prefix("//").ok_or(ConfigError::MalformedUrl)?;
        let (user, mut password, location) = match userinfo_end(body)? {
            Some(at) => {
                let userinfo = &body[..at];
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, Some(decode(password))),
                    None => (userinfo, None),
                };
                (decode(user), password, &body[at + 1..])
            }
            None => (String::new(), None, body),
        };
        let mut url = url::Url::parse(&format!("{scheme}://{location}"))
            .map_err(|_| ConfigError::MalformedUrl)?;
        // A fragment means nothing to a database, and could only be a misread password.
        url.set_fragment(None);
        if !user.is_empty() {
            url.set_username(&user)
                .map_err(|()| ConfigError::MalformedUrl)?;
        }
        let mut kept = Vec::new();
        for (name, value) in url.query_pairs() {
            match Secret::of(&name) {
                Some(Secret::Password) => {
                    if !value.is_empty() {
                        password = Some(value.into_owned());
                    }
                }
                Some(Secret::Refused(reason)) => {
                    return Err(ConfigError::UnsupportedParameter {
                        parameter: name.into_owned(),
                        reason,
                    });
                }
                None if take(&name, &value)? => {}
                None => kept.push((name.into_owned(), value.into_owned())),
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        Ok(DbUrl {
            url: url.into(),
            password: password.filter(|p| !p.is_empty()),
        })
    }

    /// The URL for the driver: without the password.
    #[cfg(test)]
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The same URL on another `host` (and `port`, if given), for another node of a
    /// cluster; `None` if `host` is no host name or address.
    pub(crate) fn on_host(&self, host: &str, port: Option<u16>) -> Option<DbUrl> {
        let mut url = url::Url::parse(&self.url).ok()?;
        url.set_host(Some(host)).ok()?;
        if let Some(port) = port {
            url.set_port(Some(port)).ok()?;
        }
        Some(DbUrl {
            url: url.into(),
            password: self.password.clone(),
        })
    }

    /// The same server and user with database `name` (the URL's path).
    #[cfg(feature = "testing")]
    pub(crate) fn with_database(&self, name: &str) -> DbUrl {
        let mut url = self.clone();
        if let Ok(mut parsed) = url::Url::parse(&self.url) {
            parsed.set_path(&format!("/{name}"));
            url.url = parsed.into();
        }
        url
    }

    /// The canonical scheme: `postgres`, `mysql` or `sqlite`.
    pub(crate) fn scheme(&self) -> &str {
        self.url.split(':').next().unwrap_or_default()
    }

    /// SeaORM's options for this URL. SeaORM records them (URL included) in trace-level
    /// spans: the password goes to the driver through its own options, never the URL.
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        #[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(unused_mut))]
        let mut options = ConnectOptions::new(self.url.as_str());
        #[cfg(any(feature = "postgres", feature = "mysql"))]
        if let Some(password) = &self.password {
            #[cfg(feature = "postgres")]
            {
                let password = password.clone();
                options.map_sqlx_postgres_opts(move |o| o.password(&password));
            }
            #[cfg(feature = "mysql")]
            {
                let password = password.clone();
                options.map_sqlx_mysql_opts(move |o| o.password(&password));
            }
        }
        options
    }

    /// The password, which [`DbUrl::connect_options`] gives the driver.
    #[cfg(test)]
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The URL as it may be shown: `***` where the password is.
    fn shown(&self) -> String {
        if self.password.is_none() {
            return self.url.clone();
        }
        let Ok(mut url) = url::Url::parse(&self.url) else {
            return self.url.clone();
        };
        match url.set_password(Some("***")) {
            Ok(()) => url.into(),
            Err(()) => self.url.clone(),
        }
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown(), f)
    }
}

/// The canonical scheme (`postgresql:` and `mariadb:` become the schemes SeaORM dispatches
/// on), checked against the enabled backends, and the rest of the URL.
fn scheme(raw: &str) -> Result<(&'static str, &str), ConfigError> {
    let Some((scheme, rest)) = raw.split_once(':') else {
        return Err(ConfigError::MalformedUrl);
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
    {
        return Err(ConfigError::MalformedUrl);
    }
    let unsupported = |reason| ConfigError::UnsupportedScheme {
        scheme: scheme.to_owned(),
        reason,
    };
    let (canonical, enabled) = match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => ("postgres", cfg!(feature = "postgres")),
        "mysql" | "mariadb" => ("mysql", cfg!(feature = "mysql")),
        "sqlite" => ("sqlite", cfg!(feature = "sqlite")),
        _ => {
            return Err(unsupported(
                "expected postgres://, postgresql://, mysql://, mariadb:// or sqlite:",
            ));
        }
    };
    if canonical != "sqlite" && !rest.starts_with("//") {
        return Err(ConfigError::MalformedUrl);
    }
    if !enabled {
        return Err(unsupported(
            "the safe-db feature for this database (postgres, mysql or sqlite) is not enabled",
        ));
    }
    Ok((canonical, rest))
}

/// A query parameter that holds a secret, whatever its case (`Password=` too: the driver
/// would not recognise it and would log it, value included, as an unknown parameter).
enum Secret {
    /// The password: split off like the userinfo's.
    Password,
    /// A secret the driver cannot use: refused, by name only.
    Refused(&'static str),
}

impl Secret {
    fn of(name: &str) -> Option<Secret> {
        let name: String = name
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        match name.as_str() {
            "password" => Some(Secret::Password),
            // libpq's passphrase of an encrypted client key: sqlx cannot decrypt keys, and
            // would pass it on as an unknown parameter, logged at WARN on every connect.
            "sslpassword" => Some(Secret::Refused(
                "the driver (sqlx) cannot decrypt a client key: give `sslkey` an unencrypted \
                 key, readable by the service alone",
            )),
            _ => None,
        }
    }
}

/// Where the userinfo of `body` (the URL after `scheme://`) ends: its last `@`.
///
/// An `@` after a `?` and a `=` is ambiguous: inside a query parameter
/// (`host/db?options=a@b`), or the end of a raw password holding `?` and `=`
/// (`app:8?x=Kp2@db` also reads as host `app`, port 8 and a parameter `x`). Guessing wrong
/// would show the password as a host, a path or a parameter, so the URL is refused: such an
/// `@` in a parameter is written `%40`.
fn userinfo_end(body: &str) -> Result<Option<usize>, ConfigError> {
    let Some(at) = body.rfind('@') else {
        return Ok(None);
    };
    match body[..at].find('?') {
        Some(query) if body[query..at].contains('=') => Err(ConfigError::MalformedUrl),
        _ => Ok(Some(at)),
    }
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<DbUrl, ConfigError> {
        DbUrl::parse(raw, |_, _| Ok(false))
    }

    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    fn hostile_urls_keep_their_password_to_themselves() {
        // (input, password, the URL the driver gets, as shown)
        let cases = [
            (
                "postgres://app:pa/ss9@127.0.0.1:1/db",
                Some("pa/ss9"),
                "postgres://app@127.0.0.1:1/db",
                "postgres://app:***@127.0.0.1:1/db",
            ),
            (
                "postgres://app:p?a#s@s:w@db/x?sslmode=require",
                Some("p?a#s@s:w"),
                "postgres://app@db/x?sslmode=require",
                "postgres://app:***@db/x?sslmode=require",
            ),
            (
                "mysql://root:p%40ss%2F%3F%23%25@[::1]:3306/test",
                Some("p@ss/?#%"),
                "mysql://root@[::1]:3306/test",
                "mysql://root:***@[::1]:3306/test",
            ),
            (
                "mariadb://u:@h/db",
                None,
                "mysql://u@h/db",
                "mysql://u@h/db",
            ),
            (
                "postgres://u@h/db?password=s%3Dcr%26t&application_name=x",
                Some("s=cr&t"),
                "postgres://u@h/db?application_name=x",
                "postgres://u:***@h/db?application_name=x",
            ),
            (
                "postgres://u:pw@h/db?options=a%40b",
                Some("pw"),
                "postgres://u@h/db?options=a%40b",
                "postgres://u:***@h/db?options=a%40b",
            ),
            (
                "postgres:///db?host=/var/run/postgresql",
                None,
                "postgres:///db?host=%2Fvar%2Frun%2Fpostgresql",
                "postgres:///db?host=%2Fvar%2Frun%2Fpostgresql",
            ),
            (
                "sqlite::memory:",
                None,
                "sqlite::memory:",
                "sqlite::memory:",
            ),
        ];
        for (raw, password, driver, shown) in cases {
            let url = parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(url.password(), password, "{raw}");
            assert_eq!(url.url(), driver, "{raw}");
            assert_eq!(url.to_string(), shown, "{raw}");
            assert_eq!(format!("{url:?}"), format!("{shown:?}"), "{raw}");
            if let Some(password) = password {
                for text in [url.url().to_owned(), url.to_string(), format!("{url:?}")] {
                    assert!(!text.contains(password), "{raw}: {text}");
                }
            }
        }
    }

    /// Issue 30, item 5: a raw password holding `?` and `=` read as a host, a port and a
    /// query parameter would be shown (by Display, or in a pool parameter's error).
    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn a_raw_password_holding_query_characters_is_refused_unshown() {
        for raw in [
            "mysql://app:8?x=Kp2Lm9Qz@db",
            "mysql://app:8?pool_size=Kp2Lm9Qz@db",
            "postgres://app:123/Kp2Lm9Qz?y=z@db",
            "postgres://app:a@b?x=Kp2Lm9Qz@db",
            "postgres://h/db?options=Kp2Lm9Qz@b",
        ] {
            let parsed = parse(raw).map(|url| format!("{url} {url:?} {}", url.url()));
            let config = crate::DbConfig::from_url(raw).map(|c| format!("{c} {c:?}"));
            for shown in [format!("{parsed:?}"), format!("{config:?}")] {
                assert!(!shown.contains("Kp2Lm9Qz"), "{raw}: {shown}");
            }
            assert_eq!(parsed.err(), Some(ConfigError::MalformedUrl), "{raw}");
        }
    }

    /// Issue 30, item 6: `password` in any case is the password; `sslpassword` (libpq's
    /// client-key passphrase, which sqlx cannot use) is refused by name, never shown.
    #[test]
    #[cfg(feature = "postgres")]
    fn secret_parameters_are_split_off_or_refused_by_name() {
        for raw in [
            "postgres://u@h/db?Password=Kp2Lm9Qz&sslmode=require",
            "postgres://u@h/db?PASSWORD=Kp2Lm9Qz&sslmode=require",
        ] {
            let url = parse(raw).unwrap();
            assert_eq!(url.password(), Some("Kp2Lm9Qz"), "{raw}");
            assert_eq!(url.url(), "postgres://u@h/db?sslmode=require", "{raw}");
        }
        for (raw, name) in [
            (
                "postgres://u@h/db?sslkey=/k.pem&sslpassword=Kp2Lm9Qz",
                "sslpassword",
            ),
            ("postgres://u@h/db?SSLPassword=Kp2Lm9Qz", "SSLPassword"),
        ] {
            let err = crate::DbConfig::from_url(raw).unwrap_err();
            assert!(
                matches!(&err, ConfigError::UnsupportedParameter { parameter, .. } if parameter == name),
                "{raw}: {err:?}"
            );
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains("Kp2Lm9Qz"), "{raw}: {shown}");
            }
        }
    }

    #[test]
    fn input_that_cannot_be_parsed_is_not_repeated() {
        for raw in [
            "postgres://app:s3cr3t@[::1/db",
            "postgres://app:s3cr3t@host:notaport/db",
            "not a url with s3cr3t",
            "postgres:app:s3cr3t@h",
            // Raw passwords holding `?` and `=` are ambiguous: refused, never shown.
            "postgres://app:#s3cr3t?c=d@db/prod",
            "postgres://app:123/s3cr3t?y=z@db/prod",
            "postgres://app:s3cr3t?c=d@db/prod",
            "postgres://u:s3cr3t@h/db?options=a@b",
        ] {
            let err = parse(raw).err().unwrap_or_else(|| panic!("{raw} parsed"));
            assert!(!err.to_string().contains("s3cr3t"), "{raw}: {err}");
            assert!(!format!("{err:?}").contains("s3cr3t"), "{raw}: {err:?}");
        }
    }
}
