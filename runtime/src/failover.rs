//! A `Db` over several nodes that all take writes (a MariaDB Galera cluster): each
//! operation begins on the next node in turn that is not known to be down; a node that
//! cannot be reached is left aside for a while and used again after. See
//! [`Db::with_failover`](crate::Db::with_failover).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr, RuntimeErr};
use tokio::time::Instant;

use crate::{Db, ErrorKind, Options, Tx};

/// How long a node that could not be reached is left aside before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long a BEGIN on one node may take (a connection included) before the next node is
/// tried: a pool waits for a connection up to its acquire timeout (30 s by default).
const BEGIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The nodes of a `Db` with failover; the first is its primary pool.
#[derive(Debug)]
pub(crate) struct Nodes {
    pools: Vec<DatabaseConnection>,
    down_until: Vec<Mutex<Option<Instant>>>,
    next: AtomicUsize,
}

impl Nodes {
    pub(crate) fn new(pools: Vec<DatabaseConnection>) -> Self {
        let down_until = pools.iter().map(|_| Mutex::new(None)).collect();
        Nodes {
            pools,
            down_until,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.pools.len()
    }

    fn is_down(&self, node: usize) -> bool {
        let until = *self.down_until[node]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Node `node` failed with `err`: left aside for a while.
    pub(crate) fn mark_down(&self, node: usize, err: &DbErr) {
        let Some(slot) = self.down_until.get(node) else {
            return;
        };
        let mut until = slot.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = until.is_none_or(|u| u <= Instant::now());
        *until = Some(Instant::now() + DOWN_FOR);
        if fresh {
            tracing::warn!(
                node,
                error = %crate::error::redact(&err.to_string()),
                "a database node cannot be reached: operations go to the other nodes (it is \
                 tried again in {DOWN_FOR:?})"
            );
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
    /// one is), trying the others when one cannot be reached.
    pub(crate) async fn begin(
        &self,
        db: &Db,
        options: &Options,
        deadline: Option<Instant>,
    ) -> Result<Tx, DbErr> {
        let n = self.pools.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        let up: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| !self.is_down(i))
            .collect();
        let candidates = if up.is_empty() { order } else { up };
        let mut last = None;
        for node in candidates {
            let begun = tokio::time::timeout(
                BEGIN_TIMEOUT,
                Tx::begin(&self.pools[node], Some(db), options, deadline),
            )
            .await;
            let err = match begun {
                Ok(Ok(mut tx)) => {
                    tx.set_node(node);
                    return Ok(tx);
                }
                // Busy, not down: the next node is tried, this one is not left aside.
                Ok(Err(err)) if ErrorKind::of(&err) == ErrorKind::PoolExhausted => {
                    last = Some(err);
                    continue;
                }
                Ok(Err(err)) if ErrorKind::of(&err) != ErrorKind::Unavailable => {
                    return Err(err);
                }
                Ok(Err(err)) => err,
                Err(_) => DbErr::Conn(RuntimeErr::Internal(format!(
                    "safe-db: no transaction began on node {node} within {BEGIN_TIMEOUT:?}"
                ))),
            };
            self.mark_down(node, &err);
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| {
            DbErr::Conn(RuntimeErr::Internal("safe-db: no database node".to_owned()))
        }))
    }
}
