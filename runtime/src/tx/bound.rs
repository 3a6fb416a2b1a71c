//! How long each step of the protocol may wait for the server: a peer that stops answering
//! (a frozen process, a partition) is silent, not refused, and without a bound every wait
//! on it would last for ever.
//!
//! With an operation `timeout`, a step is bounded by the time left, plus [`MARGIN`] for a
//! step that was sent before the deadline (a COMMIT then answered in time still counts).
//! Without one, by the step timeout ([`set_step_timeout`], default
//! [`DEFAULT_STEP_TIMEOUT`]). The statements of the body are the body's: bounded by the
//! operation's `timeout` only.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use sea_orm::DbBackend;
use tokio::time::Instant;

/// How long BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO, COMMIT and ROLLBACK may each wait for
/// the server when the operation has no `timeout`, unless [`set_step_timeout`] says
/// otherwise.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long past its operation's deadline a step sent before it may wait for its answer:
/// the caller has its answer (`Timeout`, or `CommitUnknown` for an unanswered COMMIT) by
/// the deadline plus this.
pub(crate) const MARGIN: Duration = Duration::from_millis(200);

static STEP_MS: AtomicU64 = AtomicU64::new(DEFAULT_STEP_TIMEOUT.as_millis() as u64);

/// Sets how long each step of the protocol (BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO,
/// COMMIT, ROLLBACK) may wait for the server in an operation without a `timeout`
/// (default [`DEFAULT_STEP_TIMEOUT`]). A step that does not answer in time fails; its
/// connection is closed, never reused; a COMMIT that does not answer is
/// [`ErrorKind::CommitUnknown`](crate::ErrorKind::CommitUnknown). One bound,
/// process-wide.
pub fn set_step_timeout(timeout: Duration) {
    let ms = timeout.as_millis().clamp(1, u64::MAX as u128) as u64;
    STEP_MS.store(ms, Ordering::Relaxed);
}

/// The bound of one step of a transaction whose operation ends at `deadline`.
pub(crate) fn step(deadline: Option<Instant>) -> Duration {
    let default = Duration::from_millis(STEP_MS.load(Ordering::Relaxed));
    match deadline {
        Some(deadline) => {
            (deadline.saturating_duration_since(Instant::now()) + MARGIN).min(default)
        }
        None => default,
    }
}

/// The bound of a step that ends at `until`, if a part of it was spent before it (the
/// answer of a statement the body stopped waiting for, read first: `owed.rs`); else as
/// [`step`].
pub(crate) fn step_until(deadline: Option<Instant>, until: Option<Instant>) -> Duration {
    match until {
        Some(until) => until.saturating_duration_since(Instant::now()),
        None => step(deadline),
    }
}

/// Runs one step within `limit`: `None` if it did not answer in time. On SQLite, which has
/// no peer that can hang (a busy database is waited out by its own busy timeout), the step
/// runs untimed, and costs no timer.
pub(crate) fn within<F: Future>(
    backend: DbBackend,
    limit: Duration,
    step: F,
) -> impl Future<Output = Option<F::Output>> {
    if backend == DbBackend::Sqlite {
        Either::Left(step.map(Some))
    } else {
        Either::Right(tokio::time::timeout(limit, step).map(Result::ok))
    }
}
