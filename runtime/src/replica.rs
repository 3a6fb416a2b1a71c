//! Where a `read_only` operation on a [`Db`](crate::Db) with a replica runs: on the
//! replica, unless it has not yet replayed the last commit made through the same `Db`
//! (read-your-writes), lags beyond a bound, or is down; then on the primary.
//!
//! PostgreSQL streaming standbys only: after each outermost commit that may have written,
//! the `Db` reads the primary's WAL insert position (`pg_current_wal_insert_lsn()`, one
//! round trip); a `read_only` operation then asks the standby how far it has replayed
//! (`pg_last_wal_replay_lsn()`, with what it has received, `pg_last_wal_receive_lsn()`, and
//! the time of its last replayed transaction, for the lag: one round trip, skipped while a
//! recent answer suffices).
//! A replica that is not a PostgreSQL standby (a MySQL replica, a second database) is used
//! without these checks.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio::time::Instant;

use crate::quarantine::{Node, Quarantine, Was};
/// How long the standby may take to answer how far it has replayed: a pool waits for a
/// connection up to its acquire timeout (30 s by default), which a standby that is down
/// would make every read pay.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long reading the primary's WAL position after a commit may take.
const NOTE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `read_only` operation waits for its BEGIN on the replica (a connection
/// included) before it goes to the primary instead: the replica may have gone down since
/// it was last asked.
pub(crate) const BEGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an answer of the standby's is reused.
const FRESH_FOR: Duration = Duration::from_millis(200);
/// The default bound on a standby's replay lag (see [`Db::max_replica_lag`](crate::Db::max_replica_lag)).
pub(crate) const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);

/// A replica pool, and what is known of how far it has caught up.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) pool: DatabaseConnection,
    /// The primary's WAL position after the latest commit through this `Db` (0: none).
    last_commit: AtomicU64,
    /// Commits whose WAL position is being read: until it is known, reads go to the
    /// primary.
    pending: AtomicU32,
    /// The last position could not be read: reads go to the primary until one is.
    unknown: AtomicBool,
    pub(crate) max_lag: Mutex<Duration>,
    known: Mutex<Known>,
    /// Left aside for a while when it cannot be reached, or is no standby any more.
    down: Quarantine,
}

#[derive(Debug, Default)]
struct Known {
    /// Not a PostgreSQL standby: used without checks.
    unchecked: bool,
    /// Seen in recovery at least once: a standby, whose role is checked with each answer
    /// (promoted, it is no replica of this primary any more).
    was_standby: bool,
    /// Its last answer: replayed up to, when asked, whether it lagged beyond the bound.
    replayed: u64,
    asked: Option<Instant>,
    lagging: bool,
}

/// `16/B374D848` as a number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

impl Replica {
    pub(crate) fn new(pool: DatabaseConnection) -> Self {
        let unchecked = pool.get_database_backend() != DbBackend::Postgres;
        Replica {
            pool,
            last_commit: AtomicU64::new(0),
            pending: AtomicU32::new(0),
            unknown: AtomicBool::new(false),
            max_lag: Mutex::new(DEFAULT_MAX_LAG),
            known: Mutex::new(Known {
                unchecked,
                ..Known::default()
            }),
            down: Quarantine::new(Node::Replica),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether commits must be noted (the replica is a standby whose replay is checked).
    pub(crate) fn tracks_commits(&self) -> bool {
        !self.known().unchecked
    }

    /// Notes a commit through this `Db`: from now on, until the primary's WAL position
    /// after it is known (read on a task of its own, so that the committed operation
    /// returns, and runs its callbacks, without waiting for it), reads go to the primary.
    /// The insert position is read: with `synchronous_commit = off` the write position
    /// can be behind the commit record.
    pub(crate) fn note_commit(self: &Arc<Self>, primary: &DatabaseConnection) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        let (replica, primary) = (Arc::clone(self), primary.clone());
        // Whatever becomes of the task (its runtime shut down before it ran or ended), the
        // mark goes with it: the position is then unknown, and reads go to the primary
        // until a later commit's is read.
        let mark = Pending(Arc::clone(self), false);
        let note = async move {
            let mut mark = mark;
            let asked = tokio::time::timeout(
                NOTE_TIMEOUT,
                primary.query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    crate::dialect::PRIMARY_WAL_POSITION,
                )),
            )
            .await;
            let lsn = match asked {
                Ok(Ok(Some(row))) => row
                    .try_get_by_index::<String>(0)
                    .ok()
                    .and_then(|t| parse_lsn(&t)),
                _ => None,
            };
            match lsn {
                Some(lsn) => {
                    replica.last_commit.fetch_max(lsn, Ordering::SeqCst);
                    replica.unknown.store(false, Ordering::SeqCst);
                    mark.1 = true;
                }
                None => {
                    replica.unknown.store(true, Ordering::SeqCst);
                    tracing::warn!(
                        "the primary's WAL position could not be read after a commit: \
                         read_only operations run on the primary until it is, after a later \
                         commit"
                    );
                }
            }
            drop(mark);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(note)),
            // Dropped unrun: the mark goes, the position unknown.
            Err(_) => drop(note),
        }
    }

    /// Whether a `read_only` operation may run on the replica now.
    pub(crate) async fn usable(&self, deadline: Option<Instant>) -> bool {
        // A commit whose position is not known yet (or could not be read): not on a
        // standby. (Asked once all the same if it has never been, to learn whether it is
        // one.)
        let blocked =
            self.pending.load(Ordering::SeqCst) > 0 || self.unknown.load(Ordering::SeqCst);
        let needed = self.last_commit.load(Ordering::SeqCst);
        let now = Instant::now();
        {
            let known = self.known();
            if known.unchecked {
                return true;
            }
            if self.down.is_down() {
                return false;
            }
            if blocked && known.asked.is_some() {
                return false;
            }
            if let Some(asked) = known.asked
                && now.duration_since(asked) < FRESH_FOR
                && !known.lagging
                && known.replayed >= needed
            {
                return true;
            }
        }
        let limit = crate::quarantine::node_wait(ASK_TIMEOUT, deadline);
        let asked = tokio::time::timeout(limit, self.ask())
            .await
            .unwrap_or_else(|_| {
                Err(crate::cause::raise(crate::Cause::NodeUnreachable {
                    node: 1,
                    detail: format!("the read replica gave no answer within {limit:?}"),
                }))
            });
        match asked {
            Err(err) => {
                self.mark_down(&err);
                false
            }
            Ok(None) => {
                let mut known = self.known();
                if !known.was_standby {
                    // Never in recovery: not a standby; used as a plain second database.
                    known.unchecked = true;
                    return true;
                }
                // It was a standby and is not any more: promoted. Whatever it holds now is
                // not this primary's, and reading it would break read-your-writes: left
                // aside, asked again after a while, taken back once a standby again.
                known.asked = None;
                if self.down.set_aside() == Was::Cleared {
                    tracing::warn!(
                        "the read replica is no longer a standby (promoted?): read_only \
                         operations run on the primary until it is a standby again"
                    );
                }
                false
            }
            Ok(Some((replayed, lag))) => {
                let max_lag = *self.max_lag.lock().unwrap_or_else(|e| e.into_inner());
                let lagging = lag.is_some_and(|lag| lag > max_lag);
                {
                    let mut known = self.known();
                    known.was_standby = true;
                    known.replayed = replayed;
                    known.asked = Some(now);
                    known.lagging = lagging;
                    self.down.clear();
                }
                if blocked {
                    return false;
                }
                if lagging {
                    tracing::warn!(
                        lag_ms = lag.unwrap_or_default().as_millis() as u64,
                        max_lag_ms = max_lag.as_millis() as u64,
                        "the read replica lags beyond its bound: read_only operations run on \
                         the primary"
                    );
                    return false;
                }
                if replayed < needed {
                    tracing::debug!(
                        replayed = %lsn_text(replayed),
                        needed = %lsn_text(needed),
                        "the read replica has not replayed this Db's last commit yet: this \
                         read_only operation runs on the primary"
                    );
                    return false;
                }
                true
            }
        }
    }

    /// The replica could not be reached (`err`): it is left aside for a while.
    pub(crate) fn mark_down(&self, err: &DbErr) {
        self.down.mark_down(err);
    }

    /// The standby's replay position and, if it has WAL received but not replayed, how old
    /// its last replayed transaction is. `None` if it is not in recovery.
    async fn ask(&self) -> Result<Option<(u64, Option<Duration>)>, DbErr> {
        let row = self
            .pool
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                crate::dialect::REPLICA_STATE,
            ))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if !row.try_get_by_index::<bool>(0)? {
            return Ok(None);
        }
        // In recovery with nothing replayed yet: behind every commit.
        let replayed = row
            .try_get_by_index::<Option<String>>(1)?
            .and_then(|t| parse_lsn(&t))
            .unwrap_or(0);
        let behind = row.try_get_by_index::<Option<bool>>(2)?.unwrap_or(false);
        let age_ms = row.try_get_by_index::<Option<i64>>(3)?;
        let lag = match (behind, age_ms) {
            (true, Some(ms)) => Some(Duration::from_millis(ms.max(0) as u64)),
            _ => None,
        };
        Ok(Some((replayed, lag)))
    }
}

/// A commit's WAL position being read: dropped (read or not, its task ended or gone), the
/// mark goes; unread (`.1` false), the position is unknown.
struct Pending(Arc<Replica>, bool);

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.1 {
            self.0.unknown.store(true, Ordering::SeqCst);
        }
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_print() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(lsn_text((0x16 << 32) | 0xB374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
