//! The protocol: a savepoint's `RELEASE`, deferred. A nested level whose body succeeded
//! is released at once in name only: its `RELEASE` is owed on the link, and it goes
//! before anything else is sent on the connection, unless a later step makes it moot. A
//! nested operation called last, before its caller commits, then costs no `RELEASE`.
//!
//! The rules, each one a fact of all three databases' savepoints (their documentation,
//! and `tests/deferred_release.rs`):
//!
//! 1. Before any other statement or step (a body's statement or stream, a sibling's
//!    `SAVEPOINT`, MySQL's question after a suspect error) the `RELEASE` owed is sent,
//!    so that savepoints do not pile up on the server, and its failure, if it fails, is
//!    that step's and breaks the tree (as a `RELEASE` failing at once does).
//! 2. The outermost `COMMIT` or `ROLLBACK` drops it unsent: both end every savepoint of
//!    the transaction, a `COMMIT` committing the released work with the rest.
//! 3. A `RELEASE` or `ROLLBACK TO` of a savepoint made before it (a shallower depth)
//!    makes it moot: the server ends every savepoint made after the one named.
//! 4. A level's own deferred `RELEASE` replaces a deeper one owed (rule 3).
//!
//! Only a plain `RELEASE` is deferred: not a PostgreSQL read-only savepoint's end (a
//! `ROLLBACK TO`), nor one that gives the enclosing level its statement bound back, nor
//! one on a connection that still owes an answer, nor in a transaction SeaORM runs. (The
//! answer of a statement the body abandoned is read before the savepoint's end decides
//! anything, and its failure noted: `owed.rs`.)
//!
//! A `RELEASE` sent before a step and cut off there (the step's future dropped) leaves
//! its outcome unknown: only a rollback past it may follow; any other step, and the
//! outermost `COMMIT`, break the tree instead.

use sea_orm::DbErr;

use super::{Link, Tx, bound, cut_off};
use crate::dialect;

/// What the link owes of a savepoint's `RELEASE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    None,
    /// Not sent yet: `RELEASE SAVEPOINT` of the savepoint at this depth.
    Owed(u32),
    /// Sent before a step that was cut off before its answer was read: whether the
    /// savepoint was released is not known.
    Unconfirmed(u32),
}

impl Released {
    /// A `RELEASE` not sent yet.
    pub(super) fn owed(self) -> bool {
        matches!(self, Released::Owed(_))
    }

    fn depth(self) -> Option<u32> {
        match self {
            Released::None => None,
            Released::Owed(depth) | Released::Unconfirmed(depth) => Some(depth),
        }
    }
}

impl Link {
    /// Whether a `RELEASE` must be sent (or confirmed) before a step other than one that
    /// ends savepoints.
    pub(super) fn owes_release(&self) -> bool {
        self.released != Released::None
    }

    /// Before a step that ends the savepoint at `depth` (`RELEASE` or `ROLLBACK TO`; 0: the
    /// outermost `COMMIT` or `ROLLBACK`): a deeper savepoint's `RELEASE` owed is moot and
    /// forgotten (rules 2 and 3). Returns whether one is still owed, to send first (one
    /// at `depth` or shallower, which only a savepoint begun by hand that outlived its
    /// parent's body can leave).
    pub(super) fn release_before(&mut self, depth: u32) -> bool {
        match self.released.depth() {
            Some(owed) if owed > depth => {
                self.released = Released::None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }
}

impl Tx {
    /// Whether this savepoint's `RELEASE` may be left owed (see the module's
    /// documentation), given the link as it is after the steps before it.
    pub(super) fn may_defer_release(&self, link: &Link) -> bool {
        !self.read_only_savepoint
            && self.restore_bound.is_none()
            && !link.owes()
            && !link.untrusted()
            && !link.is_sea_orm()
            && !link.owes_release()
    }

    /// Sends the `RELEASE` owed (rule 1), before a step other than one that ends
    /// savepoints. Fails, and breaks the tree, if it fails or does not answer within the
    /// step's bound, or if one sent earlier was cut off (its outcome unknown).
    pub(super) async fn send_release(&self, link: &mut Link) -> Result<(), DbErr> {
        let depth = match link.released {
            Released::None => return Ok(()),
            Released::Owed(depth) => depth,
            Released::Unconfirmed(_) => {
                let err = cut_off();
                self.tree.break_with(err.clone());
                return Err(err);
            }
        };
        // Until its answer is read: cut off on the wire, it is unconfirmed.
        link.released = Released::Unconfirmed(depth);
        let sql = dialect::release(self.backend, depth, None);
        let limit = bound::step(self.deadline);
        let sent = bound::within(self.backend, limit, link.step(sql)).await;
        link.released = Released::None;
        let err = match sent {
            Some(Ok(())) => return Ok(()),
            Some(Err(err)) => err,
            None => {
                link.distrust();
                crate::error::step_unanswered("RELEASE", limit)
            }
        };
        self.tree.note_conflict(&err);
        self.tree.break_with(err.clone());
        Err(err)
    }

    /// Before the outermost `COMMIT`: the `RELEASE` owed is dropped (rule 2), but one sent
    /// and cut off, which may have failed (the transaction aborted on PostgreSQL, ended on
    /// MySQL/MariaDB), breaks the tree instead: the `COMMIT` would not say so.
    pub(super) fn release_before_commit(&self, link: &mut Link) -> Result<(), DbErr> {
        let unconfirmed = matches!(link.released, Released::Unconfirmed(_));
        link.released = Released::None;
        if unconfirmed {
            let err = cut_off();
            self.tree.break_with(err.clone());
            return Err(err);
        }
        Ok(())
    }

    /// Leaves this savepoint's `RELEASE` owed (rule 4: it replaces a deeper one, made
    /// moot by [`Link::release_before`]).
    pub(super) fn defer_release(&self, link: &mut Link) {
        link.released = Released::Owed(self.depth);
    }
}
