//! The answer of a statement whose caller stopped waiting for it (a `timeout` or `select!`
//! around it): read before the transaction's next step, and its failure noted as the
//! body's own.
//!
//! The server runs an abandoned statement to its end, and it may fail there: PostgreSQL
//! then aborts the transaction (its COMMIT answers `ROLLBACK`, without an error), a
//! MySQL/MariaDB deadlock ends it (every later statement would run outside it, each
//! committed alone). So before any step that carries the transaction on (a statement, a
//! SAVEPOINT, the COMMIT), the answer owed is read, and a failure in it is noted like any
//! statement's ([`Tx::note_failure`]): the COMMIT is refused on PostgreSQL, a MySQL/MariaDB
//! tree the server ended breaks, a conflict may be retried. Before a savepoint's rollback
//! only what the rollback does not undo is noted (a conflict, a MySQL/MariaDB error that
//! ended the whole transaction); before the outermost rollback it is read past, off the
//! caller's path (`tx/settle.rs`).

use std::sync::atomic::Ordering;

use sea_orm::DbErr;
use tokio::time::Instant;

use super::{Link, Tx, bound};

impl Tx {
    /// Reads the answer an abandoned statement still owes (the caller has seen that the
    /// link owes one: [`Link::owes`]), and notes its failure (see the module's text).
    /// Before one of the body's statements `until` is `None`: the wait is the body's,
    /// bounded by the operation's `timeout` only. Before a step of the protocol it is the
    /// end of that step's bound, which the step itself shares (one bound for both, as
    /// when the answer was read as part of the step); not answered by then, the
    /// connection is closed and the tree breaks. Not in a broken tree (nothing more is
    /// sent in it, and its connection is rolled back or closed), nor when what is owed is
    /// a `RELEASE`'s answer (`release.rs` breaks the tree then). Boxed by its callers:
    /// rare, and held inline it would add to the size of every step's future.
    pub(super) async fn settle_owed(
        &self,
        link: &mut Link,
        until: Option<Instant>,
    ) -> Result<(), DbErr> {
        if link.owes_release() || self.tree.broken().is_some() {
            return Ok(());
        }
        let read = match until {
            None => Some(link.read_owed().await),
            Some(until) => {
                let limit = until.saturating_duration_since(Instant::now());
                let read = bound::within(self.backend, limit, link.read_owed()).await;
                if read.is_none() {
                    link.distrust();
                    let err = crate::error::step_unanswered("statement abandoned earlier", limit);
                    self.tree.break_with(err.clone());
                    return Err(err);
                }
                read
            }
        };
        let failed = match read {
            None | Some(Ok(None)) => return Ok(()),
            Some(Ok(Some(failed))) => failed,
            Some(Err(lost)) => {
                self.note_failure(link, &lost).await;
                return Err(lost);
            }
        };
        tracing::debug!(
            error = %crate::error::redact(&failed.to_string()),
            "safe-db: a statement whose caller stopped waiting for it failed"
        );
        self.abandoned_failed.store(true, Ordering::Relaxed);
        self.note_failure(link, &failed).await;
        Ok(())
    }

    /// Before a `ROLLBACK TO`: reads the answer owed as part of that step, and notes what
    /// the rollback does not undo: a conflict (the operation may be re-run), and a
    /// MySQL/MariaDB error that ended the whole transaction (a deadlock; a lock wait
    /// timeout under `innodb_rollback_on_timeout`, which the server is asked about, as
    /// after a statement's own error: [`Tx::note_ended`]): the savepoint is gone with it, so
    /// the tree breaks with that error and the `ROLLBACK TO` is not sent. A failed
    /// statement is not noted at this level: the rollback undoes it.
    pub(super) async fn read_owed_before_rollback(&self, link: &mut Link) -> Result<(), DbErr> {
        if !link.owes() || link.owes_release() {
            return Ok(());
        }
        if let Some(failed) = link.read_owed().await? {
            self.tree.note_conflict(&failed);
            if self.note_ended(&failed) {
                Box::pin(self.settle_suspicion(link, failed)).await;
            }
        }
        Ok(())
    }
}
