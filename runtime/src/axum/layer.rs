//! [`TxLayer`]: each request's transaction, begun on demand, ended after the handler.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http::Request;
use sea_orm::DbErr;

use super::slot::{BeginFuture, Closed, Handle, NewFuture, Slot, Starter};
use crate::operation::{Entered, Operation, Outcome};
use crate::{Begin, Error, ErrorKind, Options, Tx};

/// The layer that gives each request its transaction: see [`RequestTx`](super::RequestTx).
#[derive(Clone)]
pub struct TxLayer<C> {
    conn: C,
    options: Options,
    timeout: Option<std::time::Duration>,
}

impl<C> TxLayer<C>
where
    C: Begin + Clone + Send + Sync + 'static,
{
    /// Request transactions on `conn` (a `DatabaseConnection` or a [`Db`](crate::Db)).
    pub fn new(conn: C) -> Self {
        TxLayer {
            conn,
            options: Options::new(),
            timeout: None,
        }
    }

    /// A deadline for each request, counted from its arrival: a handler still running
    /// then is dropped, its transaction rolled back (the running statement stopped by the
    /// server: PostgreSQL's `statement_timeout`, MariaDB's `max_statement_time`, both set
    /// from this deadline), and the response is a 504 problem. The COMMIT after a handler
    /// that returned in time is never cut short, nor are after-commit callbacks.
    ///
    /// Prefer this to a tower timeout layer. Placed outside `TxLayer`, such a layer can
    /// answer with a timeout for a request that committed (its COMMIT or callbacks were
    /// still running); placed inside, it is safe and answers in time, but the statement it
    /// abandoned runs on in the server, which was not told to stop it.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Request transactions at this isolation level. (A request is not re-run, so there
    /// is no `retries`; its deadline is [`TxLayer::timeout`].)
    pub fn isolation(mut self, isolation: crate::Isolation) -> Self {
        self.options = self.options.isolation(isolation);
        self
    }

    /// Read-only request transactions (on a [`Db`](crate::Db) with a replica, on the
    /// replica).
    pub fn read_only(mut self) -> Self {
        self.options = self.options.read_only();
        self
    }
}

impl<S, C: Clone> tower_layer::Layer<S> for TxLayer<C> {
    type Service = TxService<S, C>;

    fn layer(&self, inner: S) -> TxService<S, C> {
        TxService {
            inner,
            shared: Arc::new(Shared {
                conn: self.conn.clone(),
                options: self.options,
                timeout: self.timeout,
            }),
        }
    }
}

/// The service of [`TxLayer`].
#[derive(Clone)]
pub struct TxService<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

/// What every request through one layer shares: a request takes a reference to it (one
/// `Arc`), not copies of the pool handle.
struct Shared<C> {
    conn: C,
    options: Options,
    timeout: Option<std::time::Duration>,
}

impl<C> Starter for Shared<C>
where
    C: Begin + Clone + Send + Sync + 'static,
{
    fn begin(
        self: Arc<Self>,
        span: tracing::Span,
        arrived: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> BeginFuture {
        Box::pin(async move {
            let mut operation = Operation::for_request(&self.options, arrived, deadline, span);
            let begun = operation.begin_tx(&self.conn).await;
            (operation, begun)
        })
    }

    fn begin_new(
        self: Arc<Self>,
        options: Options,
        deadline: Option<tokio::time::Instant>,
    ) -> NewFuture {
        Box::pin(async move { self.conn.__begin(&options, deadline).await })
    }

    fn options(&self) -> Options {
        self.options
    }
}

/// How the handler ended: `None` when it overran the request's deadline and was dropped,
/// `Some(Err(payload))` when it panicked.
type Called<E> = Option<std::thread::Result<Result<Response, E>>>;

/// One request, from its arrival to its response: what the layer's steps share.
struct Scope<C> {
    shared: Arc<Shared<C>>,
    deadline: Option<tokio::time::Instant>,
}

impl<C> Scope<C>
where
    C: Begin + Clone + Send + Sync + 'static,
{
    /// The request, arrived now, and its slot, whose transaction begins on demand: when
    /// the handler first uses it, as the same operation as any other (the server stops a
    /// statement still running at the request's deadline).
    fn new(shared: &Arc<Shared<C>>) -> (Self, Arc<Slot>, Handle) {
        let arrived = tokio::time::Instant::now();
        let deadline = shared.timeout.and_then(|t| arrived.checked_add(t));
        let (slot, handle) = Slot::open(shared.clone(), arrived, deadline);
        let scope = Scope {
            shared: shared.clone(),
            deadline,
        };
        (scope, slot, handle)
    }

    /// Runs the handler under the request's deadline, catching a panic, and in the
    /// request's span once its transaction was asked for.
    async fn run<F, E>(&self, handler: F, slot: &Slot) -> Called<E>
    where
        F: Future<Output = Result<Response, E>>,
    {
        let mut handler = std::pin::pin!(AssertUnwindSafe(handler).catch_unwind());
        let handler = std::future::poll_fn(move |cx| {
            let _entered = slot
                .span()
                .filter(|span| !span.is_disabled())
                .map(|span| span.enter());
            // Once the request's transaction holds a connection, an operation in the
            // handler that cannot get one says it may be waiting for the request.
            let holds = slot.began();
            // A poll that makes the span (the handler takes its `RequestTx`) enters it
            // there, for the rest of the poll.
            slot.polling(|| {
                crate::operation::holding_while(holds.then_some("request"), || {
                    handler.as_mut().poll(cx)
                })
            })
        });
        match self.deadline {
            None => Some(handler.await),
            Some(deadline) => tokio::time::timeout_at(deadline, handler).await.ok(),
        }
    }

    /// Ends the request once its handler has returned (or panicked), before the response
    /// body is sent: no transaction is held open while a body streams.
    async fn end<E>(
        &self,
        slot: Arc<Slot>,
        handle: Handle,
        called: Called<E>,
    ) -> Result<Response, E> {
        match slot.close(handle).await {
            Closed::Began(tx, operation) => self.conclude(tx, operation, called).await,
            Closed::Unused => match called {
                None => Ok(self.timed_out().into_response()),
                Some(Ok(result)) => result,
                Some(Err(payload)) => std::panic::resume_unwind(payload),
            },
            Closed::StillHeld(operation) => {
                let reason = "a RequestTx outlived its request (moved into a spawned task?): \
                              the request fails, and its transaction is rolled back when that \
                              copy is dropped (until then it holds its connection and locks)";
                if let Some(mut operation) = operation {
                    operation.leave_to_holder(reason);
                }
                tracing::error!("{reason}");
                Ok(
                    Error::new(ErrorKind::Database, "request transaction still in use")
                        .into_response(),
                )
            }
        }
    }

    /// Commits or rolls back the request's transaction from how the handler ended: commit
    /// on a 2xx or 3xx response, rollback on any other, on an error, a panic (resumed) or
    /// the deadline.
    async fn conclude<E>(
        &self,
        tx: Tx,
        mut operation: Operation,
        called: Called<E>,
    ) -> Result<Response, E> {
        match called {
            None => {
                let _ = finish(operation, tx, Outcome::TimedOut).await;
                Ok(self.timed_out().into_response())
            }
            Some(Err(payload)) => {
                let _ = finish(operation, tx, Outcome::Panicked(payload)).await;
                unreachable!("a panic is resumed")
            }
            Some(Ok(Err(err))) => {
                operation.decline(tx, "the service failed").await;
                Err(err)
            }
            Some(Ok(Ok(response))) => {
                let status = response.status();
                if !(status.is_success() || status.is_redirection()) {
                    let reason = format!("the response was {status}");
                    operation.decline(tx, &reason).await;
                    return Ok(response);
                }
                match finish(operation, tx, Outcome::Returned(Ok(()))).await {
                    Ok(()) => Ok(response),
                    // The commit failed: the client must not see a success.
                    Err(commit_error) => Ok(Error::from(commit_error).into_response()),
                }
            }
        }
    }

    fn timed_out(&self) -> Error {
        let limit = self.shared.timeout.unwrap_or_default();
        Error::new(
            ErrorKind::Timeout,
            format!("the request did not complete within its timeout of {limit:?}"),
        )
    }
}

/// Ends the request's operation with `outcome` through the same commit and rollback as any
/// other operation.
async fn finish(
    mut operation: Operation,
    tx: Tx,
    outcome: Outcome<(), DbErr>,
) -> Result<(), DbErr> {
    operation
        .conclude::<(), DbErr>(Entered::Own(tx), outcome, std::convert::identity)
        .await
}

impl<S, C, B> tower_service::Service<Request<B>> for TxService<S, C>
where
    S: tower_service::Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send,
    C: Begin + Clone + Send + Sync + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let (this, slot, handle) = Scope::new(&self.shared);
        request.extensions_mut().insert(handle.clone());
        // Called here, by the service that was polled ready: no copy of it is needed.
        let handler = self.inner.call(request);
        Box::pin(async move {
            let called = this.run(handler, &slot).await;
            this.end(slot, handle, called).await
        })
    }
}
