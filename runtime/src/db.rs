//! The [`Db`] handle: the primary pool, a read replica's if one is configured, and the
//! other nodes that take writes (failover); where each operation begun on it runs.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::Either;
use sea_orm::{DatabaseConnection, DbErr};
use tokio::time::Instant;

use crate::begin::{Begin, Connection, Managed, sealed};
use crate::failover::Nodes;
use crate::replica::Replica;
use crate::{Options, Tx};

/// A connected database: the primary pool, and a read replica's if one is configured.
///
/// Operations take `&db` like a `DatabaseConnection`; those marked `read_only` run on the
/// replica. It dereferences to the primary for plain SeaORM queries.
///
/// With a PostgreSQL streaming standby as the replica, a `read_only` operation never reads
/// older data than a commit made earlier through the same `Db` (or a clone of it, such as
/// the one a `TxLayer` holds): while the standby has not replayed that commit, the operation
/// runs on the primary. A standby that cannot be reached, or whose replay lags behind
/// what it has received by more than [`Db::max_replica_lag`], is skipped with a warning.
/// See `docs/scaling-out.md`.
#[derive(Clone, Debug)]
pub struct Db {
    primary: DatabaseConnection,
    replica: Option<Arc<Replica>>,
    /// Every node that takes writes, the primary first (`Db::with_failover`).
    nodes: Option<Arc<Nodes>>,
    /// A test's transaction, in which every operation on this handle nests
    /// (`safe_db::testing::TestTx::db`).
    #[cfg(feature = "testing")]
    test: Option<Arc<Tx>>,
}

impl Db {
    /// A handle over an existing primary pool, and an optional replica pool.
    pub fn new(primary: DatabaseConnection, replica: Option<DatabaseConnection>) -> Self {
        Db {
            primary,
            replica: replica.map(|pool| Arc::new(Replica::new(pool))),
            nodes: None,
            #[cfg(feature = "testing")]
            test: None,
        }
    }

    /// More nodes that may take writes besides the primary. On MariaDB Galera each
    /// operation begins on the next node in turn, skipping nodes that are not `Synced`; on
    /// PostgreSQL (the primary and its standbys) operations stay on the node that took the
    /// last one, and a standby is used only once it is promoted (as libpq's
    /// `target_session_attrs=read-write` finds it). A node that cannot be reached is left
    /// aside for 2 s and the next is tried, and an operation with `retries` whose
    /// connection is lost before its COMMIT is re-run on another node. A COMMIT whose
    /// answer is lost fails with [`ErrorKind::CommitUnknown`](crate::ErrorKind::CommitUnknown),
    /// never re-run. Pools on nodes that may be down when this is made should be
    /// connected lazily (`ConnectOptions::connect_lazy`).
    pub fn with_failover(mut self, others: Vec<DatabaseConnection>) -> Self {
        let mut pools = vec![self.primary.clone()];
        pools.extend(others);
        self.nodes = (pools.len() > 1).then(|| Arc::new(Nodes::new(pools)));
        self
    }

    /// Node `node` of a `Db` with failover lost its connection.
    pub(crate) fn node_lost(&self, node: usize, err: &DbErr) {
        if let Some(nodes) = &self.nodes {
            nodes.mark_down(node, err);
        }
    }

    /// Whether an operation that lost its connection may be re-run on another node.
    pub(crate) fn fails_over(&self) -> bool {
        self.nodes.as_ref().is_some_and(|nodes| nodes.len() > 1)
    }

    /// A handle whose operations nest in a test's transaction.
    #[cfg(feature = "testing")]
    pub(crate) fn for_test(tx: Arc<Tx>) -> Self {
        let primary = tx.home_primary();
        Db {
            primary,
            replica: None,
            nodes: None,
            test: Some(tx),
        }
    }

    /// How far behind a PostgreSQL standby may be (the age of its last replayed
    /// transaction, while it has received WAL it has not replayed) before `read_only`
    /// operations leave it for the primary. Default: 5 s. Shared by the clones of this `Db`.
    pub fn max_replica_lag(self, max_lag: std::time::Duration) -> Self {
        if let Some(replica) = &self.replica {
            *replica.max_lag.lock().unwrap_or_else(|e| e.into_inner()) = max_lag;
        }
        self
    }

    /// The primary pool.
    pub fn primary(&self) -> &DatabaseConnection {
        &self.primary
    }

    /// The replica pool, if any.
    pub fn replica(&self) -> Option<&DatabaseConnection> {
        self.replica.as_deref().map(|replica| &replica.pool)
    }

    /// Notes a commit on the primary, for the read-your-writes of `read_only` operations.
    pub(crate) fn note_commit(&self) {
        if let Some(replica) = &self.replica
            && replica.tracks_commits()
        {
            replica.note_commit(&self.primary);
        }
    }

    /// Closes its pools (the replica's, the other nodes', the primary), waiting for their
    /// connections to be returned.
    pub async fn close(self) -> Result<(), DbErr> {
        if let Some(replica) = self.replica {
            replica.pool.clone().close().await?;
        }
        if let Some(nodes) = self.nodes {
            nodes.close_others().await?;
        }
        self.primary.close().await
    }
}

impl std::ops::Deref for Db {
    type Target = DatabaseConnection;

    fn deref(&self) -> &DatabaseConnection {
        &self.primary
    }
}

/// How long an operation on a test's `Db` (`safe_db::testing::TestTx::db`) waits for its
/// turn in the test's transaction before it fails (`Cause::TestTurnWaited`).
#[cfg(feature = "testing")]
const TEST_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

type Boxed<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Tx, DbErr>> + Send + 'a>>;

impl sealed::Sealed for Db {}
impl Begin for Db {
    fn __from_pool(&self) -> bool {
        true
    }

    /// `read_only` operations run on the replica, if there is one and it has caught up
    /// (see [`Db`]); in a test's transaction, every operation nests in it.
    fn __begin(
        &self,
        options: &Options,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<Tx, DbErr>> + Send {
        // The rare paths are boxed, so that they add nothing to every BEGIN's future.
        // (Each borrows only `self`: the options are copied in.)
        #[cfg(feature = "testing")]
        if let Some(test) = &self.test {
            let options = *options;
            return Either::Left(Box::pin(async move {
                // Operations on this handle nest in the test's transaction and take turns
                // there; one started while another holds the turn in the same task (where
                // production would take a second connection) would wait for ever.
                let nested =
                    tokio::time::timeout(TEST_TURN_WAIT, test.begin_nested(&options, deadline));
                nested
                    .await
                    .unwrap_or_else(|_| Err(crate::cause::raise(crate::Cause::TestTurnWaited)))
            }) as Boxed<'_>);
        }
        // PostgreSQL cannot run a serializable transaction on a standby.
        let replica = self.replica.as_ref().filter(|replica| {
            !(replica.pool.get_database_backend() == sea_orm::DbBackend::Postgres
                && options.isolation == Some(crate::Isolation::Serializable))
        });
        match (replica, options.read_only) {
            (Some(replica), true) => {
                let options = *options;
                Either::Left(Box::pin(async move {
                    // Each wait a share of the deadline: a replica that hangs leaves the
                    // operation time to run on the primary.
                    if replica.usable(deadline).await {
                        let limit =
                            crate::quarantine::node_wait(crate::replica::BEGIN_TIMEOUT, deadline);
                        let on_replica = Tx::begin(&replica.pool, Some(self), &options, deadline);
                        match tokio::time::timeout(limit, on_replica).await {
                            Ok(Ok(tx)) => return Ok(tx),
                            Ok(Err(err))
                                if !matches!(
                                    crate::ErrorKind::of(&err),
                                    crate::ErrorKind::Unavailable | crate::ErrorKind::PoolExhausted
                                ) =>
                            {
                                return Err(err);
                            }
                            Ok(Err(err)) => replica.mark_down(&err),
                            Err(_) => replica.mark_down(&crate::cause::raise(
                                crate::Cause::NodeUnreachable {
                                    node: 1,
                                    detail: format!(
                                        "no transaction began on the read replica within \
                                         {limit:?}"
                                    ),
                                },
                            )),
                        }
                    }
                    match &self.nodes {
                        Some(nodes) => nodes.begin(self, &options, deadline).await,
                        None => Tx::begin(&self.primary, Some(self), &options, deadline).await,
                    }
                }) as Boxed<'_>)
            }
            _ if self.nodes.is_some() => {
                let options = *options;
                Either::Left(Box::pin(async move {
                    let nodes = self.nodes.as_ref().expect("checked");
                    nodes.begin(self, &options, deadline).await
                }) as Boxed<'_>)
            }
            _ => Either::Right(Tx::begin(&self.primary, Some(self), options, deadline)),
        }
    }
}
impl Connection for Db {}
impl Managed for Db {}
