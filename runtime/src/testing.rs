//! Testing your own code (feature `testing`): a transaction per test that is always
//! rolled back ([`TestTx`]), with the after-commit callbacks it captured; failures
//! injected into chosen statements or commits of your operations ([`Faults`]); and, on
//! PostgreSQL, a fresh database per test cloned from a template ([`Template`]).
//!
//! ```
//! use safe_db::testing::TestTx;
//! use safe_db::{safe_db_operation, Error, Tx};
//! use sea_orm::{ConnectionTrait, Statement};
//!
//! #[safe_db_operation]
//! async fn add_note(tx: &Tx, text: &str) -> Result<(), Error> {
//!     // The text is bound as a value, never formatted into the SQL.
//!     let sql = "INSERT INTO notes (text) VALUES ($1)";
//!     let insert = Statement::from_sql_and_values(tx.get_database_backend(), sql, [text.into()]);
//!     tx.execute_raw(insert).await?;
//!     tx.on_commit(async { /* send an e-mail */ });
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! # let db = sea_orm::Database::connect("sqlite::memory:").await?;
//! # db.execute_unprepared("CREATE TABLE notes (text TEXT)").await?;
//! let test = TestTx::begin(&db).await?;
//! add_note(&test, "hello").await?; // runs as in production: "commits" into the test
//! assert_eq!(test.captured(), 1); // the e-mail was not sent, but it would be
//! test.rollback().await?; // nothing of the test remains
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::FutureExt;
use sea_orm::{DbBackend, DbErr, RuntimeErr};
use tokio::time::Instant;

use crate::begin::sealed::Sealed;
use crate::tx::Injection;
use crate::{Begin, Connection, Db, InTransaction, Managed, Options, Tx};

pub(crate) mod attr;
mod place;
mod template;

pub use attr::{TestBackend, TestParam, TestResult};
pub use template::{Template, TestDatabase};

/// A transaction for one test, rolled back at its end whatever the test did: when
/// [`TestTx::rollback`] is called, or when it is dropped (a failed assertion, a panic).
///
/// Pass `&test` where your code takes a connection or a `tx`: your operations run as they
/// do in production, nested in it (their commits release a savepoint, their rollbacks roll
/// one back). For code that takes a [`Db`] (a handle kept in a service, the state of an
/// axum router, [`TxLayer`](crate::axum::TxLayer)), pass [`TestTx::db`].
///
/// What cannot be tested this way: a `requires_new` operation runs nested in the test
/// (its commit is not independent of its caller), code that commits on a connection of
/// its own (a plain `DatabaseConnection`, or queries through `Db`'s `Deref`) is outside
/// the test and really commits, and isolation levels (the test transaction's is the
/// server's default, set when it began). Use a database per test for those
/// ([`Template`] on PostgreSQL).
pub struct TestTx {
    tx: Arc<Tx>,
    db: Db,
    /// Where [`TestTx::db`] was called, for the error of a rollback it holds up.
    handed_out: std::sync::Mutex<Vec<&'static std::panic::Location<'static>>>,
}

std::thread_local! {
    /// `TestTx`s alive on this thread, to tell a self-deadlock from an exhausted pool.
    static ALIVE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl TestTx {
    /// Begins the test's transaction on `conn` (a `DatabaseConnection` or a `Db`).
    ///
    /// A pool with no connection left while another `TestTx` is alive on this thread
    /// fails with [`Cause::TestSelfDeadlock`](crate::Cause), whose message says so.
    pub async fn begin(conn: &impl Connection) -> Result<TestTx, DbErr> {
        let mut tx = match conn.__begin(&Options::new(), None).await {
            Ok(tx) => tx,
            Err(err) => {
                let alive = ALIVE.get();
                if alive > 0 && crate::ErrorKind::of(&err) == crate::ErrorKind::PoolExhausted {
                    return Err(crate::cause::raise(crate::Cause::TestSelfDeadlock {
                        alive,
                    }));
                }
                return Err(err);
            }
        };
        tx.enter_test();
        let tx = Arc::new(tx);
        let db = Db::for_test(Arc::clone(&tx));
        ALIVE.set(ALIVE.get() + 1);
        Ok(TestTx {
            tx,
            db,
            handed_out: std::sync::Mutex::default(),
        })
    }

    /// A [`Db`] whose operations all run inside this test's transaction, each in a
    /// savepoint: for code that keeps a `Db`, and for `TxLayer::new(test.db())`.
    /// Operations through it take turns (one savepoint at a time).
    #[track_caller]
    pub fn db(&self) -> Db {
        let mut handed_out = self.handed_out.lock().unwrap_or_else(|e| e.into_inner());
        let here = std::panic::Location::caller();
        if !handed_out.contains(&here) {
            handed_out.push(here);
        }
        self.db.clone()
    }

    /// How many after-commit callbacks have reached the test's transaction: those of
    /// every operation that "committed" into it, not yet run. None once the test's
    /// transaction can no longer commit (an operation joined to it with `savepoint =
    /// false` failed): in production none of them would run.
    pub fn captured(&self) -> usize {
        if self.doomed() {
            return 0;
        }
        self.tx.captured_callbacks()
    }

    /// Runs the captured after-commit callbacks, in the order they were registered, and
    /// returns what each returned (a panic as an `Err`), as Django's
    /// `captureOnCommitCallbacks(execute=True)`. They are gone from the test after this;
    /// none run once the test's transaction can no longer commit (see [`TestTx::captured`]).
    pub async fn run_captured(&self) -> Vec<Result<(), String>> {
        let callbacks = self.tx.take_callbacks();
        if self.doomed() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for callback in callbacks {
            out.push(match AssertUnwindSafe(callback).catch_unwind().await {
                Ok(result) => result,
                Err(_) => Err("the callback panicked".to_owned()),
            });
        }
        out
    }

    /// Whether the test's transaction can no longer commit, as a production transaction
    /// that a failed `savepoint = false` operation joined (or whose tree broke): its
    /// callbacks would never run there. (A failure of an operation with a savepoint of its
    /// own dropped its callbacks with that savepoint already.)
    fn doomed(&self) -> bool {
        self.tx.why_not_join().is_some()
    }

    /// Rolls the test's transaction back now. Fails if a [`TestTx::db`] handle is still
    /// held (a router, a service): the transaction then rolls back when the last is
    /// dropped.
    ///
    /// The error ([`Cause::TestHeld`](crate::Cause)) names where `test.db()` was called.
    pub async fn rollback(self) -> Result<(), DbErr> {
        drop(self.tx.take_callbacks());
        let tx = Arc::clone(&self.tx);
        let taken_at: Vec<String> = self
            .handed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|at| format!("{}:{}", at.file(), at.line()))
            .collect();
        drop(self);
        match Arc::try_unwrap(tx) {
            Ok(tx) => tx.rollback().await,
            Err(_) => Err(crate::cause::raise(crate::Cause::TestHeld { taken_at })),
        }
    }
}

/// Dropped, the test's transaction rolls back once no [`TestTx::db`] handle is left. Its
/// captured callbacks are dropped first: one holding a `TestTx::db()` would otherwise keep
/// the transaction open for ever.
impl Drop for TestTx {
    fn drop(&mut self) {
        drop(self.tx.take_callbacks());
        ALIVE.set(ALIVE.get().saturating_sub(1));
    }
}

impl std::ops::Deref for TestTx {
    type Target = Tx;

    fn deref(&self) -> &Tx {
        &self.tx
    }
}

impl Sealed for TestTx {}
impl Begin for TestTx {
    /// Nested in the test, `requires_new` too.
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        self.tx.__begin(options, deadline)
    }

    fn __join(&self) -> impl Future<Output = Result<Option<&Tx>, DbErr>> + Send {
        std::future::ready(Ok(Some(&*self.tx)))
    }
}
impl InTransaction for TestTx {}
impl Managed for TestTx {}

/// A failure to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Failure {
    /// A serialization failure ([`ErrorKind::SerializationFailure`](crate::ErrorKind),
    /// retried by `retries`): SQLSTATE 40001 (PostgreSQL), 1020 (MariaDB).
    SerializationFailure,
    /// A deadlock (also a `SerializationFailure`): 40P01 (PostgreSQL), 1213 (MariaDB,
    /// which then refuses every later statement, as after a real one).
    Deadlock,
    /// The connection is lost: the server ends the session for real (PostgreSQL's
    /// `pg_terminate_backend`, MariaDB's `KILL`); [`ErrorKind::Unavailable`](crate::ErrorKind).
    LostConnection,
    /// A statement timeout ([`ErrorKind::Timeout`](crate::ErrorKind)): 57014
    /// (PostgreSQL), 1969 (MariaDB).
    Timeout,
    /// A unique violation ([`ErrorKind::UniqueViolation`](crate::ErrorKind)): 23505
    /// (PostgreSQL), 1062 (MariaDB).
    UniqueViolation,
}

impl Failure {
    /// PostgreSQL's SQLSTATE for the failure (also the code of the error made on the
    /// client, on SQLite).
    fn sqlstate(self) -> &'static str {
        match self {
            Failure::SerializationFailure => "40001",
            Failure::Deadlock => "40P01",
            Failure::LostConnection => "57P01",
            Failure::Timeout => "57014",
            Failure::UniqueViolation => "23505",
        }
    }

    /// What the server is sent instead of the statement, so that it answers with the
    /// real error (and PostgreSQL aborts the transaction as it would).
    fn sql(self, backend: DbBackend) -> Option<String> {
        if self == Failure::LostConnection {
            return crate::dialect::testing::end_own_session(backend).map(str::to_owned);
        }
        let message = format!("safe-db testing: injected {self:?}");
        let mysql = match self {
            Failure::SerializationFailure => ("40001", 1020),
            Failure::Deadlock => ("40001", 1213),
            Failure::Timeout => ("70100", 1969),
            _ => ("23000", 1062),
        };
        crate::dialect::testing::raise_error(backend, self.sqlstate(), mysql, &message)
    }

    /// The error itself, where no server can be asked for it (SQLite).
    fn error(self) -> DbErr {
        let message = format!("safe-db testing: injected {self:?}");
        #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
        {
            use sea_orm::sqlx;
            if self == Failure::LostConnection {
                let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, message);
                return DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(io))));
            }
            let unique = self == Failure::UniqueViolation;
            crate::error::Coded::new(message, self.sqlstate(), unique).into_db_err()
        }
    }
}

#[derive(Clone, Debug)]
enum At {
    /// The Nth statement (from 1) sent through the operation's own `tx`.
    Statement(u32),
    Commit,
}

#[derive(Clone, Debug)]
struct Rule {
    operation: String,
    at: At,
    failure: Failure,
    /// How many times it may fire, if not every time.
    times: Option<u32>,
    /// How many times it fired (shared by the copies of the `Faults`).
    fired: Arc<AtomicU32>,
}

impl Rule {
    /// Counts a firing; false if the rule has fired as many times as it may.
    fn fire(&self) -> bool {
        let before = self.fired.fetch_add(1, Ordering::Relaxed);
        if self.times.is_some_and(|k| before >= k) {
            self.fired.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Failures to inject into chosen operations: the Nth statement an operation sends
/// through its own `tx`, or its commit, fails with a chosen [`Failure`], every time or
/// only the first `k` times ([`Faults::times`]: for an operation that retries, its first
/// `k` attempts). Active inside [`Faults::run`]; with the feature `testing` off, none of
/// this is compiled.
///
/// An operation is targeted by the last segments of its path, as Rust writes it:
/// `"orders::create"` or `"Orders::create"` (a method), `"create"` for every operation of
/// that name; a closure is targeted by the name given to
/// [`Options::run_as`](crate::Options::run_as) (`"transaction"` otherwise). A
/// `savepoint = false` operation's statements are targeted as any other's; it has no
/// commit of its own, so a commit fault on it never fires.
///
/// On PostgreSQL and MariaDB the server is sent a statement that fails with the real
/// error (`RAISE … USING ERRCODE`, `SIGNAL … MYSQL_ERRNO`, or the session really ended),
/// so the driver, the server's transaction state and safe-db's handling are those of the
/// real failure; on SQLite the error is made on the client. A failed commit rolls the
/// transaction back and returns the failure, as a failed `COMMIT` does.
///
/// ```
/// use safe_db::testing::{Failure, Faults};
/// use safe_db::{safe_db_operation, Error, Tx};
/// use sea_orm::ConnectionTrait;
///
/// #[safe_db_operation(retries = 3)]
/// async fn bump(tx: &Tx) -> Result<(), Error> {
///     tx.execute_unprepared("UPDATE counter SET n = n + 1").await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # db.execute_unprepared("CREATE TABLE counter (n INTEGER); INSERT INTO counter VALUES (0)").await?;
/// let faults = Faults::new()
///     .fail_statement("bump", 1, Failure::SerializationFailure)
///     .times(2);
/// faults.run(bump(&db)).await?; // fails twice, then commits once
/// assert_eq!(faults.fired(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Faults {
    rules: Vec<Rule>,
}

tokio::task_local! {
    static FAULTS: Faults;
}

impl Faults {
    /// No faults yet.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The `n`th statement (from 1) that the operation at path `operation` (see
    /// [`Faults`]) sends through its own `tx` fails with `failure` (statements of the
    /// operations it calls count as theirs).
    pub fn fail_statement(mut self, operation: &str, n: u32, failure: Failure) -> Faults {
        self.rules.push(Rule {
            operation: operation.to_owned(),
            at: At::Statement(n.max(1)),
            failure,
            times: None,
            fired: Arc::default(),
        });
        self
    }

    /// The commit of operation `operation` (the `RELEASE` of a nested one) fails with
    /// `failure`; its transaction is rolled back.
    pub fn fail_commit(mut self, operation: &str, failure: Failure) -> Faults {
        self.rules.push(Rule {
            operation: operation.to_owned(),
            at: At::Commit,
            failure,
            times: None,
            fired: Arc::default(),
        });
        self
    }

    /// The fault given last fires only the first `k` times its operation reaches it: the
    /// first `k` attempts of an operation that retries, the first `k` calls of one that
    /// does not.
    ///
    /// # Panics
    ///
    /// If no fault was given before it: there is nothing to limit, and a fault armed after
    /// it would fire every time.
    pub fn times(mut self, k: u32) -> Faults {
        let Some(rule) = self.rules.last_mut() else {
            panic!(
                "safe-db testing: `Faults::times({k})` must follow a fault: call \
                 `fail_statement` or `fail_commit` first, then `times`"
            );
        };
        rule.times = Some(k);
        self
    }

    /// Runs `fut` with these faults active (in its task; not in tasks it spawns).
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        FAULTS.scope(self.clone(), fut).await
    }

    /// How many failures were injected so far.
    pub fn fired(&self) -> u32 {
        self.rules
            .iter()
            .map(|rule| rule.fired.load(Ordering::Relaxed))
            .sum()
    }
}

/// The faults armed on one attempt's transaction: the rules of its operation.
#[derive(Debug)]
pub(crate) struct Armed {
    rules: Vec<Rule>,
    sent: AtomicU32,
}

/// What to arm on an attempt of the operation at `path`, if anything.
pub(crate) fn armed(path: &str) -> Option<Box<Armed>> {
    FAULTS
        .try_with(|faults| {
            let rules: Vec<Rule> = faults
                .rules
                .iter()
                .filter(|rule| targets(&rule.operation, path))
                .cloned()
                .collect();
            (!rules.is_empty()).then(|| {
                Box::new(Armed {
                    rules,
                    sent: AtomicU32::new(0),
                })
            })
        })
        .ok()
        .flatten()
}

/// Whether a fault's target names the operation at `path`: its last segments
/// (`function`, `module::function`, `Type::method`, `crate::module::Type::method`), as
/// Rust writes the path, generic arguments left out.
fn targets(target: &str, path: &str) -> bool {
    let path = segments(path);
    let target: Vec<&str> = target.split("::").map(str::trim).collect();
    path.len() >= target.len() && path[path.len() - target.len()..] == target[..]
}

/// The segments of an operation's path as `type_name` spells it
/// (`app::orders::<impl>::Orders::create::__safe_db_here`, `<app::A as app::T>::m::…`,
/// `app::Gen<_>::m::…`): generic arguments and the marker item left out, a qualified
/// `<A as T>` read as `A`.
fn segments(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = path;
    if let Some(inner) = rest.strip_prefix('<') {
        // `<A as T>::rest`: the segments of A, then the rest.
        let mut depth = 1;
        let end = inner
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '<' => depth += 1,
                    '>' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(inner.len(), |(i, _)| i);
        let qualified = &inner[..end];
        let self_ty = qualified.split(" as ").next().unwrap_or(qualified);
        out.extend(segments(self_ty));
        rest = inner[end..]
            .trim_start_matches('>')
            .trim_start_matches("::");
    }
    for segment in rest.split("::") {
        let segment = segment.split('<').next().unwrap_or(segment);
        if !segment.is_empty() && segment != "__safe_db_here" && !segment.starts_with('{') {
            out.push(segment);
        }
    }
    out
}

/// The testing kit plugs into the protocol through this seam: the core asks an
/// [`Injector`](crate::tx::Injector), and never imports the kit.
impl crate::tx::Injector for Armed {
    /// Counts a statement about to be sent; the injection if it is one to fail.
    fn statement(&self, backend: DbBackend) -> Option<Injection> {
        let sent = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let rule = self
            .rules
            .iter()
            .find(|rule| matches!(rule.at, At::Statement(n) if n == sent) && rule.fire())?;
        Some(inject(rule.failure, backend))
    }

    /// The commit's injection, if any, and the error of a server that did not raise it.
    fn commit(&self, backend: DbBackend) -> Option<(Injection, DbErr)> {
        let rule = self
            .rules
            .iter()
            .find(|rule| matches!(rule.at, At::Commit) && rule.fire())?;
        Some((inject(rule.failure, backend), rule.failure.error()))
    }
}

fn inject(failure: Failure, backend: DbBackend) -> Injection {
    match failure.sql(backend) {
        Some(sql) => Injection::Send(sql),
        None => Injection::Fail(failure.error()),
    }
}
