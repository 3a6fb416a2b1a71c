//! The protocol: begin. An outermost BEGIN with its settings in one message, a savepoint
//! with its own, a transaction of its own for `requires_new`, and the deadline given to
//! the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use tokio::time::Instant;

use super::guard::Critical;
use super::tree::Tree;
use super::{Link, Tx, bound, left, pool_unknown};
use crate::{Begin, Db, Options, dialect};

/// The earlier of two deadlines.
fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The outermost transaction's options as SeaORM takes them, for a connection that is
/// not an sqlx pool (SeaORM then begins it).
fn sea_orm_options(backend: DbBackend, options: &Options) -> TransactionOptions {
    let mut out = TransactionOptions::default();
    if backend == DbBackend::Sqlite {
        out.sqlite_transaction_mode = Some(if options.read_only {
            SqliteTransactionMode::Deferred
        } else {
            SqliteTransactionMode::Immediate
        });
    } else {
        out.isolation_level = options.isolation.map(|i| i.to_sea_orm());
        out.access_mode = options.read_only.then_some(AccessMode::ReadOnly);
    }
    out
}

impl Tx {
    fn new(backend: DbBackend, depth: u32, tree: Arc<Tree>) -> Self {
        Tx {
            backend,
            depth,
            id: 0,
            parent: None,
            statement_failed: AtomicBool::new(false),
            abandoned_failed: AtomicBool::new(false),
            tree,
            children: std::sync::OnceLock::new(),
            turn: None,
            deadline: None,
            restore_bound: None,
            read_only: false,
            refuse_writes: false,
            read_only_savepoint: false,
            doomed: AtomicBool::new(false),
            ended: false,
        }
    }

    /// Begins an outermost transaction on a connection of `conn`'s pool, with `options`'
    /// isolation and access mode and its statements bounded by `deadline`, all in one
    /// message. `home` is the [`Db`] that `conn` was chosen from, if it was:
    /// `requires_new` operations in the transaction begin there.
    ///
    /// Cut off (its future dropped) or failed half-way, the BEGIN leaves its connection
    /// owing an answer or inside a transaction: the link then rolls it back off the
    /// caller's path before the pool sees it again, or closes it (see `link.rs`).
    pub(crate) async fn begin(
        conn: &DatabaseConnection,
        home: Option<&Db>,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let mut link = match Link::acquire(conn).await {
            Some(link) => link?,
            None => return Box::pin(Tx::begin_on_sea_orm(conn, home, options, deadline)).await,
        };
        let backend = link.backend();
        let bound = match backend {
            DbBackend::Sqlite => None,
            _ => left(deadline),
        };
        let sql = dialect::begin(
            backend,
            dialect::Begin {
                isolation: options.isolation,
                read_only: options.read_only,
                bound,
            },
        );
        let limit = bound::step(deadline);
        let begun = bound::within(backend, limit, link.begin_step(sql))
            .await
            .unwrap_or_else(|| {
                // Unanswered: the connection is closed (the link owes an answer and is
                // distrusted below), and nothing can have been committed.
                Err(crate::error::step_unanswered("BEGIN", limit))
            });
        if let Err(err) = begun {
            if link.owes() {
                link.distrust();
            }
            match backend {
                // One statement: nothing began.
                DbBackend::Sqlite => {}
                // A `SET TRANSACTION` that ran before a failed `START TRANSACTION` would
                // apply to the next borrower's transaction.
                DbBackend::MySql if options.isolation.is_some() => link.distrust(),
                // Maybe begun (PostgreSQL's BEGIN, then a failed `SET LOCAL`): rolled back
                // before the pool sees it again.
                _ => link.set_open(true),
            }
            return Err(err);
        }
        link.set_open(true);
        // Made after the BEGIN, so that the future holds less across it.
        let home = match home {
            Some(db) => db.clone(),
            None => Db::new(conn.clone(), None),
        };
        let tree = Tree::new(link, true, Some(home));
        if bound.is_some() && backend == DbBackend::MySql {
            tree.session_bound.store(true, Ordering::Relaxed);
        }
        let mut tx = Tx::new(backend, 0, tree);
        tx.read_only = options.read_only;
        tx.deadline = deadline;
        Ok(tx)
    }

    /// Begins an outermost transaction through SeaORM, on a connection that is not an
    /// sqlx pool (a mock or proxy connection): no server-side statement bound.
    async fn begin_on_sea_orm(
        conn: &DatabaseConnection,
        home: Option<&Db>,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let backend = conn.get_database_backend();
        let txn = conn
            .begin_with_options(sea_orm_options(backend, options))
            .await?;
        let home = match home {
            Some(db) => db.clone(),
            None => Db::new(conn.clone(), None),
        };
        let mut tx = Tx::new(backend, 0, Tree::new(Link::sea_orm(txn), true, Some(home)));
        tx.read_only = options.read_only;
        tx.deadline = deadline;
        Ok(tx)
    }

    /// Begins a savepoint in a transaction that safe-db does not manage (begun by hand).
    pub(crate) async fn begin_in(
        txn: &DatabaseTransaction,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let backend = txn.get_database_backend();
        let link = Link::sea_orm(txn.begin().await?);
        let mut tx = Tx::new(backend, 1, Tree::new(link, false, None));
        if let Some(own) = deadline
            && let Some(sql) = dialect::bound_sql(backend, left(Some(own)))
        {
            tx.tree.link().await.step(sql.into()).await?;
            tx.restore_bound = Some(None);
            tx.note_session_bound();
        }
        tx.deadline = deadline;
        Ok(tx)
    }

    /// Begins a savepoint in this transaction, with its settings in the same message,
    /// breaking the tree if that does not complete (see [`Critical`]). The isolation is
    /// the outermost level's to choose.
    ///
    /// A `read_only` savepoint in a transaction that may write is made read-only too: by
    /// PostgreSQL (`SET LOCAL transaction_read_only`, ended by `ROLLBACK TO`), and by
    /// safe-db on MySQL/MariaDB, which cannot (writes refused before they are sent).
    pub(crate) async fn begin_nested(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        if let Some(err) = self.tree.broken() {
            return Err(err);
        }
        // Taken at once when no sibling holds it (see `Tree::link`).
        let children = self
            .children
            .get_or_init(|| Arc::new(tokio::sync::Mutex::new(())));
        let turn = match Arc::clone(children).try_lock_owned() {
            Ok(turn) => turn,
            Err(_) => Arc::clone(children).lock_owned().await,
        };
        // After the turn: a sibling that joined this level may have failed meanwhile.
        if let Some(err) = self.why_not_join() {
            return Err(err);
        }
        let backend = self.backend;
        let depth = self.depth + 1;
        let becomes_read_only = options.read_only && !self.read_only;
        let read_only_savepoint = becomes_read_only && backend == DbBackend::Postgres;
        let own = earlier(self.deadline, deadline);
        let sets_bound = own != self.deadline && backend != DbBackend::Sqlite;
        let sql = dialect::savepoint(
            backend,
            depth,
            read_only_savepoint,
            sets_bound.then(|| left(own)),
        );
        // A SAVEPOINT that fails or is cut off leaves the enclosing transaction in a state
        // nobody knows (PostgreSQL: aborted; the savepoint there or not): the tree breaks.
        let step = Critical::step(Some(&self.tree));
        {
            let mut link = self.tree.link().await;
            self.settle_dropped(&mut link).await?;
            // The SAVEPOINT's bound, which the answer owed, if any, shares.
            let until = link.owes().then(|| Instant::now() + bound::step(own));
            if link.owes() {
                Box::pin(self.settle_owed(&mut link, until)).await?;
                if let Some(err) = self.why_not_join() {
                    // What was owed ended the transaction (a MySQL/MariaDB deadlock).
                    return Err(err);
                }
            }
            if link.owes_release() {
                Box::pin(self.send_release(&mut link)).await?;
            }
            let limit = bound::step_until(own, until);
            let Some(begun) = bound::within(backend, limit, link.step(sql)).await else {
                link.distrust();
                return Err(crate::error::step_unanswered("SAVEPOINT", limit));
            };
            begun?;
        }
        step.done();
        let tx = Tx {
            backend,
            depth,
            id: self.tree.next_id.fetch_add(1, Ordering::Relaxed),
            parent: Some(self.id),
            statement_failed: AtomicBool::new(false),
            abandoned_failed: AtomicBool::new(false),
            tree: Arc::clone(&self.tree),
            children: std::sync::OnceLock::new(),
            turn: Some(turn),
            deadline: own,
            restore_bound: sets_bound.then_some(self.deadline),
            read_only: self.read_only || options.read_only,
            refuse_writes: self.refuse_writes || (becomes_read_only && backend == DbBackend::MySql),
            read_only_savepoint,
            doomed: AtomicBool::new(false),
            ended: false,
        };
        if sets_bound {
            tx.note_session_bound();
        }
        Ok(tx)
    }

    /// Begins a transaction of its own, outside this one, on the handle this
    /// transaction's tree was begun on (`requires_new`).
    ///
    /// Not in a tree that can no longer commit (broken, or this level doomed), and bounded
    /// by this transaction's deadline too: the server stops its statements when the
    /// caller's time is up.
    pub(crate) async fn begin_new(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        if let Some(err) = self.why_not_join() {
            return Err(err);
        }
        #[cfg(feature = "testing")]
        if self.tree.test.load(Ordering::Relaxed) {
            // Inside a test's transaction everything nests, so that the test leaves nothing.
            return self.begin_nested(options, deadline).await;
        }
        let deadline = earlier(deadline, self.deadline);
        match &self.tree.home {
            Some(home) => home.__begin(options, deadline).await,
            None => Err(pool_unknown()),
        }
    }

    /// A MariaDB statement bound was set on the session: the outermost end resets it.
    fn note_session_bound(&self) {
        if self.backend == DbBackend::MySql {
            self.tree.session_bound.store(true, Ordering::Relaxed);
        }
    }
}
