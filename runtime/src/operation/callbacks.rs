//! After-commit callbacks: run in order once the COMMIT has happened, each exactly once.

use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;

use crate::observe;

/// After-commit callbacks of a committed transaction, run in order. The commit has
/// happened, so each of them runs exactly once: if the caller drops the operation while
/// they run (or before they start), the rest, the one under way included, go on in a
/// task of their own.
pub(super) struct Callbacks {
    operation: &'static str,
    /// The callback under way, then the ones after it, with their places in the order.
    pending: std::collections::VecDeque<(usize, crate::tx::Callback)>,
    /// Already on a task of its own: dropped again, only the runtime's end can have
    /// dropped it.
    detached: bool,
}

impl Callbacks {
    pub(super) fn new(operation: &'static str, callbacks: Vec<crate::tx::Callback>) -> Self {
        Callbacks {
            operation,
            pending: callbacks.into_iter().enumerate().collect(),
            detached: false,
        }
    }

    pub(super) async fn run(mut self) {
        while let Some((index, callback)) = self.pending.front_mut() {
            let index = *index;
            let outcome = AssertUnwindSafe(callback).catch_unwind().await;
            self.pending.pop_front();
            report(self.operation, index, outcome);
        }
    }
}

impl Drop for Callbacks {
    fn drop(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !self.detached => {
                runtime.spawn(
                    Callbacks {
                        operation: self.operation,
                        pending,
                        detached: true,
                    }
                    .run(),
                );
            }
            _ => tracing::error!(
                operation = self.operation,
                dropped = pending.len(),
                "on_commit callbacks dropped: the runtime is shutting down or gone"
            ),
        }
    }
}

/// Reports a callback's failure or panic; the commit stands.
fn report(operation: &'static str, index: usize, outcome: std::thread::Result<Result<(), String>>) {
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            observe::callback_failed(operation);
            tracing::error!(
                operation,
                callback = index,
                %error,
                "on_commit callback failed; the commit stands"
            );
        }
        Err(_) => {
            observe::callback_failed(operation);
            tracing::error!(
                operation,
                callback = index,
                "on_commit callback panicked; the commit stands"
            );
        }
    }
}
