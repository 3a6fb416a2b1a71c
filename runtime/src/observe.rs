//! What operations report: a `tracing` span each, process-wide counters with a plain
//! snapshot, a slow-operation warning, and (feature `metrics`) the `metrics` facade.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How an operation ended, as recorded in its span and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Committed,
    RolledBack,
    /// The transaction could not begin (unreachable server, exhausted pool, …).
    NotBegun,
    TimedOut,
    Panicked,
    Cancelled,
    /// Joined its caller's transaction without a savepoint (`savepoint = false`) and
    /// returned `Ok`: its work commits or rolls back with the caller's.
    Joined,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Committed => "committed",
            End::RolledBack => "rolled_back",
            End::NotBegun => "not_begun",
            End::TimedOut => "timed_out",
            End::Panicked => "panicked",
            End::Cancelled => "cancelled",
            End::Joined => "joined",
        }
    }
}

static STARTED: AtomicU64 = AtomicU64::new(0);
static COMMITTED: AtomicU64 = AtomicU64::new(0);
static ROLLED_BACK: AtomicU64 = AtomicU64::new(0);
static NOT_BEGUN: AtomicU64 = AtomicU64::new(0);
static RETRIED: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);
static PANICKED: AtomicU64 = AtomicU64::new(0);
static CANCELLED: AtomicU64 = AtomicU64::new(0);
static JOINED: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicU64 = AtomicU64::new(0);
static CALLBACK_FAILURES: AtomicU64 = AtomicU64::new(0);
static ACQUIRE_FAILURES: AtomicU64 = AtomicU64::new(0);
static SLOW_MS: AtomicU64 = AtomicU64::new(DEFAULT_SLOW_THRESHOLD.as_millis() as u64);

/// The slow threshold of the Python guide safe-db started from (session handling with
/// SQLAlchemy and FastAPI): its `performance.log` takes queries over 2 s.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(2);

/// Process-wide operation counters, for services with no metrics exporter.
///
/// Every operation counts once in `started` and, when it ends, once in one of
/// `committed`, `rolled_back`, `not_begun`, `timed_out`, `panicked`, `cancelled` or
/// `joined`; `retried` counts
/// re-runs, `active` the operations under way now.
///
/// ```
/// let before = safe_db::Stats::snapshot();
/// assert!(before.committed <= before.started);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Operations begun (nested ones included).
    pub started: u64,
    /// Operations whose transaction or savepoint committed.
    pub committed: u64,
    /// Operations that rolled back after an error (or a failed commit).
    pub rolled_back: u64,
    /// Operations whose transaction could not begin (unreachable server, exhausted
    /// pool, a conflict at `BEGIN` after the retries): nothing to roll back.
    pub not_begun: u64,
    /// Attempts re-run after a conflict.
    pub retried: u64,
    /// Operations that overran their `timeout`.
    pub timed_out: u64,
    /// Operations whose body panicked.
    pub panicked: u64,
    /// Operations whose future was dropped before they ended.
    pub cancelled: u64,
    /// Operations that joined their caller's transaction without a savepoint
    /// (`savepoint = false`) and returned `Ok`: they commit or roll back with it.
    pub joined: u64,
    /// Operations under way at the moment of the snapshot.
    pub active: u64,
    /// `on_commit` callbacks that failed or panicked.
    pub callback_failures: u64,
    /// Operations that could not get a connection: the pool was exhausted until its
    /// acquire timeout, or a new connection could not be opened (the Python guide's "connection
    /// timeouts").
    pub acquire_failures: u64,
}

impl Stats {
    /// The counters now.
    pub fn snapshot() -> Stats {
        Stats {
            started: STARTED.load(Ordering::Relaxed),
            committed: COMMITTED.load(Ordering::Relaxed),
            rolled_back: ROLLED_BACK.load(Ordering::Relaxed),
            not_begun: NOT_BEGUN.load(Ordering::Relaxed),
            retried: RETRIED.load(Ordering::Relaxed),
            timed_out: TIMED_OUT.load(Ordering::Relaxed),
            panicked: PANICKED.load(Ordering::Relaxed),
            cancelled: CANCELLED.load(Ordering::Relaxed),
            joined: JOINED.load(Ordering::Relaxed),
            active: ACTIVE.load(Ordering::Relaxed),
            callback_failures: CALLBACK_FAILURES.load(Ordering::Relaxed),
            acquire_failures: ACQUIRE_FAILURES.load(Ordering::Relaxed),
        }
    }
}

/// Operations, and statements on pools connected by [`DbConfig`](crate::DbConfig) after
/// this call, that take longer than `threshold` log a warning (default
/// [`DEFAULT_SLOW_THRESHOLD`]). One threshold, process-wide.
pub fn set_slow_threshold(threshold: Duration) {
    SLOW_MS.store(
        threshold.as_millis().min(u128::from(u64::MAX)) as u64,
        Ordering::Relaxed,
    );
}

pub(crate) fn slow_threshold() -> Duration {
    Duration::from_millis(SLOW_MS.load(Ordering::Relaxed))
}

pub(crate) fn started(name: &'static str) {
    STARTED.fetch_add(1, Ordering::Relaxed);
    ACTIVE.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("safe_db_operations_started_total", "operation" => name).increment(1);
        metrics::gauge!("safe_db_operations_active").increment(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

pub(crate) fn retried(name: &'static str) {
    RETRIED.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!("safe_db_operations_retried_total", "operation" => name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

/// An outermost transaction began after `waited` (getting a connection from the pool,
/// opening one if need be, and its `BEGIN`).
#[cfg(feature = "metrics")]
pub(crate) fn connection_waited(name: &'static str, waited: Duration) {
    metrics::histogram!("safe_db_connection_wait_seconds", "operation" => name)
        .record(waited.as_secs_f64());
}

/// An operation could not get a connection.
pub(crate) fn acquire_failed(name: &'static str) {
    ACQUIRE_FAILURES.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!("safe_db_pool_acquire_failures_total", "operation" => name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

pub(crate) fn callback_failed(name: &'static str) {
    CALLBACK_FAILURES.fetch_add(1, Ordering::Relaxed);
    #[cfg(feature = "metrics")]
    metrics::counter!("safe_db_callback_failures_total", "operation" => name).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = name;
}

pub(crate) fn ended(name: &'static str, end: End, elapsed: Duration, span: &tracing::Span) {
    ACTIVE.fetch_sub(1, Ordering::Relaxed);
    let counter = match end {
        End::Committed => &COMMITTED,
        End::RolledBack => &ROLLED_BACK,
        End::NotBegun => &NOT_BEGUN,
        End::TimedOut => &TIMED_OUT,
        End::Panicked => &PANICKED,
        End::Cancelled => &CANCELLED,
        End::Joined => &JOINED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // Skipped when disabled, as every other field of the span (`operation::record`):
    // recorded, a disabled span writes the record through `tracing`'s `log` fallback.
    if !span.is_disabled()
        && let Some(meta) = span.metadata()
    {
        // Both fields in one record: a subscriber formats and stores each record it is
        // given (the `fmt` layer: a lookup, a lock and a format per record).
        let fields = meta.fields();
        if let (Some(outcome), Some(duration)) =
            (fields.field("outcome"), fields.field("duration_ms"))
        {
            let ms = elapsed.as_millis() as u64;
            span.record_all(&fields.value_set(&[
                (&outcome, Some(&end.as_str() as &dyn tracing::Value)),
                (&duration, Some(&ms as &dyn tracing::Value)),
            ]));
        }
    }
    if elapsed >= slow_threshold() {
        span.in_scope(|| {
            tracing::warn!(
                operation = name,
                outcome = end.as_str(),
                duration_ms = elapsed.as_millis() as u64,
                threshold_ms = slow_threshold().as_millis() as u64,
                "slow database operation"
            );
        });
    }
    #[cfg(feature = "metrics")]
    {
        let outcome = end.as_str();
        metrics::counter!(
            "safe_db_operations_ended_total",
            "operation" => name,
            "outcome" => outcome
        )
        .increment(1);
        metrics::histogram!(
            "safe_db_operation_duration_seconds",
            "operation" => name,
            "outcome" => outcome
        )
        .record(elapsed.as_secs_f64());
        metrics::gauge!("safe_db_operations_active").decrement(1.0);
    }
}

/// A connection pool's state: the Python guide's "active connections" and "pool utilisation".
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Connections open, idle or in use.
    pub size: u32,
    /// Open connections waiting in the pool.
    pub idle: u32,
    /// The pool's cap.
    pub max: u32,
}

impl PoolStats {
    /// Reads the pool of a SeaORM connection (`None` for a connection without a pool).
    pub fn of(db: &sea_orm::DatabaseConnection) -> Option<PoolStats> {
        match db.get_database_backend() {
            #[cfg(feature = "postgres")]
            sea_orm::DbBackend::Postgres => {
                Some(PoolStats::read(db.get_postgres_connection_pool()))
            }
            #[cfg(feature = "mysql")]
            sea_orm::DbBackend::MySql => Some(PoolStats::read(db.get_mysql_connection_pool())),
            #[cfg(feature = "sqlite")]
            sea_orm::DbBackend::Sqlite => Some(PoolStats::read(db.get_sqlite_connection_pool())),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    fn read<DB: sea_orm::sqlx::Database>(pool: &sea_orm::sqlx::Pool<DB>) -> PoolStats {
        PoolStats {
            size: pool.size(),
            idle: pool.num_idle() as u32,
            max: pool.options().get_max_connections(),
        }
    }

    /// Connections in use.
    pub fn in_use(&self) -> u32 {
        self.size.saturating_sub(self.idle)
    }

    /// Connections in use over the cap, from 0 to 1.
    pub fn utilisation(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            f64::from(self.in_use()) / f64::from(self.max)
        }
    }

    /// Sets the `safe_db_pool_*` gauges, labelled `pool = name` (feature `metrics`).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn record(&self, name: &'static str) {
        metrics::gauge!("safe_db_pool_size", "pool" => name).set(f64::from(self.size));
        metrics::gauge!("safe_db_pool_idle", "pool" => name).set(f64::from(self.idle));
        metrics::gauge!("safe_db_pool_max", "pool" => name).set(f64::from(self.max));
        metrics::gauge!("safe_db_pool_utilisation", "pool" => name).set(self.utilisation());
    }
}
