//! A PostgreSQL database per test, copied from a template ([`Template`]).
//!
//! A template is prepared once per test run and used from every test, each on a tokio
//! runtime of its own (`#[tokio::test]`): it keeps no pool, since a pool's connections
//! belong to the runtime that opened them and fail once it shuts down ("A Tokio 1.x
//! context was found, but it is being shutdown"). Each statement on the server gets a
//! connection of its own, on the caller's runtime, closed after it.

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr};

use crate::db_url::DbUrl;

/// A PostgreSQL database prepared once (migrations run), from which each test gets a
/// fresh copy in milliseconds (`CREATE DATABASE … TEMPLATE`), dropped after the test: for
/// code that needs real commits (`requires_new`, several connections, isolation levels).
/// Usable from any runtime for the whole run: keep it in a `static`.
///
/// The admin URL goes through the parser of [`DbConfig`](crate::DbConfig): its password
/// reaches the driver through its own options (not the URL, which SeaORM records in
/// spans), and an error says what is wrong with the URL without repeating it.
///
/// ```no_run
/// # async fn migrate(_: &sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr> { Ok(()) }
/// # async fn demo() -> Result<(), sea_orm::DbErr> {
/// use safe_db::testing::Template;
/// // Once per test run (e.g. in a `tokio::sync::OnceCell`):
/// let template = Template::prepare("postgres://postgres@localhost/postgres", "app_template", async |db| {
///     migrate(db).await
/// })
/// .await?;
/// // In each test:
/// let test = template.create().await?;
/// // … test.db is a pool on a database of its own …
/// test.drop_database().await?;
/// # Ok(())
/// # }
/// ```
pub struct Template {
    /// The server (password split off), connected to for each statement.
    admin: DbUrl,
    name: String,
    created: AtomicU32,
}

/// A database of one test, copied from a [`Template`].
pub struct TestDatabase {
    /// A pool on the test's database.
    pub db: DatabaseConnection,
    /// Its name.
    pub name: String,
    admin: DbUrl,
}

fn valid_name(name: &str) -> Result<(), DbErr> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DbErr::Custom(format!(
            "safe-db: template name {name:?}: use 1 to 40 lowercase letters, digits and `_`"
        )))
    }
}

/// Runs `statements` on a connection of its own to `server`, on the caller's runtime,
/// and closes it.
async fn on_server(server: &DbUrl, statements: &[&str]) -> Result<(), DbErr> {
    let mut options = server.connect_options();
    options.max_connections(1);
    let conn = Database::connect(options).await?;
    let mut done = Ok(());
    for sql in statements {
        done = conn.execute_unprepared(sql).await.map(drop);
        if done.is_err() {
            break;
        }
    }
    let closed = conn.close().await;
    done.and(closed)
}

impl Template {
    /// Creates (or re-creates) database `name` through the server at `admin_url`, runs
    /// `migrate` on it, and closes it so that it can be copied.
    pub async fn prepare<F>(admin_url: &str, name: &str, migrate: F) -> Result<Template, DbErr>
    where
        F: AsyncFnOnce(&DatabaseConnection) -> Result<(), DbErr>,
    {
        valid_name(name)?;
        let admin = DbUrl::parse(admin_url, |_, _| Ok(false))
            .map_err(|err| DbErr::Custom(format!("safe-db: the template's admin URL: {err}")))?;
        if admin.scheme() != "postgres" {
            return Err(DbErr::Custom(
                "safe-db: templates are a PostgreSQL feature: the admin URL must be \
                 postgres://…"
                    .to_owned(),
            ));
        }
        on_server(
            &admin,
            &[
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                &format!("CREATE DATABASE {name}"),
            ],
        )
        .await?;
        let db = Database::connect(admin.with_database(name).connect_options()).await?;
        let migrated = migrate(&db).await;
        db.close().await?;
        migrated?;
        Ok(Template {
            admin,
            name: name.to_owned(),
            created: AtomicU32::new(0),
        })
    }

    /// A fresh copy of the template, for one test.
    pub async fn create(&self) -> Result<TestDatabase, DbErr> {
        let n = self.created.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_{}_{n}", self.name, std::process::id());
        let create = format!("CREATE DATABASE {name} TEMPLATE {}", self.name);
        on_server(&self.admin, &[&create]).await?;
        let db = Database::connect(self.admin.with_database(&name).connect_options()).await?;
        Ok(TestDatabase {
            db,
            name,
            admin: self.admin.clone(),
        })
    }
}

impl TestDatabase {
    /// Drops the database, ending its sessions (`WITH (FORCE)`: connections still checked
    /// out of the pool do not hold it up), then lets the pool go.
    pub async fn drop_database(self) -> Result<(), DbErr> {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = on_server(&self.admin, &[&sql]).await;
        drop(self.db);
        dropped
    }
}
