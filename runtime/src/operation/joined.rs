//! An operation that joins its caller's transaction without a savepoint of its own
//! (`savepoint = false`): nothing of its own to commit or roll back, and a failure dooms the
//! level it joined.

use sea_orm::DbErr;

use super::{Operation, Outcome, record};
use crate::observe::End;
use crate::{Begin, Tx};

/// A caller's transaction joined without a savepoint. Dropped before the operation
/// concluded with `Ok` (its body failed, panicked, or its future was dropped), it dooms
/// that transaction: the work done in it cannot be rolled back alone.
#[doc(hidden)]
pub struct Joined<'c> {
    pub(super) tx: &'c Tx,
    name: &'static str,
    succeeded: bool,
    /// The faults targeting this operation, armed on the level it joined while it runs.
    #[cfg(feature = "testing")]
    armed: Option<std::sync::Arc<dyn crate::tx::Injector>>,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        #[cfg(feature = "testing")]
        if let Some(armed) = self.armed.take() {
            self.tx.disarm(&armed);
        }
        if !self.succeeded {
            self.tx.doom(self.name);
        }
    }
}

impl Operation {
    /// Joins `conn` without a savepoint, if it is a transaction and the operation asks
    /// nothing of a level of its own (a read-only savepoint, a time bound of its own):
    /// otherwise it takes one.
    pub(super) async fn join<'c, C: Begin + ?Sized>(
        &mut self,
        conn: &'c C,
    ) -> Result<Option<Joined<'c>>, DbErr> {
        let joined = match conn.__join().await {
            Ok(joined) => joined,
            Err(err) => {
                self.record_end(End::NotBegun);
                return Err(err);
            }
        };
        let Some(tx) = joined else {
            return Ok(None);
        };
        if self.options.timeout.is_some() || (self.options.read_only && !tx.read_only()) {
            return Ok(None);
        }
        let attempt = self.retry.next_attempt();
        self.record_attempt(attempt, Some(tx.depth()));
        if let Some(err) = tx.why_not_join() {
            self.record_end(End::NotBegun);
            return Err(err);
        }
        Ok(Some(Joined {
            tx,
            name: self.name,
            succeeded: false,
            #[cfg(feature = "testing")]
            armed: crate::testing::armed(self.path).map(|armed| tx.arm_joined(armed)),
        }))
    }

    /// Ends an operation that joined its caller's transaction: nothing to commit or roll
    /// back here. A failure dooms the caller's transaction (see [`Joined`]).
    pub(super) fn conclude_joined<T, E>(
        &mut self,
        mut joined: Joined<'_>,
        outcome: Outcome<T, E>,
        into: fn(DbErr) -> E,
    ) -> Result<T, E> {
        match outcome {
            Outcome::Returned(Ok(value)) => {
                joined.succeeded = true;
                self.record_end(End::Joined);
                Ok(value)
            }
            Outcome::Returned(Err(err)) => {
                drop(joined);
                record(
                    &self.span,
                    "reason",
                    "failed without a savepoint: the caller's transaction cannot commit",
                );
                self.record_end(End::RolledBack);
                Err(err)
            }
            Outcome::Panicked(payload) => {
                drop(joined);
                self.record_end(End::Panicked);
                std::panic::resume_unwind(payload)
            }
            Outcome::TimedOut => {
                drop(joined);
                self.record_end(End::TimedOut);
                Err(into(self.timeout_error()))
            }
        }
    }
}
