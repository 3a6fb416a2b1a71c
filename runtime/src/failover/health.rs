//! Whether a node of a `Db` with failover is fit to take an operation, asked inside the
//! transaction just begun there: a Galera node must be `Synced` with `wsrep_ready = ON`
//! (as ProxySQL and MaxScale judge it); a PostgreSQL node must be a primary (not in
//! recovery, as libpq's `target_session_attrs=read-write` judges it) on the newest
//! timeline seen (not a former primary back after a failover).

use std::sync::atomic::Ordering;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use tokio::time::Instant;

use super::{HEALTHY_FOR, Nodes};
use crate::Tx;

/// How long each other node may take to say its role when a `Db` first judges a
/// PostgreSQL node ([`Nodes::learn_timelines`]; all at once).
const LEARN_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

impl Nodes {
    /// The transaction `tx` just begun on `node`, if the node is fit to serve: a Galera
    /// node that is not `Synced` with `wsrep_ready = ON` (a donor, a joiner, a node cut off
    /// from the primary component) is not, as ProxySQL and MaxScale judge it; nor is a
    /// PostgreSQL standby (in recovery), as libpq's `target_session_attrs=read-write`
    /// judges it. Asked once per [`HEALTHY_FOR`] per node; a server without Galera is fit.
    pub(super) async fn check_health(&self, node: usize, tx: Tx) -> Result<Tx, DbErr> {
        let fresh = self.healthy_until[node]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until);
        let backend = tx.get_database_backend();
        let sql = match backend {
            _ if fresh => return Ok(tx),
            DbBackend::MySql => crate::dialect::GALERA_HEALTH,
            DbBackend::Postgres => crate::dialect::PG_ROLE,
            _ => return Ok(tx),
        };
        let row = tx
            .query_one_raw(Statement::from_string(backend, sql))
            .await?;
        if backend == DbBackend::Postgres {
            let standby = row
                .as_ref()
                .and_then(|r| r.try_get_by_index::<bool>(0).ok())
                .unwrap_or(true);
            let timeline = row
                .as_ref()
                .and_then(|r| r.try_get_by_index::<i64>(1).ok())
                .unwrap_or(0) as u32;
            if standby {
                let _ = tx.rollback().await;
                return Err(crate::cause::raise(crate::Cause::NodeStandby { node }));
            }
            if self.newest_timeline.load(Ordering::SeqCst) == 0 {
                self.learn_timelines(node).await;
            }
            let newest = self
                .newest_timeline
                .fetch_max(timeline, Ordering::SeqCst)
                .max(timeline);
            if timeline < newest {
                let _ = tx.rollback().await;
                return Err(crate::cause::raise(crate::Cause::NodeBehind {
                    node,
                    timeline,
                    newest,
                }));
            }
            self.healthy(node);
            return Ok(tx);
        }
        let state = |i| {
            row.as_ref()
                .and_then(|r| r.try_get_by_index::<Option<String>>(i).ok().flatten())
        };
        let (ready, local_state) = (state(0), state(1));
        let fit = match (ready.as_deref(), local_state.as_deref()) {
            // Not a Galera node.
            (None, None) => true,
            (Some(ready), Some(local_state)) => ready == "ON" && local_state == "4",
            _ => false,
        };
        if fit {
            self.healthy(node);
            return Ok(tx);
        }
        let _ = tx.rollback().await;
        Err(crate::error::node_unfit(
            node,
            ready.as_deref().unwrap_or("?"),
            local_state.as_deref().unwrap_or("?"),
        ))
    }

    /// Node `node` was found fit: not asked again for [`HEALTHY_FOR`].
    pub(super) fn healthy(&self, node: usize) {
        *self.healthy_until[node]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + HEALTHY_FOR);
    }

    /// A BEGIN that node `node` refused because it is a standby (PostgreSQL refuses a
    /// `serializable` or read-write BEGIN in recovery: SQLSTATE 0A000 or 25006) is
    /// `Cause::NodeStandby`, so that the next node is tried; any other error is `err`.
    pub(super) fn standby_refusal(&self, node: usize, err: DbErr) -> DbErr {
        let refused = self.sticky
            && matches!(
                crate::error::sqlstate(&err).as_deref(),
                Some("0A000" | "25006")
            );
        if refused {
            crate::cause::raise(crate::Cause::NodeStandby { node })
        } else {
            err
        }
    }

    /// The first time a PostgreSQL node is judged, the other nodes are asked their role
    /// too (all at once, each within [`LEARN_WAIT`], on a connection of its pool, outside any
    /// transaction), so that a `Db` made after a failover, whose first node is a former
    /// primary back on an older timeline, does not take it for the primary.
    async fn learn_timelines(&self, judged: usize) {
        let asks = self
            .pools
            .iter()
            .enumerate()
            .filter(|(node, _)| *node != judged)
            .map(|(_, pool)| {
                tokio::time::timeout(
                    LEARN_WAIT,
                    pool.query_one_raw(Statement::from_string(
                        DbBackend::Postgres,
                        crate::dialect::PG_ROLE,
                    )),
                )
            });
        for asked in futures_util::future::join_all(asks).await {
            if let Ok(Ok(Some(row))) = asked
                && let (Ok(false), Ok(timeline)) = (
                    row.try_get_by_index::<bool>(0),
                    row.try_get_by_index::<i64>(1),
                )
            {
                self.newest_timeline
                    .fetch_max(timeline as u32, Ordering::SeqCst);
            }
        }
    }
}
