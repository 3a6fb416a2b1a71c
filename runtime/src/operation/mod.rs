//! The one implementation of an operation's semantics, shared by `#[safe_db_operation]`
//! and [`Options::run`]: begin, run the body under a deadline and a panic guard, then
//! commit, roll back or retry.

mod callbacks;
mod joined;
mod name;
mod retry;
mod run;
mod span;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use sea_orm::DbErr;
use tokio::time::Instant;

use crate::observe::{self, End};
use crate::{Begin, ErrorKind, Options, Tx};
use callbacks::Callbacks;
pub(crate) use joined::Joined;
pub use name::OpName;
use retry::Retry;
pub use run::Run;
#[cfg(feature = "axum")]
pub(crate) use run::holding_while;
use run::{HOLDING, in_span, record};

/// How a body ended.
#[doc(hidden)]
pub enum Outcome<T, E> {
    Returned(Result<T, E>),
    Panicked(Box<dyn Any + Send>),
    TimedOut,
}

/// What the operation does after an attempt.
#[doc(hidden)]
pub enum Next<T, E> {
    Done(Result<T, E>),
    Retry,
}

/// How an attempt's transaction ended, before any retry is decided.
enum Ended<T, E> {
    /// Committed, or failed in a way another attempt would not mend.
    Final(Result<T, E>),
    /// Failed with a conflict it lost (or, on a `Db` with failover, its connection):
    /// another attempt may succeed.
    Conflict(Failure<E>),
}

/// An attempt's failure: safe-db's (made the operation's error only if it is the answer)
/// or the body's own.
enum Failure<E> {
    Db(DbErr),
    Body(E),
}

impl<T, E> Ended<T, E> {
    /// A failure: one another attempt may mend if `conflicted`, else the answer.
    fn failed(conflicted: bool, failure: Failure<E>, into: fn(DbErr) -> E) -> Self {
        if conflicted {
            Ended::Conflict(failure)
        } else {
            Ended::Final(Err(failure.into_error(into)))
        }
    }

    /// The answer, when no other attempt follows.
    fn into_result(self, into: fn(DbErr) -> E) -> Result<T, E> {
        match self {
            Ended::Final(result) => result,
            Ended::Conflict(failure) => Err(failure.into_error(into)),
        }
    }
}

impl<E> Failure<E> {
    fn into_error(self, into: fn(DbErr) -> E) -> E {
        match self {
            Failure::Db(err) => into(err),
            Failure::Body(err) => err,
        }
    }
}

/// What an attempt's body runs in: a transaction of its own (outermost, or a savepoint of
/// the caller's), or the caller's own, joined without a savepoint (`savepoint = false`).
#[doc(hidden)]
pub enum Entered<'c> {
    Own(Tx),
    Joined(Joined<'c>),
}

impl Entered<'_> {
    /// The transaction the body works with.
    #[inline]
    pub fn tx(&self) -> &Tx {
        match self {
            Entered::Own(tx) => tx,
            Entered::Joined(joined) => joined.tx,
        }
    }
}

/// One call of an operation, across its attempts.
#[doc(hidden)]
pub struct Operation {
    name: &'static str,
    /// What `Faults` targets.
    #[cfg(feature = "testing")]
    path: &'static str,
    options: Options,
    /// The attempt under way, the retries left and the deadline.
    retry: Retry,
    started: Instant,
    /// Made when the operation is first entered (see [`Operation::enter`]).
    span: tracing::Span,
    span_made: bool,
    /// The depth the span was made with, if known then (see [`Operation::span_under`]).
    span_depth: Option<u32>,
    ended: bool,
    /// Whether this attempt's transaction is an outermost one, holding a pool connection.
    outermost: bool,
}

impl Operation {
    pub fn new(options: &Options, name: OpName) -> Self {
        let started = Instant::now();
        // A timeout too large to add is no deadline at all.
        let deadline = options.timeout.and_then(|t| started.checked_add(t));
        #[cfg_attr(not(feature = "testing"), allow(unused_mut))]
        let mut operation =
            Operation::starting(options, name.name, started, deadline, tracing::Span::none());
        operation.span_made = false;
        #[cfg(feature = "testing")]
        {
            operation.path = name.path;
        }
        operation
    }

    /// The operation of a web request's transaction, begun when the handler first uses
    /// it: timed from the request's arrival, under the request's deadline, in the span
    /// made then.
    #[cfg(feature = "axum")]
    pub(crate) fn for_request(
        options: &Options,
        arrived: Instant,
        deadline: Option<Instant>,
        span: tracing::Span,
    ) -> Self {
        Operation::starting(options, "request", arrived, deadline, span)
    }

    fn starting(
        options: &Options,
        name: &'static str,
        started: Instant,
        deadline: Option<Instant>,
        span: tracing::Span,
    ) -> Self {
        observe::started(name);
        Operation {
            name,
            #[cfg(feature = "testing")]
            path: name,
            options: *options,
            retry: Retry::new(options.retries, deadline),
            started,
            span,
            span_made: true,
            span_depth: Some(0),
            ended: false,
            outermost: false,
        }
    }

    /// Rolls back a transaction whose body did not fail but must not commit, for
    /// `reason` (a request answered with an error status), recorded in the span.
    #[cfg(feature = "axum")]
    pub(crate) async fn decline(&mut self, tx: Tx, reason: &str) {
        record(&self.span, "reason", reason);
        let span = self.span.clone();
        in_span(span, self.rollback(tx)).await;
        self.record_end(End::RolledBack);
    }

    /// The transaction cannot be ended here: it is left to whoever still holds it, and
    /// rolls back when they let go. Recorded as rolled back, for `reason`.
    #[cfg(feature = "axum")]
    pub(crate) fn leave_to_holder(&mut self, reason: &str) {
        record(&self.span, "reason", reason);
        self.record_end(End::RolledBack);
    }

    fn record_end(&mut self, end: End) {
        self.ended = true;
        observe::ended(self.name, end, self.started.elapsed(), &self.span);
    }

    /// How to get out of a self-deadlock on the pool.
    fn self_deadlock_advice(&self) -> &'static str {
        if self.options.requires_new {
            "A `requires_new` operation needs a connection besides its caller's: make the \
             pool larger than the number of callers that hold one"
        } else {
            "Pass the caller's `tx` instead of the connection to run it inside that \
             transaction"
        }
    }

    /// `fut`, failing with the operation's timeout error at its deadline. Not an `async
    /// fn`, which would hold `fut` twice (see [`in_span`]).
    fn within_deadline<F: Future<Output = Result<R, DbErr>>, R>(
        &self,
        fut: F,
    ) -> impl Future<Output = Result<R, DbErr>> + use<F, R> {
        match self.retry.remaining() {
            None => Either::Left(fut),
            Some(left) => {
                let (name, limit) = (self.name, self.options.timeout.unwrap_or_default());
                Either::Right(
                    tokio::time::timeout(left, fut)
                        .map(move |done| done.unwrap_or_else(|_| Err(timeout_error(name, limit)))),
                )
            }
        }
    }

    /// Enters what the next attempt's body runs in: a transaction of its own, begun here,
    /// or, for an operation with `savepoint = false` called with a transaction, that
    /// transaction, joined (nothing begins).
    pub async fn enter<'c, C: Begin + ?Sized>(
        &mut self,
        conn: &'c C,
    ) -> Result<Entered<'c>, DbErr> {
        if !self.span_made {
            // Here rather than in `new`: the conn may name the parent.
            self.span_depth = (self.options.requires_new || conn.__from_pool()).then_some(0);
            self.span = Operation::span_under(
                conn.__span_parent(),
                &self.options,
                self.name,
                self.span_depth,
            );
            self.span_made = true;
        }
        if !self.options.savepoint
            && !self.options.requires_new
            // Boxed: this rare path would otherwise add to every operation's future.
            && let Some(joined) = Box::pin(self.join(conn)).await?
        {
            return Ok(Entered::Joined(joined));
        }
        self.begin_tx(conn).await.map(Entered::Own)
    }

    /// Begins the transaction of the next attempt. A conflict at `BEGIN` (SQLite busy)
    /// is retried like any other when retries are allowed.
    pub(crate) async fn begin_tx<C: Begin + ?Sized>(&mut self, conn: &C) -> Result<Tx, DbErr> {
        let span = self.span.clone();
        in_span(span, self.begin_attempt(conn)).await
    }

    async fn begin_attempt<C: Begin + ?Sized>(&mut self, conn: &C) -> Result<Tx, DbErr> {
        loop {
            let attempt = self.retry.next_attempt();
            // Read only for the connection-wait histogram (feature `metrics`).
            #[cfg(feature = "metrics")]
            let asked = Instant::now();
            // The server stops a statement that would overrun the deadline, so a timed-out
            // operation leaves nothing running and its connection is reusable.
            let begun = self
                .within_deadline(conn.__begin(&self.options, self.retry.deadline()))
                .await;
            let from_pool = self.options.requires_new || conn.__from_pool();
            if let Err(err) = &begun
                && from_pool
                && ErrorKind::of(err) == ErrorKind::Timeout
                && let Some(holder) = HOLDING.get()
            {
                // The operation's own timeout ran out first: maybe waiting for a connection.
                tracing::error!(
                    operation = self.name,
                    holder,
                    "the transaction could not begin within the operation's timeout while \
                     this task is inside operation `{holder}`, whose transaction holds a \
                     connection: if both use the same pool and it has no connection left, \
                     this is a self-deadlock. {}",
                    self.self_deadlock_advice()
                );
            }
            if let Err(err) = &begun
                && from_pool
                && matches!(
                    ErrorKind::of(err),
                    ErrorKind::PoolExhausted | ErrorKind::Unavailable
                )
            {
                observe::acquire_failed(self.name);
                if let Some(holder) = HOLDING.get()
                    && ErrorKind::of(err) == ErrorKind::PoolExhausted
                {
                    // Not an outage: most likely a self-deadlock.
                    tracing::error!(
                        operation = self.name,
                        holder,
                        "the pool is exhausted while this task is inside operation `{holder}`, \
                         whose transaction holds a connection: if both use the same pool, \
                         `{holder}` waits for this operation, which waits for a connection only \
                         `{holder}` can give back (a self-deadlock, not an outage). {}",
                        self.self_deadlock_advice()
                    );
                }
            }
            match begun {
                #[allow(unused_mut)]
                Ok(mut tx) => {
                    #[cfg(feature = "testing")]
                    tx.arm(
                        crate::testing::armed(self.path)
                            .map(|armed| armed as Box<dyn crate::tx::Injector>),
                    );
                    self.record_attempt(attempt, Some(tx.depth()));
                    self.outermost = tx.depth() == 0;
                    if self.outermost {
                        #[cfg(feature = "metrics")]
                        observe::connection_waited(self.name, asked.elapsed());
                    }
                    return Ok(tx);
                }
                Err(err) => {
                    if ErrorKind::of(&err).is_retryable()
                        && let Some(pause) = self.retry.pause()
                    {
                        self.pause_before_retry(pause).await;
                        continue;
                    }
                    self.record_attempt(attempt, None);
                    self.record_end(match ErrorKind::of(&err) {
                        ErrorKind::Timeout => End::TimedOut,
                        _ => End::NotBegun,
                    });
                    return Err(err);
                }
            }
        }
    }

    /// Runs one attempt's body under the operation's deadline, catching a panic.
    ///
    /// The body is boxed here, once per attempt, and never moved again: an operation's
    /// future holds a pointer to its body, not the body itself, so a chain of nested
    /// operations does not grow with every level (futures moved by value into `async fn`
    /// wrappers are counted more than once, rust-lang/rust#62958).
    pub fn run<T, E, F>(&self, body: F) -> Run<F>
    where
        F: Future<Output = Result<T, E>>,
    {
        Run {
            body: Box::pin(body),
            deadline: self
                .retry
                .deadline()
                .map(|d| Box::pin(tokio::time::sleep_until(d))),
            // The body runs in the operation's span: nested operations become its children.
            span: (!self.span.is_disabled()).then(|| self.span.clone()),
            holding: self.outermost.then_some(self.name),
        }
    }

    /// [`Operation::enter`], on the heap: the operation's future then holds a pointer, not
    /// the begin's whole future, and a chain of nested operations, each level of which is
    /// polled through its caller's frame, keeps small frames in debug builds too (the big
    /// future is made here, not in the caller's frame).
    #[inline(never)]
    pub fn enter_boxed<'c, C: Begin + ?Sized>(
        &mut self,
        conn: &'c C,
    ) -> Pin<Box<impl Future<Output = Result<Entered<'c>, DbErr>>>> {
        Box::pin(self.enter(conn))
    }

    /// [`Operation::conclude`], on the heap (see [`Operation::enter_boxed`]).
    #[inline(never)]
    pub fn conclude_boxed<'o, T, E>(
        &'o mut self,
        entered: Entered<'o>,
        outcome: Outcome<T, E>,
        into: fn(DbErr) -> E,
    ) -> Pin<Box<impl Future<Output = Result<T, E>>>> {
        Box::pin(self.conclude(entered, outcome, into))
    }

    /// [`Operation::conclude_or_retry`], on the heap (see [`Operation::enter_boxed`]).
    #[inline(never)]
    pub fn conclude_or_retry_boxed<'o, T, E>(
        &'o mut self,
        entered: Entered<'o>,
        outcome: Outcome<T, E>,
        into: fn(DbErr) -> E,
        retryable: fn(&E) -> bool,
    ) -> Pin<Box<impl Future<Output = Next<T, E>>>> {
        Box::pin(self.conclude_or_retry(entered, outcome, into, retryable))
    }

    /// Ends the one attempt of an operation without retries: commits or rolls back.
    /// `into` makes the operation's error from a database error (the expansion passes one
    /// instantiated with the user's return type, so that an error type without
    /// `From<DbErr>` is reported once, there).
    pub async fn conclude<T, E>(
        &mut self,
        entered: Entered<'_>,
        outcome: Outcome<T, E>,
        into: fn(DbErr) -> E,
    ) -> Result<T, E> {
        let tx = match entered {
            Entered::Own(tx) => tx,
            Entered::Joined(joined) => return self.conclude_joined(joined, outcome, into),
        };
        let ended = self.end_attempt(tx, outcome, None, into).await;
        // Without retries, a conflict is the answer.
        self.ended_with(ended.into_result(into))
    }

    /// Ends an attempt: commits, rolls back, or rolls back and asks for another attempt.
    /// `retryable` says whether an error the body returned is a conflict (see
    /// `__private::Probe`).
    pub async fn conclude_or_retry<T, E>(
        &mut self,
        entered: Entered<'_>,
        outcome: Outcome<T, E>,
        into: fn(DbErr) -> E,
        retryable: fn(&E) -> bool,
    ) -> Next<T, E> {
        let tx = match entered {
            Entered::Own(tx) => tx,
            // The caller's transaction retries as a whole, if at all.
            Entered::Joined(joined) => {
                return Next::Done(self.conclude_joined(joined, outcome, into));
            }
        };
        // A nested operation shares its caller's transaction: only the outermost retries.
        let outermost = tx.depth() == 0;
        let ended = self.end_attempt(tx, outcome, Some(retryable), into).await;
        if let Ended::Conflict(_) = ended
            && outermost
            && let Some(pause) = self.retry.pause()
        {
            let span = self.span.clone();
            in_span(span, self.pause_before_retry(pause)).await;
            return Next::Retry;
        }
        Next::Done(self.ended_with(ended.into_result(into)))
    }

    /// The end of an operation's last attempt: a commit, a timeout and a panic record
    /// their end where they happen; what is left unrecorded is a rollback.
    fn ended_with<T, E>(&mut self, result: Result<T, E>) -> Result<T, E> {
        if !self.ended {
            self.record_end(End::RolledBack);
        }
        result
    }

    /// Ends an attempt's transaction as the body's outcome says (the protocol's steps are
    /// `Tx`'s), in the operation's span. `retryable`: none for an operation without
    /// retries.
    /// Not an `async fn`, which would hold its arguments twice (see [`in_span`]).
    fn end_attempt<T, E>(
        &mut self,
        tx: Tx,
        outcome: Outcome<T, E>,
        retryable: Option<fn(&E) -> bool>,
        into: fn(DbErr) -> E,
    ) -> impl Future<Output = Ended<T, E>> {
        let span = self.span.clone();
        in_span(span, self.decide(tx, outcome, retryable, into))
    }

    /// The policy: what the body's outcome means for the transaction, and whether the
    /// failure, if any, is one another attempt may mend (the retry itself is decided by
    /// the caller, [`Operation::conclude_or_retry`]).
    async fn decide<T, E>(
        &mut self,
        tx: Tx,
        outcome: Outcome<T, E>,
        retryable: Option<fn(&E) -> bool>,
        into: fn(DbErr) -> E,
    ) -> Ended<T, E> {
        match outcome {
            Outcome::Returned(Ok(value)) => {
                if let Some(err) = tx.why_not_commit(self.name).await {
                    let conflicted = tx.lost_retryably();
                    // Rollbacks boxed: inline, each adds to every operation's end's size.
                    Box::pin(self.rollback(tx)).await;
                    return Ended::failed(conflicted, Failure::Db(err), into);
                }
                match tx.commit(self.name).await {
                    Ok(callbacks) => {
                        // Committed, whatever happens to the callbacks (or to this future
                        // while they run).
                        self.record_end(End::Committed);
                        Callbacks::new(self.name, callbacks).run().await;
                        Ended::Final(Ok(value))
                    }
                    Err(err) => {
                        Ended::failed(ErrorKind::of(&err).is_retryable(), Failure::Db(err), into)
                    }
                }
            }
            Outcome::Returned(Err(err)) => {
                // A conflict this tree lost, or one the body passes on from another
                // transaction (a `requires_new` operation's, already rolled back): either
                // way re-running the whole operation is safe.
                let conflicted = tx.lost_retryably() || retryable.is_some_and(|r| r(&err));
                Box::pin(self.rollback(tx)).await;
                Ended::failed(conflicted, Failure::Body(err), into)
            }
            Outcome::Panicked(payload) => {
                Box::pin(self.rollback(tx)).await;
                self.record_end(End::Panicked);
                std::panic::resume_unwind(payload)
            }
            Outcome::TimedOut => {
                // The caller has its answer now: an outermost rollback, which may wait
                // behind a statement the server has not stopped yet, goes on without it.
                Box::pin(tx.rollback_later()).await;
                self.record_end(End::TimedOut);
                Ended::Final(Err(into(self.timeout_error())))
            }
        }
    }

    /// Rolls back; a rollback that fails is logged (the transaction is over either way).
    async fn rollback(&self, tx: Tx) {
        let depth = tx.depth();
        if let Err(err) = tx.rollback().await {
            tracing::warn!(
                operation = self.name,
                depth,
                error = %crate::error::redact(&err.to_string()),
                "rollback failed"
            );
        }
    }

    fn timeout_error(&self) -> DbErr {
        timeout_error(self.name, self.options.timeout.unwrap_or_default())
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        // Dropped before it ended: the caller cancelled it.
        if !self.ended {
            self.record_end(End::Cancelled);
        }
    }
}

/// The operation's timeout ran out ([`Cause::TimedOut`](crate::Cause::TimedOut)).
fn timeout_error(operation: &'static str, limit: Duration) -> DbErr {
    crate::cause::raise(crate::Cause::TimedOut { operation, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_error_is_classified_as_timeout() {
        let err = timeout_error("f", Duration::from_millis(250));
        assert_eq!(ErrorKind::of(&err), ErrorKind::Timeout);
        assert_eq!(
            crate::Cause::of(&err),
            Some(&crate::Cause::TimedOut {
                operation: "f",
                limit: Duration::from_millis(250)
            })
        );
        assert!(
            err.to_string()
                .contains("operation `f` did not complete within its timeout of 250ms")
        );
    }
}
