//! [`TxLayer`]: each request's transaction, begun on demand, ended after the handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::response::{IntoResponse, Response};
use http::Request;
use sea_orm::DbErr;

use super::future::TxFuture;
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
pub(super) type Called<E> = Option<std::thread::Result<Result<Response, E>>>;

/// One request, from its arrival to its response: what the layer's steps share.
pub(super) struct Scope<C> {
    shared: Arc<Shared<C>>,
    pub(super) deadline: Option<tokio::time::Instant>,
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

    /// Ends the request once its handler has returned (or panicked, or its deadline
    /// passed), before the response body is sent: no transaction is held open while a body
    /// streams. `Err` if the request's transaction began: its `conclude` is then to be
    /// awaited.
    // The `Err` (a transaction to conclude) is moved once, into its boxed conclusion.
    #[allow(clippy::result_large_err)]
    pub(super) fn end_unbegun<E>(
        &self,
        closed: Closed,
        called: Called<E>,
    ) -> Result<Result<Response, E>, (Tx, Operation, Called<E>)> {
        Ok(match closed {
            Closed::Began(tx, operation) => return Err((tx, operation, called)),
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
        })
    }

    /// [`end_unbegun`](Self::end_unbegun), then the conclusion of a transaction that
    /// began, once the slot's gate is free (a `RequestTx` still beginning elsewhere).
    pub(super) async fn end<E>(
        self,
        slot: Arc<Slot>,
        handle: Handle,
        called: Called<E>,
    ) -> Result<Response, E> {
        match self.end_unbegun(slot.close(handle).await, called) {
            Ok(response) => response,
            Err((tx, operation, called)) => self.conclude(tx, operation, called).await,
        }
    }

    /// Commits or rolls back the request's transaction from how the handler ended: commit
    /// on a 2xx or 3xx response, rollback on any other, on an error, a panic (resumed) or
    /// the deadline.
    pub(super) async fn conclude<E>(
        self,
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
    /// The handler's future in place (no allocation); the commit's is boxed, made only
    /// for a request whose transaction began.
    type Future = TxFuture<S::Future, C, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let (scope, slot, handle) = Scope::new(&self.shared);
        request.extensions_mut().insert(handle.clone());
        // Called here, by the service that was polled ready: no copy of it is needed.
        let handler = self.inner.call(request);
        TxFuture::new(scope, slot, handle, handler)
    }
}
