//! The guard of the steps that must not be cut off (see the table in `tx/mod.rs`).

use std::sync::Arc;

use super::cut_off;
use super::tree::Tree;

/// Held across one step of the protocol that must not be interrupted: a savepoint's
/// `SAVEPOINT`, `RELEASE` or `ROLLBACK TO`. Dropped before [`Critical::done`] (the step
/// was cut off by cancellation, or failed where the caller returns with `?`), it leaves
/// the enclosing transaction in a state nobody knows, so the tree is broken: nothing more
/// runs in it, and its outermost level rolls back.
///
/// The outermost level's steps need no guard (`Critical::step(None)`): its link knows
/// what it owes, and a connection in a state nobody knows is closed, not reused.
///
/// A guard, not a function taking the step's future: a future passed by value to an
/// `async fn` is counted twice in the caller's size (rust-lang/rust#62958), and every
/// level of a chain of nested operations would pay for it.
#[must_use = "a critical step is guarded until `done` is called"]
pub(super) struct Critical(Option<Arc<Tree>>);

impl Critical {
    pub(super) fn step(tree: Option<&Arc<Tree>>) -> Critical {
        Critical(tree.cloned())
    }

    /// The step completed (with whatever result): the guard is lifted.
    pub(super) fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Critical {
    fn drop(&mut self) {
        if let Some(tree) = self.0.take() {
            tree.break_with(cut_off());
        }
    }
}
