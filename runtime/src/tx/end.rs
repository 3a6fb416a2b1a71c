//! The protocol: end. COMMIT (which hands back the callbacks to run) and ROLLBACK, the
//! savepoint's and the outermost level's apart, and what a level dropped before it ended
//! leaves to do.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sea_orm::{DbBackend, DbErr};
use tokio::time::Instant;

use super::guard::Critical;
use super::tree::Tree;
use super::{Callback, Link, ROLLBACK_GRACE, Tx, bound, left, savepoint_end_failed};
use crate::{ErrorKind, dialect};

impl Tx {
    /// Commits (a savepoint: releases), and returns the callbacks to run now: those of
    /// the outermost transaction, once its COMMIT has succeeded; none for a savepoint,
    /// whose callbacks pass to its parent. The caller has asked [`Tx::why_not_commit`]
    /// (for `operation`); asked again here after the answer of a statement the body
    /// stopped waiting for, read first (`owed.rs`).
    ///
    /// No deadline here: once COMMIT is sent the server carries it out, and cutting the
    /// wait would report as failed a transaction that committed. (The deadline's
    /// server-side statement bound still applies.)
    pub(crate) async fn commit(mut self, operation: &'static str) -> Result<Vec<Callback>, DbErr> {
        // An injected failure (`safe_db::testing`): rolled back, as by a failed COMMIT.
        #[cfg(feature = "testing")]
        if let Some(armed) = self.armed()
            && let Some(err) = Box::pin(self.commit_fault(armed)).await
        {
            // A lost connection at an outermost COMMIT is reported as a real one would be,
            // on a server (SQLite has no connection to lose).
            let unknown = self.parent.is_none()
                && self.tree.commit_visible
                && self.backend != DbBackend::Sqlite
                && ErrorKind::of(&err) == ErrorKind::Unavailable;
            if let Err(rollback) = Box::pin(self.rollback()).await {
                tracing::warn!(error = %crate::error::redact(&rollback.to_string()), "rollback failed");
            }
            return Err(if unknown {
                crate::error::commit_unknown(&err)
            } else {
                err
            });
        }
        let tree = Arc::clone(&self.tree);
        let mut link = tree.link().await;
        // A nested level dropped unended: its rollback comes first, and may break the tree.
        let mut settled = self.settle_dropped(&mut link).await;
        // The bound of the COMMIT (or RELEASE), computed once: the answer of a statement
        // the body stopped waiting for, read first, shares it.
        let mut until = None;
        if settled.is_ok() && link.owes() {
            let end = Instant::now() + bound::step(self.deadline);
            until = Some(end);
            // Its failure may forbid the commit (`owed.rs`). Boxed: rare, and held inline
            // it would add to the size of every commit's future.
            settled = Box::pin(self.settle_owed(&mut link, Some(end)))
                .await
                .and_then(|()| self.verdict(operation).map_or(Ok(()), Err));
        }
        let settled = settled.and_then(|()| {
            match self.parent {
                // The RELEASE owed, if any, is dropped: the COMMIT ends every savepoint.
                None => self.release_before_commit(&mut link),
                Some(_) => Ok(()),
            }
        });
        if let Err(err) = settled.and_then(|()| tree.broken().map_or(Ok(()), Err)) {
            drop(link);
            // Boxed: this rare path would otherwise add a whole rollback to the size of
            // every commit's future.
            if let Err(rollback) = Box::pin(self.rollback()).await {
                tracing::warn!(error = %crate::error::redact(&rollback.to_string()), "rollback failed");
            }
            return Err(err);
        }
        let ended = match self.parent {
            Some(_) => self.close_savepoint(&mut link, until).await,
            None => self.commit_outermost(&mut link, until).await,
        };
        drop(link);
        self.ended = true;
        // The next sibling may begin its savepoint.
        self.turn = None;
        ended?;
        // A commit that may have written, on a `Db` whose standby serves `read_only`
        // operations: they must not read older data than this.
        if self.parent.is_none()
            && !self.read_only
            && let Some(home) = &tree.home
        {
            home.note_commit();
        }
        Ok(hand_over_callbacks(&tree, self.id, self.parent))
    }

    /// Closes a savepoint whose body succeeded (its "commit"): `RELEASE` (its statement
    /// bound given back to the enclosing level first), or `ROLLBACK TO` for a PostgreSQL
    /// read-only savepoint: a `RELEASE` would leave the caller read-only, and it wrote
    /// nothing.
    async fn close_savepoint(&self, link: &mut Link, until: Option<Instant>) -> Result<(), DbErr> {
        // A deeper savepoint's RELEASE owed is moot: this step ends it too.
        if link.release_before(self.depth) {
            Box::pin(self.send_release(link)).await?;
        }
        if self.may_defer_release(link) {
            // Sent before the tree's next step, or made moot by a later one (`release.rs`).
            self.defer_release(link);
            return Ok(());
        }
        let restore = self.restore_bound.map(left);
        let sql = if self.read_only_savepoint {
            dialect::rollback_to(self.backend, self.depth, restore)
        } else {
            dialect::release(self.backend, self.depth, restore)
        };
        let limit = bound::step_until(self.deadline, until);
        let ended = self
            .savepoint_step(link, sql, limit, |limit| {
                crate::error::step_unanswered("RELEASE", limit)
            })
            .await;
        if let Err(err) = &ended {
            self.tree.note_conflict(err);
            savepoint_end_failed(&self.tree, err);
        }
        ended
    }

    /// The outermost COMMIT. The connection goes back to the pool as soon as the COMMIT
    /// has answered, before any callback runs (a callback may begin an operation on a
    /// pool of one). A COMMIT whose answer was lost with the connection may have committed,
    /// or not: said as such (`CommitUnknown`), never re-run, and the connection closed.
    async fn commit_outermost(&self, link: &mut Link, until: Option<Instant>) -> Result<(), DbErr> {
        let ended = if link.is_sea_orm() {
            // A transaction begun by hand: this level is SeaORM's savepoint, which keeps
            // a `SET LOCAL` made in it when released. Give the statement bound back first.
            // (Boxed: held inline, SeaORM's commit would add to every commit's future.)
            Box::pin(async {
                if let Some(restore) = self.restore_bound
                    && let Some(sql) = dialect::bound_sql(self.backend, left(restore))
                {
                    link.step(sql.into()).await?;
                }
                link.end_sea_orm(true).await
            })
            .await
        } else {
            if link.untrusted() {
                link.release();
                return Err(crate::error::link_gone());
            }
            let limit = bound::step_until(self.deadline, until);
            let ended = match bound::within(self.backend, limit, link.end_step(true)).await {
                Some(ended) => ended.map(drop),
                // Sent and unanswered: committed or not, nobody knows.
                None => Err(crate::error::commit_unanswered(limit)),
            };
            if ended.is_ok() {
                link.set_open(false);
                // Committed, whatever happens to the session's bound.
                self.reset_bound(link).await;
                link.release();
            }
            ended
        };
        let Err(err) = ended else {
            return Ok(());
        };
        self.tree.note_conflict(&err);
        if ErrorKind::of(&err) == ErrorKind::CommitUnknown {
            link.distrust();
            link.release();
            if let (Some(home), Some(node)) = (&self.tree.home, self.tree.node.get()) {
                home.node_lost(*node, &err);
            }
            return Err(err);
        }
        if self.tree.commit_visible
            && self.backend != DbBackend::Sqlite
            && ErrorKind::of(&err) == ErrorKind::Unavailable
        {
            // The connection lost with the COMMIT on the wire, or (MariaDB 1180) an error
            // during the COMMIT itself: it may have committed, or not.
            link.distrust();
            link.release();
            if let (Some(home), Some(node)) = (&self.tree.home, self.tree.node.get()) {
                home.node_lost(*node, &err);
            }
            return Err(crate::error::commit_unknown(&err));
        }
        // A COMMIT refused (a conflict found at COMMIT): the link, still marked open, is
        // rolled back before the pool sees it again, or closed.
        link.release();
        Err(err)
    }

    /// Rolls back (a savepoint: to its start). Callbacks registered at this level are
    /// dropped with it. A rollback that fails or does not answer within a grace period is
    /// given up: the connection is then closed (and an enclosing transaction is broken),
    /// since its state is unknown. An outermost transaction whose connection still owes
    /// the answer of a statement its caller abandoned is rolled back off the caller's
    /// path (see `link.rs`), so as not to wait behind that statement.
    pub(crate) async fn rollback(mut self) -> Result<(), DbErr> {
        // Its callbacks (and those its released savepoints handed it) will never run: drop
        // them now, with whatever they hold, rather than with the tree.
        let id = self.id;
        self.tree.callbacks().retain(|(owner, _)| *owner != id);
        let tree = Arc::clone(&self.tree);
        let mut link = tree.link().await;
        let rolled_back = match self.parent {
            Some(_) => self.rollback_savepoint(&mut link).await,
            None => self.rollback_outermost(&mut link).await,
        };
        drop(link);
        self.ended = true;
        self.turn = None;
        rolled_back
    }

    /// Rolls the outermost transaction back, off the caller's path: the connection goes
    /// to a task that rolls it back within [`SETTLE_GRACE`](super::settle::SETTLE_GRACE)
    /// and gives it back to the pool, or closes it.
    pub(crate) async fn rollback_later(mut self) {
        let id = self.id;
        self.tree.callbacks().retain(|(owner, _)| *owner != id);
        if self.parent.is_none() {
            let tree = Arc::clone(&self.tree);
            tree.link().await.release();
            self.ended = true;
        } else if let Err(err) = Box::pin(self.rollback()).await {
            tracing::warn!(error = %crate::error::redact(&err.to_string()), "rollback failed");
        }
    }

    async fn rollback_savepoint(&self, link: &mut Link) -> Result<(), DbErr> {
        // A deeper savepoint's RELEASE owed is moot: this step ends it too.
        if link.release_before(self.depth) {
            Box::pin(self.send_release(link)).await?;
        }
        // A level below this one that was dropped is rolled back with it.
        {
            let mut dropped = self.tree.dropped.lock().unwrap_or_else(|e| e.into_inner());
            if dropped.is_some_and(|(depth, _)| depth > self.depth) {
                *dropped = None;
            }
        }
        let restore = self.restore_bound.map(left);
        let sql = dialect::rollback_to(self.backend, self.depth, restore);
        // Cut off by the grace period, the step is not done: the tree is broken, and its
        // connection closed.
        let limit = bound::step(self.deadline).min(ROLLBACK_GRACE);
        let rolled_back = self
            .savepoint_step(link, sql, limit, crate::error::rollback_unanswered)
            .await;
        if let Err(err) = &rolled_back {
            self.tree.note_conflict(err);
            savepoint_end_failed(&self.tree, err);
        }
        rolled_back
    }

    async fn rollback_outermost(&self, link: &mut Link) -> Result<(), DbErr> {
        if link.is_sea_orm() {
            // Boxed, as in `commit_outermost`.
            return Box::pin(tokio::time::timeout(
                ROLLBACK_GRACE,
                link.end_sea_orm(false),
            ))
            .await
            .unwrap_or_else(|_| Err(crate::error::rollback_unanswered(ROLLBACK_GRACE)));
        }
        // The RELEASE owed, if any, is moot: the ROLLBACK ends every savepoint.
        let owed = link.release_before(0);
        debug_assert!(!owed, "savepoints are deeper than the outermost level");
        if link.owes() || link.untrusted() {
            link.release();
            return Ok(());
        }
        let limit = bound::step(self.deadline).min(ROLLBACK_GRACE);
        let rolled_back = bound::within(self.backend, limit, link.end_step(false))
            .await
            .unwrap_or_else(|| Err(crate::error::rollback_unanswered(limit)));
        match &rolled_back {
            Ok(_) => link.set_open(false),
            // SQLite's state is local and known: an error there means no transaction was
            // left to roll back (the engine ended it itself).
            Err(_) if self.backend == DbBackend::Sqlite => link.set_open(false),
            // Refused (a Galera node outside the primary component answers 1047 even to
            // ROLLBACK, and its next BEGIN would commit this work) or unanswered: the
            // connection is never reused.
            Err(_) => link.distrust(),
        }
        if rolled_back.is_ok() {
            self.reset_bound(link).await;
        }
        link.release();
        rolled_back.map(drop)
    }

    /// Gives a MariaDB session its own statement bound back after a transaction that set
    /// one; a connection where that fails is closed rather than handed on with it.
    async fn reset_bound(&self, link: &mut Link) {
        if self.tree.session_bound.load(Ordering::Relaxed) {
            // Boxed: MariaDB's only, and held inline it would add to every end's future.
            Box::pin(self.reset_session_bound(link)).await;
        }
    }

    async fn reset_session_bound(&self, link: &mut Link) {
        let limit = bound::step(self.deadline).max(bound::MARGIN);
        let reset =
            bound::within(self.backend, limit, link.step(dialect::RESET_BOUND.into())).await;
        if !matches!(reset, Some(Ok(()))) {
            link.distrust();
        }
    }

    /// Rolls back to the savepoint of a nested level dropped before it ended (its
    /// operation cancelled), before anything else is sent in the tree. Fails, and breaks
    /// the tree, if that cannot be done.
    pub(super) async fn settle_dropped(&self, link: &mut Link) -> Result<(), DbErr> {
        let dropped = self
            .tree
            .dropped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some((depth, restore)) = dropped else {
            return Ok(());
        };
        // Boxed: rare, and held inline it would add a savepoint step to the size of every
        // statement's and every commit's future.
        Box::pin(self.roll_back_dropped(link, depth, restore)).await
    }

    async fn roll_back_dropped(
        &self,
        link: &mut Link,
        depth: u32,
        restore: Option<Option<tokio::time::Instant>>,
    ) -> Result<(), DbErr> {
        // A deeper savepoint's RELEASE owed is moot: this step ends it too.
        if link.release_before(depth) {
            self.send_release(link).await?;
        }
        let sql = dialect::rollback_to(self.backend, depth, restore.map(left));
        let limit = bound::step(self.deadline).min(ROLLBACK_GRACE);
        let rolled_back = self
            .savepoint_step(link, sql, limit, crate::error::rollback_unanswered)
            .await;
        if let Err(err) = rolled_back {
            self.tree.break_with(err.clone());
            return Err(err);
        }
        Ok(())
    }

    /// Sends a savepoint step (`RELEASE`, `ROLLBACK TO`) under [`Critical`], bounded by
    /// `limit`. Cut off (its future dropped) or unanswered by `limit`, the step is not
    /// done: the tree breaks, and its connection is closed (an unanswered one fails with
    /// `unanswered(limit)`).
    async fn savepoint_step(
        &self,
        link: &mut Link,
        sql: Cow<'static, str>,
        limit: Duration,
        unanswered: impl FnOnce(Duration) -> DbErr,
    ) -> Result<(), DbErr> {
        let step = Critical::step(Some(&self.tree));
        let work = async {
            // What a rollback does not undo of an answer owed (`owed.rs`); none is owed
            // before a RELEASE, whose caller read it first.
            self.read_owed_before_rollback(link).await?;
            // Nothing is sent in a broken tree (the server may have ended the transaction,
            // and the savepoint with it: its error, not the step's, is the cause).
            if let Some(err) = self.tree.broken() {
                return Err(err);
            }
            link.step(sql).await
        };
        let Some(ended) = bound::within(self.backend, limit, work).await else {
            // `step` dropped undone: the tree breaks.
            link.distrust();
            return Err(unanswered(limit));
        };
        step.done();
        ended
    }
}

/// The callbacks a successful end hands on: the outermost level's, to run now (none when
/// the transaction was begun by hand, whose COMMIT safe-db cannot see); a savepoint's
/// pass to its parent.
fn hand_over_callbacks(tree: &Tree, id: u32, parent: Option<u32>) -> Vec<Callback> {
    let mut callbacks = tree.callbacks();
    let Some(parent) = parent else {
        let (mine, rest): (Vec<_>, Vec<_>) =
            callbacks.drain(..).partition(|(owner, _)| *owner == id);
        *callbacks = rest;
        if !tree.commit_visible && !mine.is_empty() {
            tracing::warn!(
                dropped = mine.len(),
                "on_commit callbacks dropped: the enclosing transaction was begun by \
                 hand, so safe-db cannot see it commit"
            );
            return Vec::new();
        }
        return mine.into_iter().map(|(_, callback)| callback).collect();
    };
    for (owner, _) in callbacks.iter_mut() {
        if *owner == id {
            *owner = parent;
        }
    }
    Vec::new()
}

/// A level dropped before it ended (its operation's future dropped mid-way): its
/// callbacks go, and a savepoint is rolled back to before the tree's next step. An
/// outermost level's connection is settled by its link when the tree goes.
impl Drop for Tx {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let id = self.id;
        self.tree.callbacks().retain(|(owner, _)| *owner != id);
        if self.parent.is_some() {
            let mut dropped = self.tree.dropped.lock().unwrap_or_else(|e| e.into_inner());
            if !dropped.is_some_and(|(depth, _)| depth <= self.depth) {
                *dropped = Some((self.depth, self.restore_bound));
            }
        }
    }
}
