//! Where a `#[safe_db::test]` runs: a database shared by the tests (set up once per
//! process, under a lock on the server so that processes running at once, as nextest's,
//! take turns), or a database of the test's own, dropped after it. Copies left by
//! processes that died (a killed run) are swept by name the first time a process makes
//! one: only names of the kit's own pattern, made on this host, by a process that is gone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

use super::attr::{Plan, TestBackend};
use super::template::on_server;
use crate::db_url::DbUrl;
use crate::dialect::testing as dialect;

/// The prefix of every database the kit creates for one test.
const PREFIX: &str = "safe_db_t_";

/// The set-ups already run on a shared database by this process: (server URL, set-up).
/// (A tokio mutex: held across the set-up, by tests on runtimes of their own.)
static SET_UP: tokio::sync::Mutex<Vec<(String, &'static str)>> =
    tokio::sync::Mutex::const_new(Vec::new());
/// The servers whose dead copies this process has swept.
static SWEPT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
static MADE: AtomicU32 = AtomicU32::new(0);

/// A test's database and what to do with it afterwards.
pub(crate) struct Place {
    pool: DatabaseConnection,
    own: Option<Own>,
}

enum Own {
    File(PathBuf),
    Server { admin: DbUrl, name: String },
}

fn shown<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

impl Place {
    pub(crate) async fn open(
        backend: TestBackend,
        url: Option<&str>,
        fresh: bool,
        plan: &Plan,
    ) -> Result<Place, String> {
        let place = match (url, fresh) {
            (None, false) => {
                // One connection: each connection to `sqlite::memory:` is a database of
                // its own.
                let mut options = sea_orm::ConnectOptions::new("sqlite::memory:");
                options.max_connections(1).sqlx_logging(false);
                let pool = Database::connect(options).await.map_err(shown)?;
                Place { pool, own: None }
            }
            (None, true) => {
                let n = MADE.fetch_add(1, Ordering::Relaxed);
                let file =
                    std::env::temp_dir().join(format!("{PREFIX}{}_{n}.sqlite", std::process::id()));
                remove_sqlite(&file);
                let url = format!("sqlite://{}?mode=rwc", file.display());
                let mut options = sea_orm::ConnectOptions::new(url);
                options.max_connections(5).sqlx_logging(false);
                let pool = Database::connect(options).await.map_err(shown)?;
                Place {
                    pool,
                    own: Some(Own::File(file)),
                }
            }
            (Some(url), false) => {
                let admin = parse(url, backend)?;
                let pool = connect(&admin).await?;
                set_up_shared(&admin, url, &pool, plan).await?;
                return Ok(Place { pool, own: None });
            }
            (Some(url), true) => {
                let admin = parse(url, backend)?;
                sweep_once(&admin, url).await?;
                let name = own_name(PREFIX);
                on_server(&admin, &[&dialect::create_database(&name)])
                    .await
                    .map_err(shown)?;
                let pool = connect(&admin.with_database(&name)).await?;
                Place {
                    pool,
                    own: Some(Own::Server { admin, name }),
                }
            }
        };
        if let Some((_, setup)) = plan.setup {
            setup(&place.pool).await?;
        }
        Ok(place)
    }

    pub(crate) fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    /// Closes the pool and drops the test's own database, if it has one.
    pub(crate) async fn close(self) {
        let _ = self.pool.close().await;
        match self.own {
            None => {}
            Some(Own::File(file)) => remove_sqlite(&file),
            Some(Own::Server { admin, name }) => {
                if let Err(err) = on_server(&admin, &[&drop_sql(&admin, &name)]).await {
                    eprintln!("safe-db: test database {name} was not dropped: {err}");
                }
            }
        }
    }
}

fn parse(url: &str, backend: TestBackend) -> Result<DbUrl, String> {
    let var = backend.url_var().unwrap_or_default();
    DbUrl::parse(url, |_, _| Ok(false)).map_err(|err| format!("{var}: {err}"))
}

async fn connect(url: &DbUrl) -> Result<DatabaseConnection, String> {
    let mut options = url.connect_options();
    options.max_connections(5).sqlx_logging(false);
    Database::connect(options).await.map_err(shown)
}

fn remove_sqlite(file: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

fn drop_sql(admin: &DbUrl, name: &str) -> String {
    dialect::drop_database(admin.scheme() == "postgres", name)
}

/// Runs the plan's set-up on a shared database once per process, under a lock held on
/// the server (so that concurrent processes do not run it at once; it must be
/// idempotent, as `CREATE TABLE IF NOT EXISTS` is, since each process runs it).
async fn set_up_shared(
    admin: &DbUrl,
    url: &str,
    pool: &DatabaseConnection,
    plan: &Plan,
) -> Result<(), String> {
    let Some((name, setup)) = plan.setup else {
        return Ok(());
    };
    // Held across the set-up: each test runs on a thread of its own, so the tests of this
    // process wait here for the first to finish it.
    let mut done = SET_UP.lock().await;
    if done.iter().any(|(u, n)| u == url && *n == name) {
        return Ok(());
    }
    let (lock, unlock) = dialect::setup_lock(admin.scheme() == "postgres");
    let mut options = admin.connect_options();
    options.max_connections(1).sqlx_logging(false);
    let locker = Database::connect(options).await.map_err(shown)?;
    locker.execute_unprepared(lock).await.map_err(shown)?;
    let ran = setup(pool).await;
    let _ = locker.execute_unprepared(unlock).await;
    let _ = locker.close().await;
    ran?;
    done.push((url.to_owned(), name));
    Ok(())
}

/// A short tag of this host, in the names of the databases made here, so that a sweep
/// never takes another host's.
fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    // FNV-1a.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in host.trim().bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", hash & 0x00ff_ffff)
}

/// The process that made a database of the kit's pattern on this host, if `name` is one.
pub(crate) fn maker(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let rest = rest.strip_prefix(&host_tag())?.strip_prefix('_')?;
    let (pid, n) = rest.split_once('_')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Whether a process is alive, where that can be told (`/proc`); `None` elsewhere, and
/// then nothing is swept.
fn alive(pid: u32) -> Option<bool> {
    std::path::Path::new("/proc/self")
        .exists()
        .then(|| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Drops the databases named `{prefix}{this host}_{pid}_{n}` whose process is gone: copies
/// a killed run left behind. Never a database of another pattern, host or live process.
pub(crate) async fn sweep(admin: &DbUrl, prefix: &str) -> Result<u32, String> {
    let (backend, list) = dialect::list_databases(admin.scheme() == "postgres");
    let mut options = admin.connect_options();
    options.max_connections(1).sqlx_logging(false);
    let conn = Database::connect(options).await.map_err(shown)?;
    let rows = conn
        .query_all_raw(Statement::from_string(backend, list))
        .await;
    let _ = conn.close().await;
    let mut dropped = 0;
    for row in rows.map_err(shown)? {
        let Ok(name) = row.try_get_by_index::<String>(0) else {
            continue;
        };
        let Some(pid) = maker(&name, prefix) else {
            continue;
        };
        if alive(pid) == Some(false) {
            on_server(admin, &[&drop_sql(admin, &name)])
                .await
                .map_err(shown)?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

async fn sweep_once(admin: &DbUrl, url: &str) -> Result<(), String> {
    {
        let mut swept = SWEPT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !swept
            .get_or_insert_with(HashSet::new)
            .insert(url.to_owned())
        {
            return Ok(());
        }
    }
    sweep(admin, PREFIX).await.map(drop)
}

/// A new name of the sweepable pattern: `{prefix}{this host}_{pid}_{n}`.
pub(crate) fn own_name(prefix: &str) -> String {
    let n = MADE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}_{}_{n}", host_tag(), std::process::id())
}
