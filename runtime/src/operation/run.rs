//! An attempt's body under its deadline and panic guard, and what runs around each poll.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tracing::Instrument;

use super::Outcome;

/// An attempt's body under the operation's deadline and panic guard (see
/// [`Operation::run`]).
#[doc(hidden)]
pub struct Run<F> {
    pub(super) body: Pin<Box<F>>,
    pub(super) deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) span: Option<tracing::Span>,
    /// The operation's name if its transaction holds a pool connection: what its body
    /// sees in [`HOLDING`] while it runs.
    pub(super) holding: Option<&'static str>,
}

/// Runs `poll` (a body's, a handler's) with `holder`, if any, as the operation whose
/// transaction holds a pool connection for it (see [`HOLDING`]).
pub(crate) fn holding_while<R>(holder: Option<&'static str>, poll: impl FnOnce() -> R) -> R {
    let outer = match holder {
        Some(name) => HOLDING.replace(Some(name)),
        None => HOLDING.get(),
    };
    let out = poll();
    HOLDING.set(outer);
    out
}

thread_local! {
    /// While a body runs (is polled), the innermost enclosing operation whose transaction
    /// holds a pool connection: an operation in that body that cannot get a connection
    /// says that it may be waiting for its own caller.
    pub(super) static HOLDING: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

impl<T, E, F: Future<Output = Result<T, E>>> Future for Run<F> {
    type Output = Outcome<T, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // The body first: one that is ready at the deadline has made it.
        let polled = {
            let _entered = this.span.as_ref().map(tracing::Span::enter);
            let body = this.body.as_mut();
            holding_while(this.holding, || {
                std::panic::catch_unwind(AssertUnwindSafe(|| body.poll(cx)))
            })
        };
        match polled {
            Err(payload) => return Poll::Ready(Outcome::Panicked(payload)),
            Ok(Poll::Ready(result)) => return Poll::Ready(Outcome::Returned(result)),
            Ok(Poll::Pending) => {}
        }
        let timed_out = match &mut this.deadline {
            Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if timed_out {
            Poll::Ready(Outcome::TimedOut)
        } else {
            Poll::Pending
        }
    }
}

/// Runs `fut` in `span`, or bare when no subscriber wants the span: entering and leaving
/// it on every poll was most of the wrapper's cost per transaction when nothing listens
/// (measured in benches/instructions).
///
/// Not an `async fn`: one would hold `fut` twice (the argument, and the future it awaits:
/// rust-lang/rust#62958), and every future passed through it doubled in size (an
/// operation's begin and end were 4-5 KB each, copied into their boxes and allocated
/// past the allocator's small-size caches).
pub(super) fn in_span<F: Future>(
    span: tracing::Span,
    fut: F,
) -> Either<F, tracing::instrument::Instrumented<F>> {
    if span.is_disabled() {
        Either::Left(fut)
    } else {
        Either::Right(fut.instrument(span))
    }
}

/// Records a span field, skipped (with its `log` fallback) when the span is disabled.
pub(super) fn record(span: &tracing::Span, field: &str, value: impl tracing::Value) {
    if !span.is_disabled() {
        span.record(field, value);
    }
}
