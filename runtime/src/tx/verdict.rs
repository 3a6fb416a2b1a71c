//! What the tree's state says about ending it: whether a body's `Ok` may commit, whether
//! the operation may re-run, and a level doomed by a `savepoint = false` failure.

use std::sync::atomic::Ordering;

use sea_orm::{DbBackend, DbErr};

use super::{Tx, doomed_error};
use crate::Db;

impl Tx {
    /// The connection was lost (`err`): the node it was on is left aside, and on a `Db`
    /// with failover the outermost operation may re-run elsewhere.
    pub(super) fn lost_connection(&self, err: &DbErr) {
        self.tree.lost_connection.store(true, Ordering::Relaxed);
        if let (Some(home), Some(node)) = (&self.tree.home, self.tree.node.get()) {
            home.node_lost(*node, err);
        }
    }

    /// Records the node of a `Db` with failover this outermost transaction began on.
    pub(crate) fn set_node(&mut self, node: usize) {
        let _ = self.tree.node.set(node);
    }

    /// Whether it lost what a re-run of the operation may win: a conflict, or (on a `Db`
    /// with failover) its connection before the COMMIT was sent.
    pub(crate) fn lost_retryably(&self) -> bool {
        self.lost_conflict()
            || (self.tree.lost_connection.load(Ordering::Relaxed)
                && self.tree.home.as_ref().is_some_and(Db::fails_over))
    }

    /// Whether a statement in this transaction's tree lost a conflict (serialization
    /// failure, deadlock, busy): the outermost operation may retry.
    pub(crate) fn lost_conflict(&self) -> bool {
        self.tree.conflict.load(Ordering::Relaxed)
    }

    /// Why a body's `Ok` must not be committed, if it must not: the tree is broken, a
    /// statement lost a conflict, or (PostgreSQL) a statement at this level failed, which
    /// aborts the transaction so that a COMMIT would silently roll back. A MySQL/MariaDB
    /// error that may have ended the transaction and has not been asked about yet (a
    /// streamed row's) is asked about first: one round trip, after those errors only. (The
    /// answer of a statement the body stopped waiting for is read by [`Tx::commit`], which
    /// asks again: `owed.rs`.)
    pub(crate) async fn why_not_commit(&self, operation: &'static str) -> Option<DbErr> {
        let suspect = self.tree.suspect().clone();
        if let Some(err) = suspect {
            // Boxed: rare, and held inline it would add to the size of every commit's future.
            Box::pin(async {
                let mut link = self.tree.link().await;
                self.settle_suspicion(&mut link, err).await;
            })
            .await;
        }
        self.verdict(operation)
    }

    /// What of [`Tx::why_not_commit`] needs no round trip.
    pub(super) fn verdict(&self, operation: &'static str) -> Option<DbErr> {
        if let Some(err) = self.tree.broken() {
            return Some(err);
        }
        if self.lost_conflict() {
            // The conflict itself (a serialization failure, deadlock or busy error), so
            // that it is classified, and retried, as what it is.
            return Some(self.tree.first_conflict.get().cloned().unwrap_or_else(|| {
                crate::cause::raise(crate::Cause::ConflictSwallowed { operation })
            }));
        }
        if let Some(err) = self.doomed() {
            return Some(err);
        }
        if self.statement_failed.load(Ordering::Relaxed) && self.backend == DbBackend::Postgres {
            return Some(crate::cause::raise(
                if self.abandoned_failed.load(Ordering::Relaxed) {
                    crate::Cause::AbandonedStatementFailed { operation }
                } else {
                    crate::Cause::FailedStatementSwallowed { operation }
                },
            ));
        }
        None
    }

    /// An operation that joined this transaction without a savepoint failed: nothing
    /// more runs at this level, and it cannot commit (see [`Tx::why_not_commit`]).
    pub(crate) fn doom(&self, operation: &'static str) {
        let mut names = self
            .tree
            .doomed_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !self.doomed.swap(true, Ordering::Relaxed) {
            names.push((self.id, operation));
        }
    }

    /// The error of a doomed level, if this one is.
    pub(super) fn doomed(&self) -> Option<DbErr> {
        if !self.doomed.load(Ordering::Relaxed) {
            return None;
        }
        let names = self
            .tree
            .doomed_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let name = names
            .iter()
            .find(|(id, _)| *id == self.id)
            .map_or("?", |(_, n)| n);
        Some(doomed_error(name))
    }

    /// Why an operation cannot join this transaction without a savepoint, if it cannot:
    /// the tree is broken, or an operation that joined this level before failed.
    pub(crate) fn why_not_join(&self) -> Option<DbErr> {
        if let Some(err) = self.tree.broken() {
            return Some(err);
        }
        self.doomed()
    }

    /// Whether writes are refused at this level.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Breaks this transaction's tree for whoever still holds it: every later statement,
    /// nested operation and commit through it fails with `err`.
    #[cfg(feature = "axum")]
    pub(crate) fn break_tree(&self, err: DbErr) {
        self.tree.break_with(err);
    }
}
