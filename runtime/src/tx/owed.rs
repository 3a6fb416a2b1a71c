//! The answer of a statement whose caller stopped waiting for it (a `timeout` or `select!`
//! around it): read before the transaction's next step, and its failure noted as the
//! body's own.
//!
//! The server runs an abandoned statement to its end, and it may fail there: PostgreSQL
//! then aborts the transaction (its COMMIT answers `ROLLBACK`, without an error), a
//! MySQL/MariaDB deadlock ends it (every later statement would run outside it, each
//! committed alone). So before any step that carries the transaction on (a statement, a
//! SAVEPOINT, a RELEASE, the COMMIT), the answer owed is read, within the step's bound,
//! and a failure in it is noted like any statement's ([`Tx::note_failure`]): the COMMIT
//! is refused on PostgreSQL, a MySQL/MariaDB tree the server ended breaks, a conflict may
//! be retried. Before a rollback it is read past: the rollback undoes it.

use std::sync::atomic::Ordering;

use sea_orm::DbErr;

use super::{Link, Tx, bound};

impl Tx {
    /// Reads the answer an abandoned statement still owes (the caller has seen that the
    /// link owes one: [`Link::owes`]), and notes its failure (see the module's text).
    /// Unanswered within the step's bound, the connection is closed and the tree breaks.
    /// Not in a broken tree (nothing more is sent in it, and its connection is rolled back
    /// or closed), nor when what is owed is a `RELEASE`'s answer (`release.rs` breaks the
    /// tree then). Boxed by its callers: rare, and held inline it would add to the size of
    /// every step's future.
    pub(super) async fn settle_owed(&self, link: &mut Link) -> Result<(), DbErr> {
        if link.owes_release() || self.tree.broken().is_some() {
            return Ok(());
        }
        self.read_owed(link).await
    }

    async fn read_owed(&self, link: &mut Link) -> Result<(), DbErr> {
        let limit = bound::step(self.deadline);
        let failed = match bound::within(self.backend, limit, link.read_owed()).await {
            None => {
                link.distrust();
                let err = crate::error::step_unanswered("statement abandoned earlier", limit);
                self.tree.break_with(err.clone());
                return Err(err);
            }
            Some(Ok(None)) => return Ok(()),
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
}
