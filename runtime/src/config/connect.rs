//! Connecting: SeaORM's options built from a [`DbConfig`] (the pool settings under their
//! SeaORM names, statement logging, the release guard), and the primary, the replica and
//! the failover nodes connected into a [`Db`].

use sea_orm::{ConnectOptions, Database};

use super::DbConfig;
use crate::db_url::DbUrl;
use crate::{Db, Error};

impl DbConfig {
    /// SeaORM's options for the primary (they hold the password: do not log them).
    ///
    /// The password is not in their URL: it is set through
    /// `map_sqlx_postgres_opts` / `map_sqlx_mysql_opts`, which SeaORM keeps one of per
    /// driver. Calling either again on these options replaces it, and the password with it;
    /// likewise `map_sqlx_postgres_pool_opts` / `map_sqlx_mysql_pool_opts` replace the
    /// release guard ([`guard_pool_release`](crate::guard_pool_release)).
    pub fn connect_options(&self) -> ConnectOptions {
        self.options_for(&self.url)
    }

    fn options_for(&self, url: &DbUrl) -> ConnectOptions {
        // The password is in the driver's options, not in the URL SeaORM records in spans.
        let mut options = url.connect_options();
        options
            .max_connections(self.max_connections())
            .min_connections(self.pool.pool_size.unwrap_or(0))
            .sqlx_logging(true)
            .sqlx_logging_level(if self.echo {
                log::LevelFilter::Info
            } else {
                log::LevelFilter::Off
            })
            .sqlx_slow_statements_logging_settings(
                log::LevelFilter::Warn,
                crate::observe::slow_threshold(),
            );
        crate::pool::guard_pool_release(&mut options);
        if let Some(t) = self.pool.pool_timeout {
            options.acquire_timeout(t);
        }
        if let Some(recycle) = self.pool.pool_recycle {
            options.max_lifetime(recycle);
        }
        if let Some(ping) = self.pool.pool_pre_ping {
            options.test_before_acquire(ping);
        }
        if let Some(t) = self.pool.connect_timeout {
            options.connect_timeout(t);
        }
        if let Some(t) = self.pool.idle_timeout {
            options.idle_timeout(t);
        }
        options
    }

    /// Connects the primary (and the replica, if any).
    pub async fn connect(&self) -> Result<Db, Error> {
        let mut primary = self.connect_options();
        // With other nodes, the first may be the one that is down: all connect lazily.
        primary.connect_lazy(!self.failover.is_empty());
        let primary = Database::connect(primary).await?;
        let replica = match &self.replica_url {
            Some(url) => Some(Database::connect(self.options_for(url)).await?),
            None => None,
        };
        let mut others = Vec::new();
        for url in &self.failover {
            // Lazily: a node that is down now must not stop the service from starting.
            let mut options = self.options_for(url);
            options.connect_lazy(true);
            others.push(Database::connect(options).await?);
        }
        Ok(Db::new(primary, replica).with_failover(others))
    }
}

// Both tests read a PostgreSQL and a MySQL URL.
#[cfg(all(test, feature = "postgres", feature = "mysql"))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::tests::vars;

    #[test]
    fn pool_parameters_leave_the_url_and_map_to_sea_orm() {
        let c = DbConfig::from_url(
            "postgresql://u:pw@h:5432/db?sslmode=disable&pool_size=20&max_overflow=10&pool_timeout=30&pool_recycle=3600&pool_pre_ping=true&connect_timeout=5&idle_timeout=60",
        )
        .unwrap();
        let o = c.connect_options();
        // The password reaches the driver through its options, not the URL.
        assert_eq!(o.get_url(), "postgres://u@h:5432/db?sslmode=disable");
        assert_eq!(o.get_max_connections(), Some(30));
        assert_eq!(o.get_min_connections(), Some(20));
        assert_eq!(o.get_acquire_timeout(), Some(Duration::from_secs(30)));
        assert_eq!(o.get_max_lifetime(), Some(Some(Duration::from_secs(3600))));
        assert!(o.get_test_before_acquire());
        assert_eq!(o.get_connect_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(o.get_idle_timeout(), Some(Some(Duration::from_secs(60))));
        assert_eq!(o.get_sqlx_logging_level(), log::LevelFilter::Off);
        assert_eq!(
            o.get_sqlx_slow_statements_logging_settings(),
            (log::LevelFilter::Warn, Duration::from_secs(2))
        );
    }

    #[test]
    fn environment_variables_win_over_the_url() {
        let c = DbConfig::from_vars(vars(&[
            ("DATABASE_URL", "mysql://root@h/db?pool_size=2"),
            ("DATABASE_POOL_SIZE", "7"),
            ("DATABASE_MAX_OVERFLOW", "0"),
            ("DATABASE_POOL_RECYCLE", "-1"),
            ("SQLALCHEMY_ECHO", "true"),
        ]))
        .unwrap();
        let o = c.connect_options();
        assert_eq!(o.get_url(), "mysql://root@h/db");
        assert_eq!(o.get_max_connections(), Some(7));
        assert_eq!(o.get_max_lifetime(), Some(None));
        assert_eq!(o.get_sqlx_logging_level(), log::LevelFilter::Info);
    }
}
