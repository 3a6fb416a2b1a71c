//! A `Db` over several nodes that may take writes: a MariaDB Galera cluster's, where each
//! operation begins on the next node in turn, or a PostgreSQL primary and its standbys,
//! where operations stay on the node that last took one and move on only when it fails
//! (libpq's `target_session_attrs=read-write`). A node that cannot be reached, does not
//! answer in time, is a standby (PostgreSQL) or is not `Synced` and ready (Galera) is left
//! aside for a while and asked again after. See [`Db::with_failover`](crate::Db::with_failover).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::time::Instant;

use crate::quarantine::{Node, Quarantine};
use crate::{Db, ErrorKind, Options, PoolStats, Tx};

mod health;

/// How long a BEGIN on one node may take (a connection included) before the next node is
/// tried: a pool waits for a connection up to its acquire timeout (30 s by default). With
/// a deadline, at most a third of the time left, so that a node that does not answer
/// leaves time for the others.
const BEGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a Galera node found `Synced` and ready is taken as such before it is asked
/// again (one round trip, inside the transaction begun on it).
const HEALTHY_FOR: Duration = Duration::from_secs(1);
/// While no node can take a transaction, how long [`Nodes::begin`] waits before it asks
/// them all again.
const ROUND_PAUSE: Duration = Duration::from_millis(100);
/// How long [`Nodes::begin`] waits for a node that can take a transaction when the
/// operation has no deadline (a failover under way, say).
const WAIT_FOR_A_NODE: Duration = Duration::from_secs(5);

/// The nodes of a `Db` with failover; the first is its primary pool.
#[derive(Debug)]
pub(crate) struct Nodes {
    pools: Vec<DatabaseConnection>,
    /// Each node's, left aside for a while when it cannot be reached.
    down: Vec<Quarantine>,
    healthy_until: Vec<Mutex<Option<Instant>>>,
    next: AtomicUsize,
    /// PostgreSQL: one primary at a time, so operations stay on the node that took the
    /// last one (writes spread over two promoted servers would diverge).
    sticky: bool,
    /// PostgreSQL: the newest timeline seen on a primary; a primary on an older one is a
    /// former primary back after a failover (split brain), never used again.
    newest_timeline: AtomicU32,
}

impl Nodes {
    pub(crate) fn new(pools: Vec<DatabaseConnection>) -> Self {
        let down = (0..pools.len())
            .map(|node| Quarantine::new(Node::Writer(node)))
            .collect();
        let healthy_until = pools.iter().map(|_| Mutex::new(None)).collect();
        let sticky = pools
            .first()
            .is_some_and(|pool| pool.get_database_backend() == sea_orm::DbBackend::Postgres);
        Nodes {
            pools,
            down,
            healthy_until,
            next: AtomicUsize::new(0),
            sticky,
            newest_timeline: AtomicU32::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pools.len()
    }

    /// Node `node` failed with `err`: left aside for a while.
    pub(crate) fn mark_down(&self, node: usize, err: &DbErr) {
        if let Some(down) = self.down.get(node) {
            down.mark_down(err);
        }
    }

    /// Closes the pools of every node but the primary.
    pub(crate) async fn close_others(&self) -> Result<(), DbErr> {
        for pool in &self.pools[1..] {
            pool.clone().close().await?;
        }
        Ok(())
    }

    /// Begins on the next node in turn that is not known to be down (all of them, if every
    /// one is), trying the others when one cannot be reached. While no node can take it
    /// (a failover under way: the primary gone, its standby not promoted yet), it asks
    /// again every [`ROUND_PAUSE`] until the deadline, or for [`WAIT_FOR_A_NODE`] without
    /// one.
    pub(crate) async fn begin(
        &self,
        db: &Db,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let until = deadline.unwrap_or_else(|| Instant::now() + WAIT_FOR_A_NODE);
        loop {
            let err = match self.begin_round(db, options, deadline, until).await {
                Ok(tx) => return Ok(tx),
                Err(err)
                    if matches!(
                        ErrorKind::of(&err),
                        ErrorKind::Unavailable | ErrorKind::PoolExhausted
                    ) =>
                {
                    err
                }
                Err(err) => return Err(err),
            };
            if Instant::now() + ROUND_PAUSE >= until {
                return Err(err);
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// One round of [`Nodes::begin`]: each candidate node once, each given at most
    /// [`BEGIN_TIMEOUT`] and a third of the time left before `until`. A node whose pool
    /// has no free connection is skipped, not left aside; if one was, the round's error
    /// says so (`Cause::NodeBusy`), since waiting may mend it.
    async fn begin_round(
        &self,
        db: &Db,
        options: &Options,
        deadline: Option<Instant>,
        until: Instant,
    ) -> Result<Tx, DbErr> {
        let n = self.pools.len();
        let start = if self.sticky {
            self.next.load(Ordering::Relaxed) % n
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        let up: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| !self.down[i].is_down())
            .collect();
        let candidates = if up.is_empty() { order } else { up };
        let (mut last, mut busy) = (None, None);
        for node in candidates {
            let limit = crate::quarantine::node_wait(BEGIN_TIMEOUT, Some(until));
            let begun = tokio::time::timeout(limit, async {
                let tx = Tx::begin(&self.pools[node], Some(db), options, deadline)
                    .await
                    .map_err(|err| self.standby_refusal(node, err))?;
                self.check_health(node, tx).await
            })
            .await;
            let err = match begun {
                Ok(Ok(mut tx)) => {
                    if self.sticky {
                        self.next.store(node, Ordering::Relaxed);
                    }
                    self.down[node].clear();
                    tx.set_node(node);
                    return Ok(tx);
                }
                // Busy, not down: the next node is tried, this one is not left aside.
                Ok(Err(err)) if ErrorKind::of(&err) == ErrorKind::PoolExhausted => {
                    busy = Some(err);
                    continue;
                }
                Ok(Err(err)) if ErrorKind::of(&err) != ErrorKind::Unavailable => {
                    return Err(err);
                }
                Ok(Err(err)) => err,
                Err(_) if self.pool_full(node) => {
                    busy = Some(crate::cause::raise(crate::Cause::NodeBusy {
                        node,
                        waited: limit,
                    }));
                    continue;
                }
                Err(_) => crate::cause::raise(crate::Cause::NodeUnreachable {
                    node,
                    detail: format!("no transaction began on it within {limit:?}"),
                }),
            };
            self.mark_down(node, &err);
            last = Some(err);
        }
        Err(busy.or(last).unwrap_or_else(|| {
            crate::cause::raise(crate::Cause::NodeUnreachable {
                node: 0,
                detail: "no database node is configured".to_owned(),
            })
        }))
    }

    /// Whether node `node`'s pool has every connection open and none free: a BEGIN that
    /// timed out there was waiting for a connection, not for the server.
    fn pool_full(&self, node: usize) -> bool {
        PoolStats::of(&self.pools[node]).is_some_and(|pool| pool.idle == 0 && pool.size >= pool.max)
    }
}
