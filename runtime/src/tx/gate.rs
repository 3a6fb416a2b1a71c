//! The statements the body sends: admitted one at a time, checked, bounded, and their
//! failures noted.

use std::sync::atomic::Ordering;

use sea_orm::{DbBackend, DbErr, Statement};
use tokio::sync::MutexGuard;

use super::{Link, Tx};
use crate::{Cause, ErrorKind, Refusal};

/// The statements the body sends: checked, bounded, and their failures noted.
impl Tx {
    /// Takes the tree's turn for one statement and checks it: refused before it is sent
    /// when the tree is broken or the statement would end the transaction (or write, in
    /// a read-only savepoint on MySQL). Returns the link, held until the statement's
    /// outcome is noted. A nested level dropped unended is rolled back to first.
    pub(super) async fn admit(&self, sql: &str) -> Result<MutexGuard<'_, Link>, DbErr> {
        let mut link = self.tree.link().await;
        self.settle_dropped(&mut link).await?;
        if link.owes() {
            // The body's own wait: bounded by the operation's `timeout` only.
            Box::pin(self.settle_owed(&mut link, None)).await?;
        }
        self.refuse(&mut link, sql).await?;
        if link.owes_release() {
            // Boxed: held inline, a savepoint step would add to every statement's future.
            Box::pin(self.send_release(&mut link)).await?;
        }
        Ok(link)
    }

    /// Refuses a statement before it is sent: in a broken tree, or one that would end
    /// the transaction (see [`crate::sql::must_refuse`]).
    pub(super) async fn refuse(&self, link: &mut Link, sql: &str) -> Result<(), DbErr> {
        let suspect = self.tree.suspect().clone();
        if let Some(err) = suspect {
            // Boxed, as every rare path here: held inline, it would add to the size of every
            // statement's future.
            Box::pin(self.settle_suspicion(link, err)).await;
        }
        if let Some(err) = self.tree.broken() {
            return Err(err);
        }
        if let Some(err) = self.doomed() {
            return Err(err);
        }
        let backend = self.backend;
        if self.refuse_writes
            && let Some(what) = crate::sql::writes(backend, sql)
        {
            return Err(crate::error::read_only_refused(&what));
        }
        match crate::sql::must_refuse(backend, sql) {
            None => Ok(()),
            Some(keyword) => {
                let reason = match keyword.as_str() {
                    "COMMIT"
                    | "ROLLBACK"
                    | "BEGIN"
                    | "END"
                    | "ABORT"
                    | "START TRANSACTION"
                    | "PREPARE TRANSACTION" => Refusal::EndsTransaction,
                    "SAVEPOINT" | "RELEASE" | "ROLLBACK TO" => Refusal::ManagesSavepoint,
                    "EXECUTE" | "PREPARE" | "IF" | "WHILE" | "LOOP" | "REPEAT" | "CASE" => {
                        Refusal::Unreadable
                    }
                    _ => Refusal::ImplicitCommit,
                };
                Err(crate::cause::raise(Cause::Refused { keyword, reason }))
            }
        }
    }

    /// Takes the tree's turn for `stmt` (see [`Tx::admit`]) and makes it what is sent:
    /// itself, or its injected failure (`safe_db::testing`; an injected failure made on
    /// the client is noted and returned).
    pub(super) async fn prepared(
        &self,
        #[allow(unused_mut)] mut stmt: Statement,
    ) -> Result<(MutexGuard<'_, Link>, Statement), DbErr> {
        #[allow(unused_mut)]
        let mut link = self.admit(&stmt.sql).await?;
        #[cfg(feature = "testing")]
        match self.injected() {
            Some(Ok(sql)) => stmt = Statement::from_string(stmt.db_backend, sql),
            Some(Err(err)) => {
                self.note_failure(&mut link, &err).await;
                return Err(err);
            }
            None => {}
        }
        Ok((link, stmt))
    }

    /// A statement's result, its failure noted first (see [`Tx::note_failure`]).
    pub(super) async fn noted<T>(
        &self,
        link: &mut Link,
        result: Result<T, DbErr>,
    ) -> Result<T, DbErr> {
        if let Err(err) = &result {
            self.note_failure(link, err).await;
        }
        result
    }

    /// Records a failed statement: a conflict for the retry, and on MySQL/MariaDB, where
    /// the server may have rolled the whole transaction back, breaks the tree if it has.
    pub(super) async fn note_failure(&self, link: &mut Link, err: &DbErr) {
        if self.note_failure_now(err) {
            Box::pin(self.settle_suspicion(link, err.clone())).await;
        }
    }

    /// What of [`Tx::note_failure`] needs no round trip. Returns whether the server must
    /// be asked if the transaction survived (the question is also left in `suspect`, so
    /// that the next statement asks it if this caller does not).
    pub(crate) fn note_failure_now(&self, err: &DbErr) -> bool {
        self.statement_failed.store(true, Ordering::Relaxed);
        if ErrorKind::of(err) == ErrorKind::Unavailable {
            self.lost_connection(err);
        }
        self.tree.note_conflict(err);
        self.note_ended(err)
    }

    /// On MySQL/MariaDB, what `err` did to the whole transaction ([`mysql_ended`]): breaks
    /// the tree if it ended it; returns whether the server must be asked (the question is
    /// left in `suspect`, for [`Tx::settle_suspicion`]). For a statement's own error and for
    /// the answer owed before a savepoint's rollback (`owed.rs`) alike.
    pub(super) fn note_ended(&self, err: &DbErr) -> bool {
        if self.backend != DbBackend::MySql {
            return false;
        }
        match mysql_ended(err) {
            Ended::Yes => self.tree.break_with(err.clone()),
            Ended::Maybe => {
                *self.tree.suspect() = Some(err.clone());
                return true;
            }
            Ended::No => {}
        }
        false
    }

    /// Opens a stream of a statement's rows (feature `stream`): the statement is checked
    /// like any other, and holds the tree's statement turn until the stream ends or is
    /// dropped.
    #[cfg(feature = "stream")]
    pub(crate) async fn open_stream(
        &self,
        stmt: Statement,
    ) -> Result<crate::stream::TxStream<'_>, DbErr> {
        let (link, stmt) = self.prepared(stmt).await?;
        Ok(crate::stream::TxStream::new(self, link, stmt))
    }

    /// Asks MySQL/MariaDB whether the transaction survived `err`, and breaks the tree
    /// with it if not (or if the answer cannot be had: MySQL, unlike MariaDB, has no
    /// `@@in_transaction`). One round trip, after those errors only.
    pub(super) async fn settle_suspicion(&self, link: &mut Link, err: DbErr) {
        if link.owes_release() && self.send_release(link).await.is_err() {
            // The tree is broken: nothing more is sent, there is nothing left to ask.
            *self.tree.suspect() = None;
            return;
        }
        let asked = link
            .query_one(Statement::from_string(
                DbBackend::MySql,
                crate::dialect::IN_TRANSACTION,
            ))
            .await;
        let open = matches!(
            asked.map(|row| row.map(|r| r.try_get_by_index::<i64>(0))),
            Ok(Some(Ok(1)))
        );
        if !open {
            self.tree.break_with(err);
        }
        *self.tree.suspect() = None;
    }
}

/// Whether a MySQL/MariaDB error ended the whole transaction on the server.
enum Ended {
    Yes,
    /// Under some settings only: the server must be asked ([`Tx::settle_suspicion`]).
    Maybe,
    /// It undid its own statement only.
    No,
}

/// What a failed statement did to a MySQL/MariaDB transaction: the one decision, for a
/// statement's own error and for the answer of one the body stopped waiting for (`owed.rs`).
fn mysql_ended(err: &DbErr) -> Ended {
    match crate::error::mysql_number(err) {
        // A deadlock always ends the transaction.
        Some(1213) => Ended::Yes,
        // These end it only under some settings (a lock wait timeout under
        // `innodb_rollback_on_timeout`; a full lock table; a record changed since read): ask.
        Some(1205 | 1206 | 1020) => Ended::Maybe,
        // A session the server ended (a `KILL`), or a lost connection, ends it with it.
        _ if ErrorKind::of(err) == ErrorKind::Unavailable => Ended::Yes,
        // Every other server error undoes its own statement only.
        _ => Ended::No,
    }
}
