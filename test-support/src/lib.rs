//! Test support for safe-db's own tests (not published): one namespace per test on each
//! configured database, the agent registry schema of the seed, read-backs, and a
//! `tracing` layer that captures what it sees.
//!
//! SQLite (a file in a temporary directory) always runs. PostgreSQL and MariaDB/MySQL run
//! when `SAFE_DB_TEST_POSTGRES_URL` / `SAFE_DB_TEST_MYSQL_URL` are set; otherwise their
//! tests are skipped with one printed line, except under `CI=true`, where a missing or
//! unreachable server fails the test.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};

pub mod capture;
pub mod ledger;
pub mod proxy;

/// The agent registry of the Python service safe-db started from, as a SeaORM entity.
pub mod agent {
    use sea_orm::entity::prelude::*;

    /// An agent of the registry.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "agents")]
    pub struct Model {
        /// Chosen by the caller, so tests know which rows to look for.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        /// Unique.
        pub name: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Which database a [`TestDb`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, in a file of a temporary directory.
    Sqlite,
    /// PostgreSQL, in a schema of its own.
    Postgres,
    /// MySQL or MariaDB, in a database of its own.
    MySql,
}

/// One test's own namespace on one database.
pub struct TestDb {
    /// The database it runs on.
    pub backend: Backend,
    /// A pool on the test's namespace.
    pub db: DatabaseConnection,
    /// The URL of the namespace (for tests that open more pools).
    pub url: String,
    namespace: String,
    admin_url: Option<String>,
    /// A pool on the server itself when `db` goes through PgBouncer: read-backs use it, so
    /// they do not depend on what is tested.
    direct: Option<DatabaseConnection>,
    _dir: Option<tempfile::TempDir>,
}

fn env_url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The URL of `backend`'s server for this run, after the skip-or-fail rule (`None`
/// for SQLite, or for a server not configured outside CI).
pub fn server_url(backend: Backend) -> Option<String> {
    servers()
        .into_iter()
        .find(|(b, _)| *b == backend)
        .map(|(_, url)| url)
}

/// The server URLs configured for this run, after the skip-or-fail rule.
fn servers() -> Vec<(Backend, String)> {
    let mut out = Vec::new();
    for (backend, var) in [
        (Backend::Postgres, "SAFE_DB_TEST_POSTGRES_URL"),
        (Backend::MySql, "SAFE_DB_TEST_MYSQL_URL"),
    ] {
        match env_url(var) {
            Some(url) => out.push((backend, url)),
            None if in_ci() => panic!("CI=true but {var} is not set"),
            None => eprintln!("skipping {backend:?}: {var} is not set"),
        }
    }
    out
}

/// PgBouncer in transaction pooling mode in front of the PostgreSQL server
/// (`SAFE_DB_TEST_PGBOUNCER_URL`), with that server's URL (`SAFE_DB_TEST_POSTGRES_URL`),
/// after the skip-or-fail rule.
pub fn pgbouncer_urls() -> Option<(String, String)> {
    let var = "SAFE_DB_TEST_PGBOUNCER_URL";
    let Some(bouncer) = env_url(var) else {
        if in_ci() {
            panic!("CI=true but {var} is not set");
        }
        eprintln!("skipping PgBouncer: {var} is not set");
        return None;
    };
    let server = server_url(Backend::Postgres)?;
    Some((bouncer, server))
}

/// `url` with sqlx's statement cache off (`statement-cache-capacity=0`).
pub fn without_statement_cache(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}statement-cache-capacity=0")
}

/// Options for a test pool: small, quick to give up, quiet.
pub fn pool_options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    // As DbConfig's pools: a connection left in an unknown state is closed, not reused.
    safe_db::guard_pool_release(&mut options);
    options
}

impl TestDb {
    /// A fresh namespace named after `test` on every configured database, each with the
    /// agent schema and a pool of `max_connections`.
    pub async fn all(test: &str, max_connections: u32) -> Vec<TestDb> {
        TestDb::on(
            &[Backend::Sqlite, Backend::Postgres, Backend::MySql],
            test,
            max_connections,
        )
        .await
    }

    /// Like [`TestDb::all`], for the listed backends only (a behaviour only some have).
    pub async fn on(backends: &[Backend], test: &str, max_connections: u32) -> Vec<TestDb> {
        let out = TestDb::empty_on(backends, test, max_connections).await;
        for t in &out {
            t.create_schema()
                .await
                .unwrap_or_else(|e| panic!("{:?}: schema: {e}", t.backend));
        }
        out
    }

    /// Fresh, empty namespaces on the listed backends, for a schema of the test's own.
    pub async fn empty_on(backends: &[Backend], test: &str, max_connections: u32) -> Vec<TestDb> {
        let mut out = Vec::new();
        if backends.contains(&Backend::Sqlite) {
            out.push(TestDb::empty_sqlite(test, max_connections).await);
        }
        for (backend, url) in servers() {
            if !backends.contains(&backend) {
                continue;
            }
            let db = TestDb::server(backend, &url, test, max_connections)
                .await
                .unwrap_or_else(|e| panic!("{backend:?} at {}: {e}", redact(&url)));
            out.push(db);
        }
        out
    }

    /// A fresh SQLite file database with the agent schema.
    pub async fn sqlite(test: &str, max_connections: u32) -> TestDb {
        let out = TestDb::empty_sqlite(test, max_connections).await;
        out.create_schema().await.expect("schema");
        out
    }

    async fn empty_sqlite(test: &str, max_connections: u32) -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join(format!("{test}.db")).display()
        );
        let db = Database::connect(pool_options(&url, max_connections))
            .await
            .expect("open SQLite");
        TestDb {
            backend: Backend::Sqlite,
            db,
            url,
            namespace: test.to_owned(),
            admin_url: None,
            direct: None,
            _dir: Some(dir),
        }
    }

    async fn server(
        backend: Backend,
        base: &str,
        test: &str,
        max_connections: u32,
    ) -> Result<TestDb, DbErr> {
        let namespace = format!("safe_db_{test}");
        let admin = Database::connect(pool_options(base, 1)).await?;
        let url = match backend {
            Backend::Postgres => {
                admin
                    .execute_unprepared(&format!(
                        "DROP SCHEMA IF EXISTS {namespace} CASCADE; CREATE SCHEMA {namespace}"
                    ))
                    .await?;
                base.to_owned()
            }
            _ => {
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {namespace}"))
                    .await?;
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {namespace}"))
                    .await?;
                replace_database(base, &namespace)
            }
        };
        admin.close().await?;
        let mut options = pool_options(&url, max_connections);
        if backend == Backend::Postgres {
            options.set_schema_search_path(namespace.clone());
        }
        let db = Database::connect(options).await?;
        Ok(TestDb {
            backend,
            db,
            url,
            namespace,
            admin_url: Some(base.to_owned()),
            direct: None,
            _dir: None,
        })
    }

    /// A database of the test's own on the PostgreSQL server, with the agent schema,
    /// reached through PgBouncer in transaction pooling mode ([`pgbouncer_urls`]; `None`
    /// when skipped): `db`, `url` and [`TestDb::pool`] go through PgBouncer, with sqlx's
    /// statement cache off; the read-backs ([`TestDb::agent_ids`], …) and
    /// [`TestDb::direct`] read the server itself. A database, not a schema: a schema is
    /// chosen by `search_path`, a session setting that PgBouncer does not carry from one
    /// server connection to the next.
    pub async fn via_pgbouncer(test: &str, max_connections: u32) -> Option<TestDb> {
        let (bouncer, server) = pgbouncer_urls()?;
        let namespace = format!("safe_db_pgb_{test}");
        let setup = async {
            let admin = Database::connect(pool_options(&server, 1)).await?;
            // FORCE: PgBouncer keeps server connections to the database open.
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {namespace} WITH (FORCE)"))
                .await?;
            admin
                .execute_unprepared(&format!("CREATE DATABASE {namespace}"))
                .await?;
            admin.close().await?;
            let direct =
                Database::connect(pool_options(&replace_database(&server, &namespace), 2)).await?;
            let url = without_statement_cache(&replace_database(&bouncer, &namespace));
            let db = Database::connect(pool_options(&url, max_connections)).await?;
            Ok::<_, DbErr>(TestDb {
                backend: Backend::Postgres,
                db,
                url,
                namespace: namespace.clone(),
                admin_url: Some(server.clone()),
                direct: Some(direct),
                _dir: None,
            })
        };
        let out = setup
            .await
            .unwrap_or_else(|e| panic!("PgBouncer at {}: {e}", redact(&bouncer)));
        out.create_schema()
            .await
            .unwrap_or_else(|e| panic!("PgBouncer: schema: {e}"));
        Some(out)
    }

    /// A pool on the server itself: the one read-backs use (`db` but when `db` goes
    /// through PgBouncer).
    pub fn direct(&self) -> &DatabaseConnection {
        self.direct.as_ref().unwrap_or(&self.db)
    }

    /// Whether a PostgreSQL namespace is a schema (chosen by `search_path`).
    fn in_schema(&self) -> bool {
        self.backend == Backend::Postgres && self.direct.is_none()
    }

    /// Another pool on the same namespace.
    pub async fn pool(&self, max_connections: u32) -> DatabaseConnection {
        Database::connect(self.options(max_connections))
            .await
            .expect("second pool")
    }

    /// The options of [`TestDb::pool`], to change before connecting.
    pub fn options(&self, max_connections: u32) -> ConnectOptions {
        let mut options = pool_options(&self.url, max_connections);
        if self.in_schema() {
            options.set_schema_search_path(self.namespace.clone());
        }
        options
    }

    /// A pool on the same namespace through `proxy` (see [`TestDb::options_via`]).
    pub async fn pool_via(
        &self,
        proxy: &proxy::FaultProxy,
        max_connections: u32,
    ) -> DatabaseConnection {
        Database::connect(self.options_via(proxy, max_connections))
            .await
            .expect("a pool through the proxy")
    }

    /// Like [`TestDb::options`], through `proxy` to the test's server, in plain text (the
    /// proxy reads the messages it is told to freeze after; with TLS compiled in, sqlx
    /// would otherwise encrypt them).
    pub fn options_via(&self, proxy: &proxy::FaultProxy, max_connections: u32) -> ConnectOptions {
        let url = proxy.url(&self.url);
        let plain = match self.backend {
            Backend::Postgres => "sslmode=disable",
            _ => "ssl-mode=DISABLED",
        };
        let separator = if url.contains('?') { '&' } else { '?' };
        let mut options = pool_options(&format!("{url}{separator}{plain}"), max_connections);
        if self.in_schema() {
            options.set_schema_search_path(self.namespace.clone());
        }
        options
    }

    async fn create_schema(&self) -> Result<(), DbErr> {
        // Deferred, so a violation surfaces at COMMIT (not on MySQL, which has no
        // deferred constraints).
        let deferred = match self.backend {
            Backend::MySql => "",
            _ => " DEFERRABLE INITIALLY DEFERRED",
        };
        for sql in [
            "CREATE TABLE agents (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE)"
                .to_owned(),
            format!(
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, agent_id INTEGER NOT NULL \
                 REFERENCES agents (id){deferred})"
            ),
            "CREATE TABLE counters (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)".to_owned(),
        ] {
            self.direct().execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    /// The ids of the agents table, in order: what was really committed.
    pub async fn agent_ids(&self) -> Vec<i32> {
        ids(self.direct(), "SELECT id FROM agents ORDER BY id").await
    }

    /// The ids of the notes table, in order.
    pub async fn note_ids(&self) -> Vec<i32> {
        ids(self.direct(), "SELECT id FROM notes ORDER BY id").await
    }

    /// The name of agent `id`, if it exists.
    pub async fn agent_name(&self, id: i32) -> Option<String> {
        let sql = format!("SELECT name FROM agents WHERE id = {id}");
        let row = self
            .direct()
            .query_one_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                sql,
            ))
            .await
            .expect("read back");
        row.map(|r| r.try_get_by_index(0).expect("name"))
    }

    /// Writes row `id` into `agents` through `pool` as code that does not use safe-db
    /// would, and checks it is committed at once (visible through the test's own pool):
    /// a connection left inside a transaction would hide it.
    pub async fn assert_plain_write_committed(&self, pool: &DatabaseConnection, id: i32) {
        exec(
            pool,
            &format!("INSERT INTO agents (id, name) VALUES ({id}, 'plain{id}')"),
        )
        .await;
        let seen = ids(
            self.direct(),
            &format!("SELECT id FROM agents WHERE id = {id}"),
        )
        .await;
        assert_eq!(
            seen,
            vec![id],
            "{:?}: a plain write on the pool was not committed",
            self.backend
        );
    }

    /// Drops the test's namespace (SQLite's goes with its temporary directory).
    pub async fn cleanup(mut self) {
        let _ = self.db.close().await;
        let own_database = self.direct.is_some();
        if let Some(direct) = self.direct.take() {
            let _ = direct.close().await;
        }
        if let Some(admin_url) = &self.admin_url {
            let admin = Database::connect(pool_options(admin_url, 1))
                .await
                .expect("admin connection");
            let sql = match self.backend {
                // PgBouncer keeps server connections to the database open.
                Backend::Postgres if own_database => {
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.namespace)
                }
                Backend::Postgres => format!("DROP SCHEMA IF EXISTS {} CASCADE", self.namespace),
                _ => format!("DROP DATABASE IF EXISTS {}", self.namespace),
            };
            admin.execute_unprepared(&sql).await.expect("cleanup");
            let _ = admin.close().await;
        }
    }
}

/// Polls `fut` up to `polls` times, sleeping a millisecond between polls (so I/O makes
/// progress), then drops it: cancellation at a chosen await point.
pub async fn poll_then_drop<F: std::future::Future>(fut: F, polls: u32) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Asks `done` every 20 ms until it answers `true` or `within` has passed, for state that
/// settles off the caller's path (a rollback on a task, a session the server or PgBouncer
/// ends a moment later): the test then asserts on that state, which shows what was left.
pub async fn eventually<F, Fut>(within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let by = tokio::time::Instant::now() + within;
    while !done().await && tokio::time::Instant::now() < by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of every row, as integers.
pub async fn ids(db: &impl ConnectionTrait, sql: &str) -> Vec<i32> {
    let stmt = sea_orm::Statement::from_string(db.get_database_backend(), sql.to_owned());
    db.query_all_raw(stmt)
        .await
        .expect("read back")
        .iter()
        .map(|row| row.try_get_by_index::<i32>(0).expect("integer"))
        .collect()
}

/// Runs `sql` on `db` (DDL and writes outside any operation, for set-up).
pub async fn exec(db: &impl ConnectionTrait, sql: &str) {
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The backend of a SeaORM connection, as a [`Backend`].
pub fn backend_of(db: &impl ConnectionTrait) -> Backend {
    match db.get_database_backend() {
        DbBackend::Postgres => Backend::Postgres,
        DbBackend::MySql => Backend::MySql,
        _ => Backend::Sqlite,
    }
}

/// `url` with its database name replaced by `database`.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if s + 3 < at => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            super::replace_database("mysql://root@127.0.0.1:3306/test", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            super::replace_database("mysql://root@h/test?ssl-mode=disabled", "x"),
            "mysql://root@h/x?ssl-mode=disabled"
        );
        assert_eq!(super::redact("pg://u:pw@h/db"), "pg://u:***@h/db");
    }
}
