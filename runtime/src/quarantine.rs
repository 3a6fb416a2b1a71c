//! A node left aside for a while after it failed: a failover node (`failover.rs`) or the
//! read replica (`replica.rs`). While it is aside, operations go elsewhere (the other
//! nodes, the primary); once its time is up it is tried again.

use std::sync::Mutex;
use std::time::Duration;

use sea_orm::DbErr;
use tokio::time::Instant;

/// How long a node that could not be reached is left aside before it is tried again.
pub(crate) const DOWN_FOR: Duration = Duration::from_secs(2);

/// How long one node may take to answer before the next is tried: `limit`, and at most a
/// third of what is left before `deadline`, so that an operation whose node hangs still has
/// time to run elsewhere.
pub(crate) fn node_wait(limit: Duration, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now()) / 3),
        None => limit,
    }
}

/// Which node a quarantine is for: named in its warning.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Node {
    /// A node of a `Db` with failover (0: the primary).
    Writer(usize),
    /// The read replica.
    Replica,
}

/// How a node stood when it was left aside (see [`Quarantine::set_aside`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Was {
    /// Not aside since it was last [cleared](Quarantine::clear) (or ever).
    Cleared,
    /// Aside before, its time up.
    Back,
    /// Still aside.
    Aside,
}

/// Whether a node is left aside, and until when.
#[derive(Debug)]
pub(crate) struct Quarantine {
    node: Node,
    until: Mutex<Option<Instant>>,
}

impl Quarantine {
    pub(crate) fn new(node: Node) -> Self {
        Quarantine {
            node,
            until: Mutex::new(None),
        }
    }

    /// Whether the node is aside now.
    pub(crate) fn is_down(&self) -> bool {
        let until = *self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|until| Instant::now() < until)
    }

    /// The node could not be reached (`err`): it is left aside for [`DOWN_FOR`], with a
    /// warning unless it was aside already.
    pub(crate) fn mark_down(&self, err: &DbErr) {
        if self.set_aside() == Was::Aside {
            return;
        }
        let error = crate::error::redact(&err.to_string());
        match self.node {
            Node::Writer(node) => tracing::warn!(
                node,
                %error,
                "a database node cannot be used (unreachable, or not fit to take writes): \
                 operations go to the other nodes (it is tried again in {DOWN_FOR:?})"
            ),
            Node::Replica => tracing::warn!(
                %error,
                "the read replica cannot be reached: read_only operations run on the primary (it \
                 is tried again in {DOWN_FOR:?})"
            ),
        }
    }

    /// Leaves the node aside for [`DOWN_FOR`] from now, without a warning, and says how it
    /// stood before.
    pub(crate) fn set_aside(&self) -> Was {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let was = match *until {
            None => Was::Cleared,
            Some(until) if until <= now => Was::Back,
            Some(_) => Was::Aside,
        };
        *until = Some(now + DOWN_FOR);
        was
    }

    /// The node served: it is no longer aside.
    pub(crate) fn clear(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
