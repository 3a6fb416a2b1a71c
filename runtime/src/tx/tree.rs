//! What a tree of nested transactions shares: its state, its callbacks, its turn.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use sea_orm::DbErr;

use super::{Callback, Link};
use crate::Db;

/// What a tree of nested transactions shares, and what outlives each of them.
pub(super) struct Tree {
    /// Set when any statement in the tree lost a conflict (serialization failure,
    /// deadlock, busy), so the outermost operation retries even when the body swallowed
    /// or converted that error.
    pub(super) conflict: AtomicBool,
    /// The first statement error that was a conflict, returned when a body swallowed it.
    pub(super) first_conflict: std::sync::OnceLock<DbErr>,
    pub(super) next_id: AtomicU32,
    /// After-commit callbacks, each tagged with the transaction that holds it now: a
    /// released savepoint hands its callbacks to its parent, so only those that reach the
    /// outermost transaction run, and a savepoint rolled back or dropped takes its own along.
    pub(super) callbacks: Mutex<Vec<(u32, Callback)>>,
    /// False when the outermost transaction was begun by hand, outside safe-db: its
    /// COMMIT cannot be seen, so no callback may run.
    pub(super) commit_visible: bool,
    /// The handle the outermost transaction was begun on, where a `requires_new`
    /// operation in the tree takes its own connection; none when it was begun by hand.
    pub(super) home: Option<Db>,
    /// Set, with the error every later statement and the commit get, when the transaction
    /// can no longer be trusted: a savepoint's BEGIN failed or was cancelled, or its
    /// RELEASE / ROLLBACK TO was cancelled (SeaORM then queues a rollback at the enclosing
    /// level, since its `DatabaseTransaction` counts as open before its `SAVEPOINT` has
    /// run, which ends the enclosing transaction), or MySQL/MariaDB rolled the whole
    /// transaction back itself (a deadlock, or a lock wait timeout under
    /// `innodb_rollback_on_timeout`). Either way later statements would run in
    /// autocommit: from then on no statement runs and nothing commits.
    pub(super) broken: std::sync::OnceLock<DbErr>,
    /// A MySQL/MariaDB error that may have ended the transaction (a lock wait timeout, a
    /// full lock table, a snapshot conflict), until the server has said whether it did.
    /// Set before asking, so that a question cut off by cancellation is asked again before
    /// the next statement.
    pub(super) suspect: Mutex<Option<DbErr>>,
    /// The connection, one step at a time: the checks, the send and the reading of its
    /// outcome are one step, so that no statement slips in after the server has ended the
    /// transaction (`join!` on one `Tx`).
    pub(super) link: tokio::sync::Mutex<Link>,
    /// A nested level dropped before it ended (its operation cancelled): its depth and the
    /// statement bound to give back, rolled back to before the tree's next step.
    pub(super) dropped: Mutex<Option<(u32, Option<Option<tokio::time::Instant>>)>>,
    /// A MariaDB statement bound was set on the session: reset at the outermost end.
    pub(super) session_bound: AtomicBool,
    /// The node of a `Db` with failover the outermost transaction began on.
    pub(super) node: std::sync::OnceLock<usize>,
    /// Set when a statement lost the connection: on a `Db` with failover, the outermost
    /// operation may re-run on another node.
    pub(super) lost_connection: AtomicBool,
    /// The operations that doomed a level (`savepoint = false`), by the level's id.
    pub(super) doomed_by: Mutex<Vec<(u32, &'static str)>>,
    /// A test's transaction (`safe_db::testing`): `requires_new` operations nest in it.
    #[cfg(feature = "testing")]
    pub(super) test: AtomicBool,
    /// Failures injected into the levels of the tree, by id (`safe_db::testing::Faults`):
    /// kept here rather than in each `Tx`, which then does not grow in tests.
    #[cfg(feature = "testing")]
    pub(super) armed: Mutex<Vec<(u32, Arc<dyn super::hooks::Injector>)>>,
}

impl Tree {
    pub(super) fn new(link: Link, commit_visible: bool, home: Option<Db>) -> Arc<Tree> {
        Arc::new(Tree {
            home,
            conflict: AtomicBool::new(false),
            first_conflict: std::sync::OnceLock::new(),
            next_id: AtomicU32::new(1),
            callbacks: Mutex::new(Vec::new()),
            commit_visible,
            broken: std::sync::OnceLock::new(),
            suspect: Mutex::new(None),
            link: tokio::sync::Mutex::new(link),
            dropped: Mutex::new(None),
            session_bound: AtomicBool::new(false),
            doomed_by: Mutex::new(Vec::new()),
            node: std::sync::OnceLock::new(),
            lost_connection: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            test: AtomicBool::new(false),
            #[cfg(feature = "testing")]
            armed: Mutex::new(Vec::new()),
        })
    }

    /// The statement turn: the link, taken at once when nobody holds it (tokio's mutex
    /// hands a released turn straight to the first waiter, so this never jumps the queue),
    /// else waited for in turn.
    pub(super) async fn link(&self) -> tokio::sync::MutexGuard<'_, Link> {
        match self.link.try_lock() {
            Ok(link) => link,
            Err(_) => self.link.lock().await,
        }
    }

    pub(super) fn broken(&self) -> Option<DbErr> {
        self.broken.get().cloned()
    }

    /// From now on no statement runs in the tree and nothing commits; the first reason
    /// given is the one every later statement gets.
    pub(super) fn break_with(&self, err: DbErr) {
        let _ = self.broken.set(err);
    }

    /// Notes a failure if it is a conflict (a serialization failure, deadlock or busy
    /// error): the tree cannot commit, and its outermost operation may re-run. The one
    /// place a lost conflict is recorded, whichever step or statement lost it.
    pub(super) fn note_conflict(&self, err: &DbErr) {
        if !crate::ErrorKind::of(err).is_retryable() {
            return;
        }
        self.conflict.store(true, Ordering::Relaxed);
        let _ = self.first_conflict.set(err.clone());
    }

    pub(super) fn suspect(&self) -> std::sync::MutexGuard<'_, Option<DbErr>> {
        self.suspect.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn callbacks(&self) -> std::sync::MutexGuard<'_, Vec<(u32, Callback)>> {
        // A panic while the lock is held cannot leave the vector half-edited.
        self.callbacks.lock().unwrap_or_else(|e| e.into_inner())
    }
}
