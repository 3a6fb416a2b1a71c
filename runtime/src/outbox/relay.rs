//! The relay: claims due messages in a short transaction (a lease, with `SKIP LOCKED`
//! where the server has it), hands each to the handler outside any transaction, then
//! records the result with one statement guarded by its claim.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{Either, select};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, QueryResult, Statement, Value};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::MessageId;
use crate::dialect::outbox as sql;
use crate::{Options, Tx};

/// The longest error text kept in `last_error`, in characters.
const ERROR_CHARS: usize = 2000;

/// One message handed to a [`Handler`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The message's id: unique, never reused. The same message delivered again (after a
    /// failure, a crash, or a lease that ran out) has the same id.
    pub id: MessageId,
    /// The topic it was recorded with.
    pub topic: String,
    /// The key it was recorded with, if any.
    pub key: Option<String>,
    /// The payload, as the JSON text recorded.
    pub json: String,
    /// Which attempt this is, from 1. Every claim counts, so a relay that died holding the
    /// message used one too.
    pub attempt: u32,
}

impl Delivery {
    /// The payload, deserialized.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    fn from_row(row: &QueryResult) -> Result<Delivery, DbErr> {
        let attempts: i32 = row.try_get_by_index(4)?;
        Ok(Delivery {
            id: MessageId(row.try_get_by_index(0)?),
            topic: row.try_get_by_index(1)?,
            key: row.try_get_by_index(2)?,
            json: row.try_get_by_index(3)?,
            attempt: attempts.max(0) as u32 + 1,
        })
    }
}

/// What a [`Relay`] hands each message to. Any `Fn(Delivery) -> impl Future<Output =
/// Result<(), E>>` (with `E: Display`) is one: `|delivery: Delivery| async move { … }`.
///
/// `Ok` marks the message delivered. `Err`, or a panic, is a failed attempt: the message
/// is tried again after a back-off, or is given up (dead) after the relay's
/// [`max_attempts`](Relay::max_attempts); the error's text is kept in `last_error`.
pub trait Handler: Send + Sync {
    /// The handler's error.
    type Error: fmt::Display;

    /// Delivers one message.
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<F, Fut, E> Handler for F
where
    F: Fn(Delivery) -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display,
{
    type Error = E;

    fn handle(&self, delivery: Delivery) -> impl Future<Output = Result<(), E>> + Send {
        self(delivery)
    }
}

/// What one [`Relay::run_once`] did (or, from [`Relay::stats`], everything a relay has
/// done).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// Messages claimed (leased) for delivery.
    pub claimed: u64,
    /// Messages the handler took (`Ok`) and that were marked delivered.
    pub delivered: u64,
    /// Failed attempts put back for a later one.
    pub failed: u64,
    /// Messages given up after their last attempt (state dead).
    pub dead_lettered: u64,
    /// Deliveries whose result could not be recorded because the lease had run out and
    /// another relay had claimed the message meanwhile: it is delivered again (or was).
    pub lease_lost: u64,
    /// The age of the oldest message not yet delivered, after the round (`None` when
    /// there is none; always `None` in [`Relay::stats`]).
    pub oldest_pending: Option<Duration>,
}

impl RunReport {
    fn add(&self, totals: &Totals) {
        for (total, n) in [
            (&totals.claimed, self.claimed),
            (&totals.delivered, self.delivered),
            (&totals.failed, self.failed),
            (&totals.dead_lettered, self.dead_lettered),
            (&totals.lease_lost, self.lease_lost),
        ] {
            total.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Totals {
    claimed: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    lease_lost: AtomicU64,
}

/// Delivers committed outbox messages to a [`Handler`], at least once.
///
/// Each round ([`run_once`](Relay::run_once)) claims up to [`batch_size`](Relay::batch_size)
/// due messages in a short transaction of its own: the oldest first, at most one per key
/// (the next of a key waits until the one before it is delivered or dead), each leased
/// for [`lease`](Relay::lease) by the database's clock, with a claim token of this round.
/// Then it hands them to the handler one after the other, outside any transaction, and
/// records each result with one statement that changes the row only if it still carries
/// this round's token.
///
/// Several relays (tasks or processes) may run over one table: while a lease holds, no
/// other relay claims its message (on PostgreSQL and MariaDB the claim skips rows another
/// claim has locked, `FOR UPDATE SKIP LOCKED`; SQLite has one writer at a time). A handler
/// that takes longer than the lease may see its message claimed and delivered again by
/// another relay: delivery is at least once; use [`Delivery::id`] to make an effect
/// exactly once.
///
/// See the [module documentation](super) for an example.
pub struct Relay<H> {
    db: DatabaseConnection,
    handler: H,
    batch_size: u32,
    lease: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    poll_interval: Duration,
    totals: Totals,
}

impl<H> fmt::Debug for Relay<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("batch_size", &self.batch_size)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_cap", &self.backoff_cap)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Relay<H> {
    /// A relay over the outbox of `db`, delivering to `handler`, with the defaults: batches
    /// of 32, a lease of 30 s, 10 attempts, back-off from 1 s doubling up to 5 min, a poll
    /// every 500 ms when there was nothing to claim.
    pub fn new(db: DatabaseConnection, handler: H) -> Relay<H> {
        Relay {
            db,
            handler,
            batch_size: 32,
            lease: Duration::from_secs(30),
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
            totals: Totals::default(),
        }
    }

    /// At most `n` messages claimed per round (at least 1).
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long a claimed message is held for this relay (at least 1 ms). It must cover
    /// delivering a whole batch: a message whose lease runs out before its result is
    /// recorded may be claimed and delivered again by another relay.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// After `n` failed attempts (at least 1) a message is given up: state dead, its last
    /// error kept, and the next message of its key may go.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The wait after a failed attempt: `base` doubled after each attempt, capped at `cap`,
    /// half of it random ("equal jitter").
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// How long [`run`](Relay::run) waits after a round that claimed nothing.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Everything this relay has done so far (`oldest_pending` is `None`).
    pub fn stats(&self) -> RunReport {
        let t = &self.totals;
        RunReport {
            claimed: t.claimed.load(Ordering::Relaxed),
            delivered: t.delivered.load(Ordering::Relaxed),
            failed: t.failed.load(Ordering::Relaxed),
            dead_lettered: t.dead_lettered.load(Ordering::Relaxed),
            lease_lost: t.lease_lost.load(Ordering::Relaxed),
            oldest_pending: None,
        }
    }

    /// One round: claims a batch, delivers it, records each result, then reads the age of
    /// the oldest pending message. An error is the database's (the claim, a result, the
    /// age): the messages it left claimed are delivered again once their lease runs out.
    pub async fn run_once(&self) -> Result<RunReport, DbErr> {
        let token = fastrand::i64(1..i64::MAX);
        let claimed = self.claim(token).await?;
        let mut report = RunReport {
            claimed: claimed.len() as u64,
            ..RunReport::default()
        };
        let mut failed = Ok(());
        for delivery in claimed {
            if let Err(err) = self.deliver(delivery, token, &mut report).await {
                failed = Err(err);
                break;
            }
        }
        report.add(&self.totals);
        failed?;
        report.oldest_pending = super::oldest_pending_age(&self.db).await?;
        #[cfg(feature = "metrics")]
        metrics::gauge!("safe_db_outbox_oldest_pending_seconds")
            .set(report.oldest_pending.map_or(0.0, |age| age.as_secs_f64()));
        Ok(report)
    }

    /// Runs rounds until `shutdown` completes: the next round at once after one that
    /// claimed something, after [`poll_interval`](Relay::poll_interval) otherwise, or after
    /// a failed one (logged at warn level: a relay outlives a database restart). A round
    /// under way when `shutdown` completes is finished first. Returns [`stats`](Relay::stats).
    ///
    /// ```
    /// # use safe_db::outbox::{Delivery, Relay};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), sea_orm::DbErr> {
    /// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
    /// # safe_db::outbox::migrate(&db).await?;
    /// let relay = Relay::new(db, |d: Delivery| async move { Ok::<_, String>(println!("{}", d.id)) });
    /// let stop = tokio::time::sleep(std::time::Duration::from_millis(50)); // e.g. ctrl-c
    /// let done = relay.run(stop).await;
    /// assert_eq!(done.delivered, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> RunReport {
        let mut shutdown = pin!(shutdown);
        loop {
            let wait = match self.run_once().await {
                Ok(report) if report.claimed > 0 => Duration::ZERO,
                Ok(_) => self.poll_interval,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay: a round failed; trying again");
                    self.poll_interval
                }
            };
            if wait.is_zero() {
                if shutdown.as_mut().now_or_never().is_some() {
                    break;
                }
                continue;
            }
            let sleep = pin!(tokio::time::sleep(wait));
            if let Either::Left(_) = select(shutdown.as_mut(), sleep).await {
                break;
            }
        }
        self.stats()
    }

    /// Claims a batch under `token`, in a transaction of its own.
    async fn claim(&self, token: i64) -> Result<Vec<Delivery>, DbErr> {
        let backend = self.db.get_database_backend();
        let batch = i64::from(self.batch_size);
        let lease_ms = self.lease.as_millis().min(i64::MAX as u128) as i64;
        let body = async move |tx: &Tx| {
            let select =
                Statement::from_sql_and_values(backend, sql::claim_select(backend), [batch.into()]);
            let rows = tx.query_all_raw(select).await?;
            let claimed = rows
                .iter()
                .map(Delivery::from_row)
                .collect::<Result<Vec<_>, _>>()?;
            if claimed.is_empty() {
                return Ok(claimed);
            }
            let mut values: Vec<Value> = vec![token.into(), lease_ms.into()];
            values.extend(claimed.iter().map(|d| Value::from(d.id.0)));
            let update = Statement::from_sql_and_values(
                backend,
                sql::claim_update(backend, claimed.len()),
                values,
            );
            tx.execute_raw(update).await?;
            Ok::<_, DbErr>(claimed)
        };
        // A claim that loses a conflict (a deadlock, SQLite busy) is simply tried again.
        Options::new().retries(3).run(&self.db, body).await
    }

    /// Hands `delivery` to the handler, then records what happened.
    async fn deliver(
        &self,
        delivery: Delivery,
        token: i64,
        report: &mut RunReport,
    ) -> Result<(), DbErr> {
        let span = tracing::info_span!(
            "safe_db.outbox.deliver",
            message_id = delivery.id.0,
            topic = %delivery.topic,
            key = delivery.key.as_deref(),
            attempt = delivery.attempt,
            outcome = tracing::field::Empty,
        );
        let (id, attempt) = (delivery.id, delivery.attempt);
        #[cfg(feature = "metrics")]
        let topic = delivery.topic.clone();
        let handled = AssertUnwindSafe(self.handler.handle(delivery))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let error = match handled {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(panic) => Some(format!("the handler panicked: {}", panic_text(&*panic))),
        };
        let backend = self.db.get_database_backend();
        let (outcome, statement) = match &error {
            None => (
                Outcome::Delivered,
                Statement::from_sql_and_values(
                    backend,
                    sql::mark_delivered(backend),
                    [id.0.into(), token.into()],
                ),
            ),
            Some(error) if attempt >= self.max_attempts => (
                Outcome::Dead,
                Statement::from_sql_and_values(
                    backend,
                    sql::mark_dead(backend),
                    [kept(error).into(), id.0.into(), token.into()],
                ),
            ),
            Some(error) => {
                let delay = self.backoff_for(attempt).as_millis().min(i64::MAX as u128) as i64;
                (
                    Outcome::Failed,
                    Statement::from_sql_and_values(
                        backend,
                        sql::mark_retry(backend),
                        [delay.into(), kept(error).into(), id.0.into(), token.into()],
                    ),
                )
            }
        };
        let recorded = self.db.execute_raw(statement).await?.rows_affected() == 1;
        let outcome = if recorded {
            outcome
        } else {
            Outcome::LeaseLost
        };
        *match outcome {
            Outcome::Delivered => &mut report.delivered,
            Outcome::Failed => &mut report.failed,
            Outcome::Dead => &mut report.dead_lettered,
            Outcome::LeaseLost => &mut report.lease_lost,
        } += 1;
        span.record("outcome", outcome.as_str());
        if let Some(error) = &error {
            span.in_scope(|| {
                tracing::warn!(
                    message_id = id.0,
                    attempt,
                    outcome = outcome.as_str(),
                    error = %crate::error::redact(error),
                    "outbox delivery failed"
                );
            });
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(outcome.metric(), "topic" => topic).increment(1);
        Ok(())
    }

    /// The wait after failed attempt number `attempt` (from 1).
    fn backoff_for(&self, attempt: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(30));
        let ceiling = exp.min(self.backoff_cap);
        ceiling / 2 + ceiling.mul_f64(fastrand::f64() / 2.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Failed,
    Dead,
    LeaseLost,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead_lettered",
            Outcome::LeaseLost => "lease_lost",
        }
    }

    #[cfg(feature = "metrics")]
    fn metric(self) -> &'static str {
        match self {
            Outcome::Delivered => "safe_db_outbox_delivered_total",
            Outcome::Failed => "safe_db_outbox_failed_total",
            Outcome::Dead => "safe_db_outbox_dead_lettered_total",
            Outcome::LeaseLost => "safe_db_outbox_lease_lost_total",
        }
    }
}

/// An error's text as kept in `last_error`: passwords taken out, at most
/// [`ERROR_CHARS`] characters.
fn kept(error: &str) -> String {
    crate::error::redact(error)
        .chars()
        .take(ERROR_CHARS)
        .collect()
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(not a string)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_half_jitter() {
        let relay = Relay::new(DatabaseConnection::default(), |_: Delivery| async {
            Ok::<_, String>(())
        })
        .backoff(Duration::from_millis(100), Duration::from_millis(1000));
        for (attempt, ceiling) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let delay = relay.backoff_for(attempt).as_millis();
                assert!(
                    (ceiling / 2..=ceiling).contains(&delay),
                    "attempt {attempt}: {delay} ms"
                );
            }
        }
    }

    #[test]
    fn kept_errors_are_bounded() {
        assert_eq!(kept(&"x".repeat(5000)).chars().count(), ERROR_CHARS);
    }
}
