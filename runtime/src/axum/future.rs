//! [`TxFuture`]: a request's future under [`TxService`](super::TxService): the handler's
//! future polled in place, then the request's end.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum_core::response::Response;
use futures_util::FutureExt;
use futures_util::future::CatchUnwind;

use super::layer::{Called, Scope};
use super::slot::{Handle, Slot};
use crate::Begin;

type Ending<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of a request under [`TxService`](super::TxService): its handler, run
    /// under the request's deadline with a panic caught, then the end of its transaction.
    /// A request that never took its transaction ends without an allocation; the commit or
    /// rollback of one that did is boxed. Not `Unpin`: pin it (`Box::pin`, `std::pin::pin!`)
    /// to poll it by hand.
    pub struct TxFuture<F, C, E> {
        // Dropped as soon as it answers or the deadline passes: a `RequestTx` it holds must
        // be gone before the request's transaction ends.
        #[pin]
        handler: Option<CatchUnwind<AssertUnwindSafe<F>>>,
        // Made at the first poll the handler does not answer, if the layer has a timeout.
        // Outside tokio's budget (as `tokio::time::timeout` polls its timer): a handler
        // that spends the task's whole budget on every poll would otherwise find the
        // timer refused each time, and run past its deadline for ever.
        #[pin]
        sleep: Option<tokio::task::Unconstrained<tokio::time::Sleep>>,
        open: Option<(Scope<C>, Arc<Slot>, Handle)>,
        ending: Option<Ending<E>>,
    }
}

impl<F: Future, C, E> TxFuture<F, C, E> {
    pub(super) fn new(scope: Scope<C>, slot: Arc<Slot>, handle: Handle, handler: F) -> Self {
        TxFuture {
            handler: Some(AssertUnwindSafe(handler).catch_unwind()),
            sleep: None,
            open: Some((scope, slot, handle)),
            ending: None,
        }
    }
}

impl<F, C, E> Future for TxFuture<F, C, E>
where
    F: Future<Output = Result<Response, E>>,
    C: Begin + Clone + Send + Sync + 'static,
    E: Send + 'static,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(ending) = this.ending.as_mut() {
            return ending.as_mut().poll(cx);
        }
        let (scope, slot, _) = this
            .open
            .as_ref()
            .expect("TxFuture polled after it completed");
        let handler = this
            .handler
            .as_mut()
            .as_pin_mut()
            .expect("the handler is kept until the request ends");
        let polled = {
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
                crate::operation::holding_while(holds.then_some("request"), || handler.poll(cx))
            })
        };
        let called: Called<E> = match polled {
            Poll::Ready(answered) => Some(answered),
            Poll::Pending => {
                let Some(deadline) = scope.deadline else {
                    return Poll::Pending;
                };
                if this.sleep.is_none() {
                    this.sleep
                        .set(Some(tokio::task::unconstrained(tokio::time::sleep_until(
                            deadline,
                        ))));
                }
                match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
                    Some(Poll::Ready(())) => None,
                    _ => return Poll::Pending,
                }
            }
        };
        this.handler.set(None);
        let (scope, slot, handle) = this.open.take().expect("taken once");
        // The slot's gate is free unless a `RequestTx` is still beginning elsewhere.
        let closed = match slot.try_close(handle) {
            Ok(closed) => closed,
            Err((slot, handle)) => {
                let mut ending: Ending<E> = Box::pin(scope.end(slot, handle, called));
                let polled = ending.as_mut().poll(cx);
                *this.ending = Some(ending);
                return polled;
            }
        };
        match scope.end_unbegun(closed, called) {
            Ok(response) => Poll::Ready(response),
            Err((tx, operation, called)) => {
                let mut ending: Ending<E> = Box::pin(scope.conclude(tx, operation, called));
                let polled = ending.as_mut().poll(cx);
                *this.ending = Some(ending);
                polled
            }
        }
    }
}
