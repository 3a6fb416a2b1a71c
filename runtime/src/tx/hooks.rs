//! The testing kit's hooks into the protocol (feature `testing`), and the seam it plugs
//! into: the core asks an [`Injector`] for the failures armed on a transaction and never
//! imports the kit, which implements it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};

/// How a statement is replaced by its injected failure.
pub(crate) enum Injection {
    /// Send this instead: the server answers with the failure.
    Send(String),
    /// Fail with this, unsent (SQLite).
    Fail(DbErr),
}

/// The failures injected into one attempt's transaction (`safe_db::testing::Faults`).
pub(crate) trait Injector: Send + Sync + std::fmt::Debug {
    /// Counts a statement about to be sent; its injection if it is one to fail.
    fn statement(&self, backend: DbBackend) -> Option<Injection>;
    /// The commit's injection, if any, and the error to report if the server does not
    /// raise it.
    fn commit(&self, backend: DbBackend) -> Option<(Injection, DbErr)>;
}

use super::{Callback, Tx};
use crate::ErrorKind;

impl Tx {
    /// Makes this (outermost) transaction a test's (`safe_db::testing::TestTx`).
    pub(crate) fn enter_test(&mut self) {
        self.tree.test.store(true, Ordering::Relaxed);
    }

    /// The primary pool this transaction's tree was begun on.
    pub(crate) fn home_primary(&self) -> DatabaseConnection {
        match &self.tree.home {
            Some(home) => home.primary().clone(),
            None => unreachable!("a test's transaction begins on a connection"),
        }
    }

    /// Arms this attempt's injected failures.
    pub(crate) fn arm(&mut self, armed: Option<Box<dyn Injector>>) {
        if let Some(armed) = armed {
            let mut all = self.tree.armed.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|(id, _)| *id != self.id);
            all.push((self.id, Arc::from(armed)));
        }
    }

    /// Arms the injected failures of a `savepoint = false` operation joining this level:
    /// they come before this level's own until [`Tx::disarm`].
    pub(crate) fn arm_joined(&self, armed: Box<dyn Injector>) -> Arc<dyn Injector> {
        let armed: Arc<dyn Injector> = Arc::from(armed);
        let mut all = self.tree.armed.lock().unwrap_or_else(|e| e.into_inner());
        all.insert(0, (self.id, Arc::clone(&armed)));
        armed
    }

    /// Takes back what [`Tx::arm_joined`] armed.
    pub(crate) fn disarm(&self, armed: &Arc<dyn Injector>) {
        let mut all = self.tree.armed.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, other)| !Arc::ptr_eq(other, armed));
    }

    /// The failures injected into this level, if any.
    pub(super) fn armed(&self) -> Option<Arc<dyn Injector>> {
        let all = self.tree.armed.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .find(|(id, _)| *id == self.id)
            .map(|(_, armed)| Arc::clone(armed))
    }

    /// The after-commit callbacks held at this level.
    pub(crate) fn captured_callbacks(&self) -> usize {
        let id = self.id;
        self.tree
            .callbacks()
            .iter()
            .filter(|(owner, _)| *owner == id)
            .count()
    }

    /// Takes the after-commit callbacks held at this level, in registration order.
    pub(crate) fn take_callbacks(&self) -> Vec<Callback> {
        let mut callbacks = self.tree.callbacks();
        let (mine, rest): (Vec<_>, Vec<_>) = callbacks
            .drain(..)
            .partition(|(owner, _)| *owner == self.id);
        *callbacks = rest;
        mine.into_iter().map(|(_, callback)| callback).collect()
    }

    /// The injected failure of this attempt's commit, if one is armed: the server is made
    /// to raise it for real where it can. The caller rolls back.
    pub(super) async fn commit_fault(&self, armed: Arc<dyn Injector>) -> Option<DbErr> {
        let (injection, not_raised) = armed.commit(self.get_database_backend())?;
        let err = match injection {
            Injection::Fail(err) => err,
            Injection::Send(sql) => {
                let mut link = self.tree.link().await;
                // The rollback that follows makes a deeper savepoint's RELEASE owed moot.
                if link.release_before(self.depth)
                    && let Err(err) = self.send_release(&mut link).await
                {
                    return Some(err);
                }
                match link.execute_unprepared(&sql).await {
                    Err(err) => err,
                    Ok(_) => not_raised,
                }
            }
        };
        self.tree.note_conflict(&err);
        Some(err)
    }

    /// The statement about to be sent, if its failure is injected: `Ok(sql)` to send
    /// instead (the server raises the failure), `Err` to fail with unsent.
    pub(super) fn injected(&self) -> Option<Result<String, DbErr>> {
        match self.armed()?.statement(self.get_database_backend())? {
            Injection::Send(sql) => Some(Ok(sql)),
            Injection::Fail(err) => {
                if ErrorKind::of(&err) == ErrorKind::Unavailable {
                    self.tree.break_with(err.clone());
                }
                Some(Err(err))
            }
        }
    }
}
