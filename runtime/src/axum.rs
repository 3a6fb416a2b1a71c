//! Web services with axum (feature `axum`): classified errors as RFC 9457 problem
//! responses, and request-scoped transactions, the Rust form of FastAPI's
//! `Depends(get_db)`.
//!
//! ```no_run
//! use axum::{Router, extract::Path, routing::patch};
//! use safe_db::axum::{RequestTx, TxLayer};
//! use safe_db::{Error, Tx, safe_db_operation};
//! use sea_orm::{ConnectionTrait, Statement};
//!
//! #[safe_db_operation]
//! async fn rename(tx: &Tx, id: i32, name: String) -> Result<(), Error> {
//!     // `name` comes from the request: bound as a value, never formatted into the SQL.
//!     let sql = "UPDATE agents SET name = $1 WHERE id = $2";
//!     let values = [name.into(), id.into()];
//!     let update = Statement::from_sql_and_values(tx.get_database_backend(), sql, values);
//!     if tx.execute_raw(update).await?.rows_affected() == 0 {
//!         return Err(Error::not_found("agent", id));
//!     }
//!     Ok(())
//! }
//!
//! // The request's transaction begins on first use and commits after the handler when
//! // the response is 2xx or 3xx; `rename` runs in a savepoint inside it.
//! async fn handler(tx: RequestTx, Path((id, name)): Path<(i32, String)>) -> Result<(), Error> {
//!     rename(&tx, id, name).await
//! }
//!
//! # async fn app(db: sea_orm::DatabaseConnection) {
//! let app: Router = Router::new()
//!     .route("/agents/{id}/name/{name}", patch(handler))
//!     .layer(TxLayer::new(db));
//! # }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use futures_util::FutureExt;
use http::request::Parts;
use http::{HeaderValue, Request, StatusCode, header};
use sea_orm::DbErr;

use crate::operation::{Began, Operation, Outcome};
use crate::{Begin, Error, ErrorKind, Options, Tx};

impl Error {
    /// The HTTP status this error maps to: not found 404, unique conflict 409, foreign-key
    /// violation and validation 422, serialization failure (after any retries) 503 with
    /// `Retry-After`, timeout 504, pool exhausted or unavailable 503, anything else 500.
    ///
    /// A serialization failure that survived the operation's retries is transient
    /// contention on the server, not a conflict the client must resolve: 503 with
    /// `Retry-After` tells clients and proxies to try the same request again, which 409
    /// does not.
    pub fn status(&self) -> StatusCode {
        match self.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::UniqueViolation => StatusCode::CONFLICT,
            ErrorKind::ForeignKeyViolation | ErrorKind::Validation => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorKind::SerializationFailure | ErrorKind::PoolExhausted | ErrorKind::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ReadOnly | ErrorKind::Database | ErrorKind::CommitUnknown => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// What the client may read: the application's own message for not found and
    /// validation errors, a fixed sentence for everything else (no SQL, table or
    /// constraint names, connection strings or passwords).
    fn public_detail(&self) -> String {
        match self.kind() {
            ErrorKind::NotFound | ErrorKind::Validation if self.db_err().is_none() => {
                self.to_string()
            }
            ErrorKind::NotFound => "The requested resource does not exist.".into(),
            ErrorKind::Validation => "The request was rejected by a database constraint.".into(),
            ErrorKind::UniqueViolation => "The resource conflicts with an existing one.".into(),
            ErrorKind::ForeignKeyViolation => {
                "The request refers to a resource that does not exist.".into()
            }
            ErrorKind::SerializationFailure => {
                "The request conflicted with concurrent requests; retry it.".into()
            }
            ErrorKind::Timeout => "The database did not answer in time.".into(),
            ErrorKind::PoolExhausted | ErrorKind::Unavailable => {
                "The database is unavailable; retry later.".into()
            }
            ErrorKind::CommitUnknown => {
                "The connection to the database was lost while the change was being committed; \
                 it may or may not have been applied."
                    .into()
            }
            ErrorKind::ReadOnly | ErrorKind::Database => "An internal error occurred.".into(),
        }
    }

    fn problem_type(&self) -> &'static str {
        match self.kind() {
            ErrorKind::NotFound => "urn:safe-db:problem:not-found",
            ErrorKind::UniqueViolation => "urn:safe-db:problem:conflict",
            ErrorKind::ForeignKeyViolation => "urn:safe-db:problem:missing-reference",
            ErrorKind::Validation => "urn:safe-db:problem:validation",
            ErrorKind::SerializationFailure => "urn:safe-db:problem:contention",
            ErrorKind::Timeout => "urn:safe-db:problem:timeout",
            ErrorKind::PoolExhausted | ErrorKind::Unavailable => "urn:safe-db:problem:unavailable",
            ErrorKind::CommitUnknown => "urn:safe-db:problem:commit-unknown",
            ErrorKind::ReadOnly | ErrorKind::Database => "urn:safe-db:problem:internal",
        }
    }
}

/// An RFC 9457 `application/problem+json` response; the full error goes to the log.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, kind = ?self.kind(), status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, kind = ?self.kind(), status = status.as_u16(), "request rejected");
        }
        let body = serde_json::json!({
            "type": self.problem_type(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.public_detail(),
        });
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Makes error responses problem responses: an error response (4xx or 5xx) with a
/// plain-text body or none, which is what axum's extractors answer to malformed JSON, a
/// missing field, a wrong content type, a bad path parameter or query string, and what its
/// router answers to an unknown path or method, becomes an RFC 9457
/// `application/problem+json` response with the same status, the text (its first 4 KiB)
/// as its `detail`. Responses of any other type (safe-db's own problems among them),
/// compressed ones, and successes pass through untouched.
///
/// ```no_run
/// # use axum::{Router, routing::post};
/// # async fn create() {}
/// # fn app(db: sea_orm::DatabaseConnection) -> Router {
/// use safe_db::axum::{ProblemLayer, TxLayer};
/// Router::new()
///     .route("/agents", post(create))
///     .layer(TxLayer::new(db))
///     .layer(ProblemLayer)
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProblemLayer;

impl<S> tower_layer::Layer<S> for ProblemLayer {
    type Service = ProblemService<S>;

    fn layer(&self, inner: S) -> ProblemService<S> {
        ProblemService { inner }
    }
}

/// The service of [`ProblemLayer`].
#[derive(Clone, Debug)]
pub struct ProblemService<S> {
    inner: S,
}

/// The most of a plain-text error body kept as a problem's `detail`.
const DETAIL_LIMIT: usize = 4096;

/// The text of a body's first `limit` bytes; the rest is not read.
async fn first_bytes(body: axum_core::body::Body, limit: usize) -> String {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while bytes.len() <= limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    let cut = bytes.len() > limit;
    bytes.truncate(limit);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if cut {
        text.push('…');
    }
    text
}

impl<S, B> tower_service::Service<Request<B>> for ProblemService<S>
where
    S: tower_service::Service<Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let called = self.inner.call(request);
        Box::pin(async move {
            let response = called.await?;
            let status = response.status();
            // Plain text, or no content type at all (axum's own 404 and 405).
            let plain_text = match response.headers().get(header::CONTENT_TYPE) {
                None => true,
                Some(v) => v.to_str().is_ok_and(|v| v.starts_with("text/plain")),
            };
            let encoded = response.headers().contains_key(header::CONTENT_ENCODING);
            if !(status.is_client_error() || status.is_server_error()) || !plain_text || encoded {
                return Ok(response);
            }
            let (mut parts, body) = response.into_parts();
            let text = first_bytes(body, DETAIL_LIMIT).await;
            let detail = if text.trim().is_empty() {
                status.canonical_reason().unwrap_or("Error").to_owned()
            } else {
                text
            };
            let problem = serde_json::json!({
                "type": "about:blank",
                "title": status.canonical_reason().unwrap_or("Error"),
                "status": status.as_u16(),
                "detail": detail,
            })
            .to_string();
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Ok(Response::from_parts(
                parts,
                axum_core::body::Body::from(problem),
            ))
        })
    }
}

/// The request's transaction, shared by the layer (which ends it) and the extractor
/// (which begins it on first use), with the operation that drives it.
struct Slot {
    /// Begins the request's operation; `true` on the first try, which takes the span
    /// made when the request arrived (a later try, after one failed or was cut off, is an
    /// operation with a span of its own).
    begin: Box<dyn Fn(bool) -> BeginFuture + Send + Sync>,
    /// Begins a transaction of its own on the layer's connection (`requires_new`).
    begin_new: Box<dyn Fn(Options, Option<tokio::time::Instant>) -> NewFuture + Send + Sync>,
    tx: std::sync::OnceLock<Tx>,
    /// The request's operation, from the moment its transaction began.
    operation: std::sync::Mutex<Option<Operation>>,
    /// Whether a BEGIN was tried (the first try's operation gets the request's span).
    tried: std::sync::atomic::AtomicBool,
    /// Held while the transaction begins; `true` once the request is over, after which
    /// nothing begins (a copy of the request's extensions may outlive it).
    gate: tokio::sync::Mutex<bool>,
}

type BeginFuture = Pin<Box<dyn Future<Output = (Operation, Result<Tx, DbErr>)> + Send>>;
type NewFuture = Pin<Box<dyn Future<Output = Result<Tx, DbErr>> + Send>>;

impl Slot {
    async fn get(&self) -> Result<&Tx, DbErr> {
        if let Some(tx) = self.tx.get() {
            return Ok(tx);
        }
        let over = self.gate.lock().await;
        if *over {
            return Err(request_over());
        }
        if self.tx.get().is_none() {
            // A BEGIN that fails has recorded its end in the operation, dropped here.
            let first = !self.tried.swap(true, std::sync::atomic::Ordering::Relaxed);
            let (operation, begun) = (self.begin)(first).await;
            let tx = begun?;
            *self.operation() = Some(operation);
            let _ = self.tx.set(tx);
        }
        Ok(self.tx.get().expect("set under the gate"))
    }

    fn operation(&self) -> std::sync::MutexGuard<'_, Option<Operation>> {
        self.operation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request is over: nothing may begin from now on. Returns whether a
    /// transaction had begun.
    async fn close(&self) -> bool {
        *self.gate.lock().await = true;
        self.tx.get().is_some()
    }
}

/// The error of a request transaction used after its request.
fn request_over() -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::Internal(
        "safe-db: the request's transaction was used after its request ended (a RequestTx \
         kept in a spawned task?); it has been ended, and no statement runs in it"
            .to_owned(),
    ))
}

/// The request's transaction, as a handler argument: it begins on first use, and
/// [`TxLayer`] commits it after the handler when the response is a success (2xx, 3xx)
/// and rolls it back otherwise, on a panic, or when the client goes away.
///
/// Pass `&tx` to a `#[safe_db_operation]` (it runs in a savepoint inside the request's
/// transaction), or call [`RequestTx::get`] for plain SeaORM queries. Used after its
/// request has ended (kept in a spawned task), every statement fails.
pub struct RequestTx(Arc<Slot>);

impl RequestTx {
    /// The request's transaction, begun now if it has not been yet.
    pub async fn get(&self) -> Result<&Tx, Error> {
        Ok(self.0.get().await?)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestTx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        match parts.extensions.get::<Handle>() {
            Some(Handle(slot)) => Ok(RequestTx(Arc::clone(slot))),
            None => Err(Error::new(
                ErrorKind::Database,
                "RequestTx used on a route without safe_db::axum::TxLayer: add \
                 `.layer(TxLayer::new(db))` to the router",
            )),
        }
    }
}

impl crate::begin::sealed::Sealed for RequestTx {}
impl Begin for RequestTx {
    /// In the request's transaction, begun now if it has not been yet; `requires_new`:
    /// on the pool of the layer, under the request's deadline too, without beginning
    /// the request's transaction (and not once the request is over).
    async fn __begin(
        &self,
        options: &Options,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Tx, DbErr> {
        if options.requires_new {
            if *self.0.gate.lock().await {
                return Err(request_over());
            }
            if self.0.tx.get().is_none() {
                return (self.0.begin_new)(*options, deadline).await;
            }
        }
        self.0.get().await?.__begin(options, deadline).await
    }

    async fn __join(&self) -> Result<Option<&Tx>, DbErr> {
        self.0.get().await.map(Some)
    }
}
impl crate::InTransaction for RequestTx {}
impl crate::Managed for RequestTx {}

#[derive(Clone)]
struct Handle(Arc<Slot>);

/// The layer that gives each request its transaction: see [`RequestTx`].
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
            conn: self.conn.clone(),
            options: self.options,
            timeout: self.timeout,
        }
    }
}

/// The service of [`TxLayer`].
#[derive(Clone)]
pub struct TxService<S, C> {
    inner: S,
    conn: C,
    options: Options,
    timeout: Option<std::time::Duration>,
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
        // The clone that was polled ready serves this request.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let (conn, options, timeout) = (self.conn.clone(), self.options, self.timeout);
        let arrived = tokio::time::Instant::now();
        let deadline = timeout.and_then(|t| arrived.checked_add(t));
        // The request's span, entered while the handler runs: the operations it calls are
        // its children. It becomes the request's operation's span if the transaction is
        // used, and records `outcome = "unused"` if not.
        let span = Operation::request_span(&options);
        let request_span = span.clone();
        let own = conn.clone();
        let slot = Arc::new(Slot {
            begin_new: Box::new(move |options, own_deadline| {
                let conn = own.clone();
                let deadline = match (own_deadline, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                Box::pin(async move { conn.__begin(&options, deadline).await })
            }),
            begin: Box::new(move |first| {
                let conn = conn.clone();
                let span = if first {
                    request_span.clone()
                } else {
                    Operation::request_span(&options)
                };
                Box::pin(async move {
                    // The same operation as any other, begun when the handler first uses
                    // the transaction; the server stops a statement still running at the
                    // request's deadline.
                    let mut operation = Operation::for_request(&options, arrived, deadline, span);
                    let begun = operation.begin_tx(&conn).await;
                    (operation, begun)
                })
            }),
            tx: std::sync::OnceLock::new(),
            operation: std::sync::Mutex::new(None),
            tried: std::sync::atomic::AtomicBool::new(false),
            gate: tokio::sync::Mutex::new(false),
        });
        request.extensions_mut().insert(Handle(Arc::clone(&slot)));
        Box::pin(async move {
            let mut handler = Box::pin(AssertUnwindSafe(inner.call(request)).catch_unwind());
            let in_span = span.clone();
            let begun = Arc::downgrade(&slot);
            let handler = std::future::poll_fn(move |cx| {
                let _entered = (!in_span.is_disabled()).then(|| in_span.enter());
                // Once the request's transaction holds a connection, an operation in the
                // handler that cannot get one says it may be waiting for the request.
                let holds = begun.upgrade().is_some_and(|slot| slot.tx.get().is_some());
                crate::operation::holding_while(holds.then_some("request"), || {
                    handler.as_mut().poll(cx)
                })
            });
            // `None`: the handler overran the request's deadline and was dropped.
            let called = match deadline {
                None => Some(handler.await),
                Some(deadline) => tokio::time::timeout_at(deadline, handler).await.ok(),
            };
            // The handler has returned (or panicked), and the response body has not been
            // sent yet. End the transaction now, so none is held open while a body
            // streams. From here on nothing begins, whoever holds a copy of the slot.
            let begun = slot.close().await;
            let tried = slot.tried.load(std::sync::atomic::Ordering::Relaxed);
            let operation = slot.operation().take();
            let tx = match Arc::try_unwrap(slot) {
                Ok(slot) => slot.tx.into_inner(),
                Err(shared) if begun => {
                    // A copy of the request's RequestTx is still held (moved into a
                    // spawned task?): the transaction cannot be committed under it. Every
                    // statement through that copy fails from now on, and the transaction is
                    // rolled back when the copy is dropped.
                    if let Some(tx) = shared.tx.get() {
                        tx.abandon(request_over());
                    }
                    let reason = "a RequestTx outlived its request (moved into a spawned \
                                  task?): the request fails, and its transaction is rolled \
                                  back when that copy is dropped (until then it holds its \
                                  connection and locks)";
                    if let Some(mut operation) = operation {
                        operation.abandon(reason);
                    }
                    tracing::error!("{reason}");
                    return Ok(
                        Error::new(ErrorKind::Database, "request transaction still in use")
                            .into_response(),
                    );
                }
                // Copies of the request's extensions outlive it, but its transaction never
                // began: nothing to end, and the response stands.
                Err(_) => None,
            };
            let timed_out = || {
                let limit = timeout.unwrap_or_default();
                Error::new(
                    ErrorKind::Timeout,
                    format!("the request did not complete within its timeout of {limit:?}"),
                )
            };
            let (Some(tx), Some(mut operation)) = (tx, operation) else {
                // Never used: nothing to end. (A BEGIN that failed recorded its own end.)
                if !tried && !span.is_disabled() {
                    span.record("outcome", "unused");
                }
                return match called {
                    None => Ok(timed_out().into_response()),
                    Some(Ok(result)) => result,
                    Some(Err(payload)) => std::panic::resume_unwind(payload),
                };
            };
            match called {
                None => {
                    let _ = operation
                        .conclude::<(), DbErr>(
                            Began::Own(tx),
                            Outcome::TimedOut,
                            std::convert::identity,
                        )
                        .await;
                    Ok(timed_out().into_response())
                }
                Some(Err(payload)) => {
                    let _ = operation
                        .conclude::<(), DbErr>(
                            Began::Own(tx),
                            Outcome::Panicked(payload),
                            std::convert::identity,
                        )
                        .await;
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
                    match operation
                        .conclude::<(), DbErr>(
                            Began::Own(tx),
                            Outcome::Returned(Ok(())),
                            std::convert::identity,
                        )
                        .await
                    {
                        Ok(()) => Ok(response),
                        // The commit failed: the client must not see a success.
                        Err(commit_error) => Ok(Error::from(commit_error).into_response()),
                    }
                }
            }
        })
    }
}
