//! A PostgreSQL database per test, copied from a template ([`Template`]).
//!
//! A template is prepared once per test run and used from every test, each on a tokio
//! runtime of its own (`#[tokio::test]`), or from every process of the run (nextest runs
//! each test in a process of its own): it keeps no pool, since a pool's connections
//! belong to the runtime that opened them and fail once it shuts down ("A Tokio 1.x
//! context was found, but it is being shutdown"). Each statement on the server gets a
//! connection of its own, on the caller's runtime, closed after it.

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement};

use super::place::{own_name, sweep};
use crate::db_url::DbUrl;
use crate::dialect::testing as dialect;

/// The comment a template carries: what marks a database as one safe-db made (and may
/// drop), and the run it was prepared for.
const MARK: &str = "safe-db template";

/// A PostgreSQL database prepared once (migrations run), from which each test gets a
/// fresh copy in milliseconds (`CREATE DATABASE … TEMPLATE`), dropped after the test: for
/// code that needs real commits (`requires_new`, several connections, isolation levels).
/// Usable from any runtime for the whole run: keep it in a `static`.
///
/// - Under nextest (one process per test), the processes of one run share one template:
///   the first prepares it, under a lock on the server, and the others find it ready
///   (by the run's `NEXTEST_RUN_ID`). Elsewhere each [`Template::prepare`] makes it anew.
/// - Copies left by earlier runs that were killed are swept when a template is prepared:
///   databases named `{name}_{host}_{pid}_{n}`, made on this host by a process that is gone.
/// - It never drops a database it did not make: a template is marked (a comment on the
///   database), and `prepare` refuses a name taken by a database without that mark.
/// - [`Template::drop_template`] drops it at the end of a run.
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
pub(super) async fn on_server(server: &DbUrl, statements: &[&str]) -> Result<(), DbErr> {
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
        // Held on a connection of its own while the template is made, so that processes
        // of one run (nextest's) take turns and all but the first find it ready.
        let mut options = admin.connect_options();
        options.max_connections(1).sqlx_logging(false);
        let locker = Database::connect(options).await?;
        locker.execute_unprepared(dialect::TEMPLATE_LOCK).await?;
        let made = Template::make(&admin, &locker, name, migrate).await;
        let _ = locker.close().await;
        made?;
        Ok(Template {
            admin,
            name: name.to_owned(),
        })
    }

    async fn make<F>(
        admin: &DbUrl,
        locker: &DatabaseConnection,
        name: &str,
        migrate: F,
    ) -> Result<(), DbErr>
    where
        F: AsyncFnOnce(&DatabaseConnection) -> Result<(), DbErr>,
    {
        let run = std::env::var("NEXTEST_RUN_ID").ok();
        let ready = run.as_ref().map(|run| format!("{MARK} {run}"));
        match comment(locker, name).await? {
            Some(None) => {
                return Err(DbErr::Custom(format!(
                    "safe-db: database {name} exists and was not made by a `Template`: it is \
                     never dropped; give the template another name"
                )));
            }
            Some(Some(mark)) if !mark.starts_with(MARK) => {
                return Err(DbErr::Custom(format!(
                    "safe-db: database {name} exists and was not made by a `Template`: it is \
                     never dropped; give the template another name"
                )));
            }
            Some(Some(mark)) if ready.as_ref() == Some(&mark) => return Ok(()),
            Some(Some(_)) => {
                on_server(admin, &[&dialect::drop_database(true, name)]).await?;
            }
            None => {}
        }
        // Copies of this template left by runs that were killed.
        sweep(admin, &format!("{name}_"))
            .await
            .map_err(DbErr::Custom)?;
        let mark = ready.unwrap_or_else(|| format!("{MARK} {}", std::process::id()));
        on_server(
            admin,
            &[
                &dialect::create_database(name),
                &dialect::comment_on_database(name, &mark),
            ],
        )
        .await?;
        let db = Database::connect(admin.with_database(name).connect_options()).await?;
        let migrated = migrate(&db).await;
        db.close().await?;
        migrated
    }

    /// Drops the template (its copies are dropped by each test, or swept by the next
    /// run). Only a database this kit marked as a template is dropped.
    pub async fn drop_template(self) -> Result<(), DbErr> {
        let mut options = self.admin.connect_options();
        options.max_connections(1).sqlx_logging(false);
        let conn = Database::connect(options).await?;
        let mark = comment(&conn, &self.name).await;
        let _ = conn.close().await;
        match mark? {
            Some(Some(mark)) if mark.starts_with(MARK) => {
                let sql = dialect::drop_database(true, &self.name);
                on_server(&self.admin, &[&sql]).await
            }
            _ => Ok(()),
        }
    }

    /// A fresh copy of the template, for one test.
    pub async fn create(&self) -> Result<TestDatabase, DbErr> {
        let name = own_name(&format!("{}_", self.name));
        let create = dialect::create_database_from(&name, &self.name);
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
        let sql = dialect::drop_database(true, &self.name);
        let dropped = on_server(&self.admin, &[&sql]).await;
        drop(self.db);
        dropped
    }
}

/// The comment on database `name`: `None` if there is no such database, `Some(None)` if
/// it has none.
async fn comment(conn: &DatabaseConnection, name: &str) -> Result<Option<Option<String>>, DbErr> {
    let stmt = Statement::from_sql_and_values(
        DbBackend::Postgres,
        dialect::DATABASE_COMMENT,
        [name.into()],
    );
    let Some(row) = conn.query_one_raw(stmt).await? else {
        return Ok(None);
    };
    Ok(Some(row.try_get_by_index::<Option<String>>(0)?))
}
