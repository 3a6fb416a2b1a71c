//! The request's slot: its transaction, begun on first use through [`RequestTx`], and
//! ended by the layer.
//!
//! As in axum-sqlx-tx, the transaction is leased: the layer owns the slot, the request's
//! extensions hold a [`Handle`] that only hands out leases, and each `RequestTx` is one.
//! Only a live lease keeps the layer from committing; a copy of the extensions (an audit
//! logger's, kept past the response) is no holder.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use axum_core::extract::FromRequestParts;
use http::request::Parts;
use sea_orm::DbErr;

use crate::operation::Operation;
use crate::{Begin, Error, ErrorKind, Options, Tx};

/// Begins a request's transaction: the layer's side of a slot, shared by its requests.
pub(super) trait Starter: Send + Sync {
    /// Begins the request's operation, arrived at `arrived`, in `span`.
    fn begin(
        self: Arc<Self>,
        span: tracing::Span,
        arrived: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> BeginFuture;
    /// Begins a transaction of its own (`requires_new`), under `deadline`.
    fn begin_new(
        self: Arc<Self>,
        options: Options,
        deadline: Option<tokio::time::Instant>,
    ) -> NewFuture;
    /// The options of the request's transaction.
    fn options(&self) -> Options;
}

pub(super) type BeginFuture = Pin<Box<dyn Future<Output = (Operation, Result<Tx, DbErr>)> + Send>>;
pub(super) type NewFuture = Pin<Box<dyn Future<Output = Result<Tx, DbErr>> + Send>>;

/// The request's transaction, owned by the layer (which ends it) and leased by each
/// `RequestTx` (which begins it on first use), with the operation that drives it.
pub(super) struct Slot {
    /// Begins the request's operation, or a transaction of its own.
    starter: Arc<dyn Starter>,
    /// When the request arrived, and its deadline if the layer has a timeout.
    arrived: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
    /// The request's span, made when its handler takes a `RequestTx` (a handler that
    /// takes none makes no span): the layer runs the handler in it from then on, so the
    /// operations it calls are its children. It is the span of the first try to begin the
    /// request's transaction, and records `outcome = "unused"` if none was tried.
    span: std::sync::OnceLock<tracing::Span>,
    /// Whether a BEGIN was tried (the first try's span is the request's).
    tried: AtomicBool,
    tx: std::sync::OnceLock<Tx>,
    /// The request's operation, from the moment its transaction began.
    operation: std::sync::Mutex<Option<Operation>>,
    /// Held while the transaction begins; `true` once the request is over, after which
    /// nothing begins (a `RequestTx` may outlive it).
    gate: tokio::sync::Mutex<bool>,
}

impl Slot {
    /// The request's slot, owned by the layer, and the handle for its extensions.
    pub(super) fn open(
        starter: Arc<dyn Starter>,
        arrived: tokio::time::Instant,
        deadline: Option<tokio::time::Instant>,
    ) -> (Arc<Self>, Handle) {
        let slot = Arc::new(Slot {
            starter,
            arrived,
            deadline,
            span: std::sync::OnceLock::new(),
            tried: AtomicBool::new(false),
            tx: std::sync::OnceLock::new(),
            operation: std::sync::Mutex::new(None),
            gate: tokio::sync::Mutex::new(false),
        });
        let handle = Handle(Arc::new(std::sync::Mutex::new(Arc::downgrade(&slot))));
        (slot, handle)
    }

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
            // A later try, after one failed or was cut off, is an operation with a span
            // of its own.
            let span = if self.tried.swap(true, Ordering::Relaxed) {
                Operation::request_span(&self.starter.options())
            } else {
                self.request_span().clone()
            };
            let (operation, begun) = Arc::clone(&self.starter)
                .begin(span, self.arrived, self.deadline)
                .await;
            let tx = begun?;
            *self.operation() = Some(operation);
            let _ = self.tx.set(tx);
        }
        Ok(self.tx.get().expect("set under the gate"))
    }

    fn operation(&self) -> std::sync::MutexGuard<'_, Option<Operation>> {
        self.operation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The request's span, once its handler has taken a `RequestTx`.
    pub(super) fn span(&self) -> Option<&tracing::Span> {
        self.span.get()
    }

    /// The request's span, made now if it has not been yet. Made while the layer polls
    /// this request's handler (its extractor takes a `RequestTx`), it is entered until
    /// that poll ends: the rest of the handler's poll (its events, its own spans, the
    /// operations it calls) is in it, as the later polls are.
    fn request_span(&self) -> &tracing::Span {
        let mut made = false;
        let span = self.span.get_or_init(|| {
            made = true;
            Operation::request_span(&self.starter.options())
        });
        if made && !span.is_disabled() && self.is_polled_here() {
            LATE.set(Some(span.clone().entered()));
        }
        span
    }

    /// Runs `poll`, a poll of this request's handler by the layer, on this thread.
    pub(super) fn polling<R>(&self, poll: impl FnOnce() -> R) -> R {
        // Another layer's, if this one is nested in its handler: kept entered, put back.
        let (outer, outer_late) = (POLLED.replace(self as *const Slot), LATE.take());
        let out = poll();
        // Exited, if the poll made it, after everything the poll entered was exited.
        drop(LATE.replace(outer_late));
        POLLED.set(outer);
        out
    }

    /// Whether this thread is in the layer's poll of this request's handler.
    fn is_polled_here(&self) -> bool {
        std::ptr::eq(POLLED.get(), self)
    }

    /// Whether the request's transaction has begun.
    pub(super) fn began(&self) -> bool {
        self.tx.get().is_some()
    }

    /// The request is over: no lease is handed out and nothing begins from now on.
    /// Returns the operation and transaction if one began and no lease is still held.
    pub(super) async fn close(self: Arc<Self>, handle: Handle) -> Closed {
        // Revoked first: from here on only the leases already taken (live `RequestTx`s)
        // share the slot, whoever holds a copy of the request's extensions.
        handle.revoke();
        *self.gate.lock().await = true;
        self.closed()
    }

    /// [`close`](Self::close) without waiting: `Err` if the gate is held (a `RequestTx`
    /// still beginning elsewhere).
    pub(super) fn try_close(
        self: Arc<Self>,
        handle: Handle,
    ) -> Result<Closed, (Arc<Self>, Handle)> {
        handle.revoke();
        let shut = match self.gate.try_lock() {
            Ok(mut over) => {
                *over = true;
                true
            }
            Err(_) => false,
        };
        if !shut {
            return Err((self, handle));
        }
        Ok(self.closed())
    }

    fn closed(self: Arc<Self>) -> Closed {
        if let Some(span) = self.span.get()
            && !self.tried.load(Ordering::Relaxed)
            && !span.is_disabled()
        {
            span.record("outcome", "unused");
        }
        let operation = self.operation().take();
        match Arc::try_unwrap(self) {
            Ok(slot) => match (slot.tx.into_inner(), operation) {
                (Some(tx), Some(operation)) => Closed::Began(tx, operation),
                _ => Closed::Unused,
            },
            Err(shared) if shared.began() => {
                // Every statement through the RequestTx still held fails from now on, and
                // the transaction is rolled back when it is dropped.
                if let Some(tx) = shared.tx.get() {
                    tx.break_tree(request_over());
                }
                Closed::StillHeld(operation)
            }
            // Held, but its transaction never began: nothing to end.
            Err(_) => Closed::Unused,
        }
    }
}

thread_local! {
    /// The slot whose handler the layer is polling on this thread, if any.
    static POLLED: std::cell::Cell<*const Slot> = const { std::cell::Cell::new(std::ptr::null()) };
    /// The request span made and entered during that poll, exited when it ends.
    static LATE: std::cell::RefCell<Option<tracing::span::EnteredSpan>> =
        const { std::cell::RefCell::new(None) };
}

/// What the layer finds in the slot once the request is over.
pub(super) enum Closed {
    /// No transaction: nothing to end (a BEGIN that failed recorded its own end).
    Unused,
    /// The request's transaction, for the layer to end.
    Began(Tx, Operation),
    /// A lease (a `RequestTx`) outlived the handler: the transaction cannot be committed
    /// under it.
    StillHeld(Option<Operation>),
}

/// The error of a request transaction used after its request.
fn request_over() -> DbErr {
    crate::cause::raise(crate::Cause::RequestEnded)
}

/// What the request's extensions hold: a way to lease the request's slot, not the slot.
/// Copies of it (of the extensions) neither keep the layer from committing nor keep the
/// transaction alive; once the layer has revoked it, it leases nothing.
//
// Weak, not a strong reference the layer takes back: when the client goes away the layer's
// future is dropped, and the slot with it, so the transaction rolls back then, not when the
// last copy of the extensions dies. Behind a lock, not a bare `Weak`: a copy could upgrade
// between the layer's last look and its taking the transaction, and fail a request that
// no `RequestTx` held; revoked under the lock, no lease is taken after the layer's look.
#[derive(Clone)]
pub(super) struct Handle(Arc<std::sync::Mutex<Weak<Slot>>>);

impl Handle {
    /// A lease on the slot, unless the request is over.
    pub(super) fn lease(&self) -> Option<RequestTx> {
        let slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Upgraded under the lock: no lease is taken once `revoke` has returned.
        let slot = slot.upgrade()?;
        slot.request_span();
        Some(RequestTx(slot))
    }

    /// No lease is handed out from now on.
    fn revoke(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Weak::new();
    }
}

/// The request's transaction, as a handler argument: it begins on first use, and
/// [`TxLayer`](super::TxLayer) commits it after the handler when the response is a success
/// (2xx, 3xx) and rolls it back otherwise, on a panic, or when the client goes away.
///
/// Pass `&tx` to a `#[safe_db_operation]` (it runs in a savepoint inside the request's
/// transaction), or call [`RequestTx::get`] for plain SeaORM queries. Used after its
/// request has ended (kept in a spawned task), every statement fails.
///
/// Each `RequestTx` is a lease on the request's transaction, returned when it is dropped:
/// one still alive once the handler has returned makes the request a 500, rolled back.
/// Copies of the request's extensions (an audit logger's, say) hold no lease.
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
            Some(handle) => handle.lease().ok_or_else(|| request_over().into()),
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
            if !self.0.began() {
                let deadline = match (deadline, self.0.deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                return Arc::clone(&self.0.starter)
                    .begin_new(*options, deadline)
                    .await;
            }
        }
        self.0.get().await?.__begin(options, deadline).await
    }

    async fn __join(&self) -> Result<Option<&Tx>, DbErr> {
        self.0.get().await.map(Some)
    }

    /// The request's span, when it is not the current one's ancestry: an operation called
    /// with the `RequestTx` outside the layer's poll of the handler (in a task the
    /// handler spawned and awaits). In that poll the request span is entered, and the
    /// operation is a child of the current span (a span of the handler's own, an
    /// enclosing operation's).
    fn __span_parent(&self) -> Option<tracing::Id> {
        if self.0.is_polled_here() {
            return None;
        }
        self.0.span().and_then(tracing::Span::id)
    }
}
impl crate::InTransaction for RequestTx {}
impl crate::Managed for RequestTx {}
