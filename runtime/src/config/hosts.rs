//! `DATABASE_FAILOVER_HOSTS`: the other nodes of a cluster, each as `host[:port]` (the
//! primary's URL, user and password on another host) or as a full database URL (its own
//! user and password, split off by the parser of `DATABASE_URL`).
//!
//! An entry may hold a password (a URL, or a password pasted where a host was expected):
//! an error names the entry's position and what is wrong with it, never its text.

use crate::ConfigError;
use crate::db_url::DbUrl;

/// The nodes of `list` (entries separated by commas, empty ones skipped), of `primary`'s
/// kind of database. A node's URL may hold no parameter for which `pool_parameter` is
/// true: nodes take the primary's pool settings.
pub(super) fn parse(
    primary: &DbUrl,
    list: &str,
    pool_parameter: impl Fn(&str) -> bool,
) -> Result<Vec<DbUrl>, ConfigError> {
    let mut nodes = Vec::new();
    for (index, entry) in list.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let position = index + 1;
        let bad = |problem| ConfigError::FailoverHost { position, problem };
        if primary.scheme() == "sqlite" {
            return Err(bad("SQLite has no other nodes"));
        }
        // `scheme://` makes a URL; anything else is a host, never read as a URL's parts.
        let node = if entry.contains("://") {
            node_url(primary, entry, &pool_parameter, position)?
        } else {
            host_port(primary, entry).map_err(bad)?
        };
        nodes.push(node);
    }
    Ok(nodes)
}

fn node_url(
    primary: &DbUrl,
    entry: &str,
    pool_parameter: &impl Fn(&str) -> bool,
    position: usize,
) -> Result<DbUrl, ConfigError> {
    let bad = |problem| ConfigError::FailoverHost { position, problem };
    let url = DbUrl::parse(entry, |name, _| {
        if pool_parameter(name) {
            return Err(bad(
                "a pool parameter in a node's URL: nodes take the primary's pool settings",
            ));
        }
        Ok(false)
    })
    .map_err(|err| match err {
        // Both name no more than a parameter or a position.
        ConfigError::FailoverHost { .. } | ConfigError::UnsupportedParameter { .. } => err,
        ConfigError::UnsupportedScheme { .. } => {
            bad("a URL of no database safe-db can reach with its enabled features")
        }
        _ => bad(
            "a URL that cannot be parsed (a password holding `,`, or `?` and `=`, must be \
             percent-encoded)",
        ),
    })?;
    if url.scheme() != primary.scheme() {
        return Err(bad("a URL of another kind of database than the primary's"));
    }
    Ok(url)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`: the primary's URL on that host.
fn host_port(primary: &DbUrl, entry: &str) -> Result<DbUrl, &'static str> {
    if entry.contains(['@', '/', '?', '#']) || entry.contains(char::is_whitespace) {
        return Err(
            "not `host[:port]` (a host holds no `@`, `/`, `?`, `#` or space), nor a \
                    URL (which starts with its scheme, e.g. mysql://)",
        );
    }
    let (host, port) = if entry.starts_with('[') {
        let close = entry
            .find(']')
            .ok_or("an IPv6 address without its closing `]`")?;
        let port = match &entry[close + 1..] {
            "" => None,
            rest => Some(
                rest.strip_prefix(':')
                    .ok_or("after an IPv6 address, only `:port`")?,
            ),
        };
        (&entry[..=close], port)
    } else {
        match entry.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("an IPv6 address must be in brackets, e.g. `[::1]:3306`");
            }
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    if host.is_empty() {
        return Err("no host before the port");
    }
    let port = port
        .map(|port| {
            port.parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or("the port is not a number from 1 to 65535")
        })
        .transpose()?;
    primary
        .on_host(host, port)
        .ok_or("not a host name or address")
}

#[cfg(test)]
mod tests {
    use super::super::*;

    /// Issue 30, item 4: each entry is `host[:port]` or a full URL, never misread; an
    /// error names the entry's position and what is wrong, never its text.
    #[test]
    #[cfg(all(feature = "postgres", feature = "mysql"))]
    fn failover_entries_are_hosts_or_urls_and_errors_never_repeat_them() {
        let primary = || DbConfig::from_url("mysql://app:s3cret@db1:3307/shop").unwrap();
        let config = primary()
            .with_failover_hosts("db2, db3:3309,mysql://ops:Kp2Lm9Qz@db4:3310/shop,,[::1]:3311")
            .unwrap();
        let urls: Vec<&str> = config.failover.iter().map(DbUrl::url).collect();
        assert_eq!(
            urls,
            [
                "mysql://app@db2:3307/shop",
                "mysql://app@db3:3309/shop",
                "mysql://ops@db4:3310/shop",
                "mysql://app@[::1]:3311/shop"
            ]
        );
        let passwords: Vec<_> = config.failover.iter().map(DbUrl::password).collect();
        assert_eq!(
            passwords,
            [
                Some("s3cret"),
                Some("s3cret"),
                Some("Kp2Lm9Qz"),
                Some("s3cret")
            ]
        );
        let shown = format!("{config} {config:?}");
        assert!(
            !shown.contains("Kp2Lm9Qz") && !shown.contains("s3cret"),
            "{shown}"
        );
        for (hosts, position) in [
            ("app:Kp2Lm9Qz@db2", 1),
            ("db2:3306, Kp2Lm9Qz@db3", 2),
            ("db2:Kp2Lm9Qz", 1),
            ("db2:3306,db3/Kp2Lm9Qz", 2),
            ("mysql://app:Kp2Lm9Qz@[db2/shop", 1),
            ("db2,,postgres://app:Kp2Lm9Qz@db2/shop", 3),
            ("mysql://app:Kp2Lm9Qz@db2/shop?pool_size=2", 1),
            ("::1:Kp2Lm9Qz", 1),
        ] {
            let err = primary().with_failover_hosts(hosts).unwrap_err();
            assert!(
                matches!(err, ConfigError::FailoverHost { position: p, .. } if p == position),
                "{hosts}: {err:?}"
            );
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains("Kp2Lm9Qz"), "{hosts}: {shown}");
            }
        }
    }
}
