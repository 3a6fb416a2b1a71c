//! What `#[safe_db::test]` runs: the test's body once per configured database, each on a
//! tokio runtime of its own, with what its parameter asks for (a [`TestTx`] rolled back
//! after it, or a database of its own dropped after it), and a failure that names the
//! database it happened on.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_util::FutureExt;
use sea_orm::{DatabaseConnection, DbErr};

use super::TestTx;
use super::place::Place;
use crate::Db;

/// A database `#[safe_db::test]` runs a test on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TestBackend {
    /// SQLite: always, embedded (in memory for a [`TestTx`], a file of its own for a
    /// fresh database).
    Sqlite,
    /// PostgreSQL, when `SAFE_DB_TEST_POSTGRES_URL` is set.
    Postgres,
    /// MySQL or MariaDB, when `SAFE_DB_TEST_MYSQL_URL` is set.
    MySql,
}

impl TestBackend {
    /// The environment variable naming this server's URL, if it has one.
    pub(crate) fn url_var(self) -> Option<&'static str> {
        match self {
            TestBackend::Sqlite => None,
            TestBackend::Postgres => Some("SAFE_DB_TEST_POSTGRES_URL"),
            TestBackend::MySql => Some("SAFE_DB_TEST_MYSQL_URL"),
        }
    }

    fn compiled(self) -> bool {
        match self {
            TestBackend::Sqlite => cfg!(feature = "sqlite"),
            TestBackend::Postgres => cfg!(feature = "postgres"),
            TestBackend::MySql => cfg!(feature = "mysql"),
        }
    }
}

/// The connection a set-up is given (named by the attribute's expansion).
#[doc(hidden)]
pub type SetupConnection = DatabaseConnection;

/// The set-up a test asks for (`#[safe_db::test(setup = path)]`), as the attribute wraps
/// it: run on each database before the test, its error shown.
#[doc(hidden)]
pub type Setup =
    for<'a> fn(&'a DatabaseConnection) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// One `#[safe_db::test]`: its name, set-up and databases.
#[doc(hidden)]
pub struct Plan {
    pub(crate) path: &'static str,
    pub(crate) setup: Option<(&'static str, Setup)>,
    only: Option<&'static [TestBackend]>,
}

impl Plan {
    pub fn new(path: &'static str) -> Plan {
        Plan {
            path,
            setup: None,
            only: None,
        }
    }

    /// `name` identifies the set-up (it runs once per process on a shared database).
    pub fn setup(mut self, name: &'static str, setup: Setup) -> Plan {
        self.setup = Some((name, setup));
        self
    }

    pub fn only(mut self, backends: &'static [TestBackend]) -> Plan {
        self.only = Some(backends);
        self
    }

    /// The databases this run has, after the skip-or-fail rule: SQLite always; a server
    /// when its URL is set; a missing URL fails under `CI=true` and is skipped, with a
    /// line on stderr, otherwise.
    fn targets(&self) -> Vec<(TestBackend, Option<String>)> {
        let mut out = Vec::new();
        for backend in [
            TestBackend::Sqlite,
            TestBackend::Postgres,
            TestBackend::MySql,
        ] {
            let asked = self.only.is_none_or(|only| only.contains(&backend));
            if !asked || !backend.compiled() {
                continue;
            }
            let Some(var) = backend.url_var() else {
                out.push((backend, None));
                continue;
            };
            match std::env::var(var).ok().filter(|url| !url.is_empty()) {
                Some(url) => out.push((backend, Some(url))),
                None if std::env::var("CI").is_ok_and(|ci| ci == "true" || ci == "1") => panic!(
                    "safe-db: `{}` needs {backend:?}, but {var} is not set and CI=true",
                    self.path
                ),
                None => eprintln!(
                    "safe-db: `{}` skips {backend:?}: {var} is not set",
                    self.path
                ),
            }
        }
        out
    }
}

/// What a `#[safe_db::test]` body may take: a [`TestTx`] (a transaction rolled back after
/// the test, on a database shared by the tests), or a [`Db`] or `DatabaseConnection` (a
/// database of the test's own, dropped after it: for code that commits for real).
#[diagnostic::on_unimplemented(
    message = "a `#[safe_db::test]` cannot be given `&{Self}`",
    label = "take `&TestTx`, `&Db` or `&DatabaseConnection` here",
    note = "`test: &safe_db::testing::TestTx` runs the test in a transaction rolled back after it;\n\
            `db: &safe_db::Db` (or `&sea_orm::DatabaseConnection`) gives it a database of its own, dropped after it"
)]
pub trait TestParam: Sized {
    /// Whether the parameter needs a database of its own.
    #[doc(hidden)]
    const FRESH: bool;

    #[doc(hidden)]
    fn __make(pool: &DatabaseConnection) -> impl Future<Output = Result<Self, DbErr>>;

    #[doc(hidden)]
    fn __end(self) -> impl Future<Output = Result<(), DbErr>>;
}

impl TestParam for TestTx {
    const FRESH: bool = false;

    async fn __make(pool: &DatabaseConnection) -> Result<Self, DbErr> {
        TestTx::begin(pool).await
    }

    async fn __end(self) -> Result<(), DbErr> {
        self.rollback().await
    }
}

impl TestParam for Db {
    const FRESH: bool = true;

    async fn __make(pool: &DatabaseConnection) -> Result<Self, DbErr> {
        Ok(Db::new(pool.clone(), None))
    }

    async fn __end(self) -> Result<(), DbErr> {
        Ok(())
    }
}

impl TestParam for DatabaseConnection {
    const FRESH: bool = true;

    async fn __make(pool: &DatabaseConnection) -> Result<Self, DbErr> {
        Ok(pool.clone())
    }

    async fn __end(self) -> Result<(), DbErr> {
        Ok(())
    }
}

/// What a `#[safe_db::test]` body may return: `()`, or a `Result` whose `Err` fails the
/// test.
#[diagnostic::on_unimplemented(
    message = "a `#[safe_db::test]` must return `()` or `Result<(), E>`, not `{Self}`",
    label = "return `()` or `Result<(), E>` with `E: Debug`"
)]
pub trait TestResult {
    #[doc(hidden)]
    fn __failure(self) -> Option<String>;
}

impl TestResult for () {
    fn __failure(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Debug> TestResult for Result<(), E> {
    fn __failure(self) -> Option<String> {
        self.err().map(|err| format!("{err:?}"))
    }
}

/// Runs `body` once per database of `plan`, each on a current-thread tokio runtime of its
/// own. A failure (a panic, an `Err`) names the database, after the test's transaction
/// was rolled back or its database dropped.
#[doc(hidden)]
pub fn run<P, R>(plan: Plan, body: impl AsyncFn(&P) -> R)
where
    P: TestParam,
    R: TestResult,
{
    for (backend, url) in plan.targets() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("safe-db: a tokio runtime for the test");
        let outcome = runtime.block_on(async {
            let place = match Place::open(backend, url.as_deref(), P::FRESH, &plan).await {
                Ok(place) => place,
                Err(err) => return Err(Failed::Setup(err)),
            };
            let param = match P::__make(place.pool()).await {
                Ok(param) => param,
                Err(err) => {
                    place.close().await;
                    return Err(Failed::Setup(err.to_string()));
                }
            };
            let ran = AssertUnwindSafe(body(&param)).catch_unwind().await;
            let ended = param.__end().await;
            place.close().await;
            match (ran, ended) {
                (Err(panic), _) => Err(Failed::Panicked(panic)),
                (Ok(result), ended) => match (result.__failure(), ended) {
                    (Some(err), _) => Err(Failed::Returned(err)),
                    (None, Err(err)) => Err(Failed::Ended(err.to_string())),
                    (None, Ok(())) => Ok(()),
                },
            }
        });
        drop(runtime);
        let path = plan.path;
        match outcome {
            Ok(()) => {}
            Err(Failed::Panicked(panic)) => {
                eprintln!("safe-db: `{path}` failed on {backend:?}");
                std::panic::resume_unwind(panic)
            }
            Err(Failed::Returned(err)) => panic!("`{path}` failed on {backend:?}: {err}"),
            Err(Failed::Setup(err)) => {
                panic!("`{path}` could not be set up on {backend:?}: {err}")
            }
            Err(Failed::Ended(err)) => {
                panic!("`{path}` passed on {backend:?}, but its transaction did not end: {err}")
            }
        }
    }
}

enum Failed {
    Setup(String),
    Panicked(Box<dyn std::any::Any + Send>),
    Returned(String),
    Ended(String),
}
