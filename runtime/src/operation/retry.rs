//! Whether and when an attempt is retried, as one value ([`Retry`]): the attempt under way,
//! the retries allowed, the deadline, and the pause before the next attempt (exponential
//! back-off with jitter, capped, never past the deadline). Deciding is
//! [`Retry::pause`]'s; sleeping is the operation's ([`Operation::pause_before_retry`]).

use std::time::Duration;

use tokio::time::Instant;

use super::Operation;
use crate::observe;

// Measured in benches/benches/contention.rs (16 serializable writers on 4 PostgreSQL rows):
// first retries sooner than ~10 ms only collide again, and long caps idle the losers.
const BACKOFF_BASE: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_millis(40);
/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// An operation's attempts: which one is under way, how many may follow a conflict, and
/// until when.
#[derive(Clone, Copy, Debug)]
pub(super) struct Retry {
    /// The attempt under way, from 1 (0 before the first).
    attempt: u32,
    /// How many attempts may follow the first (`Options::retries`).
    retries: u32,
    deadline: Option<Instant>,
}

impl Retry {
    pub(super) fn new(retries: u32, deadline: Option<Instant>) -> Self {
        Retry {
            attempt: 0,
            retries,
            deadline,
        }
    }

    /// Starts the next attempt, and says which it is (1 for the first).
    pub(super) fn next_attempt(&mut self) -> u32 {
        self.attempt += 1;
        self.attempt
    }

    /// The attempt under way (0 before the first).
    pub(super) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the operation's time is up, if it has a timeout.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The time left before the deadline, if there is one.
    pub(super) fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// After a conflict in the attempt under way: the pause before another attempt, if one
    /// may follow: none once the retries are spent, or if the pause would end past the
    /// deadline. Exponential back-off with jitter, capped. It only decides: nothing sleeps
    /// here.
    pub(super) fn pause(&self) -> Option<Duration> {
        if self.attempt > self.retries {
            return None;
        }
        let exp = BACKOFF_BASE.saturating_mul(1 << self.attempt.saturating_sub(1).min(16));
        let ceiling = exp.min(BACKOFF_CAP);
        // "Equal jitter": half fixed, half random, so contenders spread out.
        let delay = ceiling / 2 + ceiling.mul_f64(jitter() / 2.0);
        // The timer fires on a millisecond tick at or after `delay`: leave that
        // millisecond of slack so the wake-up cannot land past the deadline.
        if let Some(left) = self.remaining()
            && delay + TIMER_TICK >= left
        {
            return None;
        }
        Some(delay)
    }
}

impl Operation {
    /// Waits `pause` (from [`Retry::pause`]) before the next attempt: the one place a
    /// retry is recorded.
    pub(super) async fn pause_before_retry(&self, pause: Duration) {
        tracing::debug!(
            operation = self.name,
            attempt = self.retry.attempt(),
            delay_ms = pause.as_millis() as u64,
            "retrying after a conflict"
        );
        tokio::time::sleep(pause).await;
        observe::retried(self.name);
    }
}

/// A number in [0, 1) to spread contenders' retries out.
fn jitter() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }

    // On tokio's paused clock: the sleeps are exact, so the bound is too.
    #[tokio::test(start_paused = true)]
    async fn pauses_never_end_past_the_deadline() {
        let started = Instant::now();
        let mut retry = Retry::new(100, Some(started + Duration::from_millis(50)));
        let mut slept = 0;
        loop {
            retry.next_attempt();
            let Some(pause) = retry.pause() else {
                break;
            };
            tokio::time::sleep(pause).await;
            slept += 1;
        }
        assert!(slept > 0);
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn pauses_stop_after_the_retries() {
        let mut retry = Retry::new(2, None);
        retry.next_attempt();
        assert!(retry.pause().is_some());
        retry.next_attempt();
        assert!(retry.pause().is_some());
        retry.next_attempt();
        assert!(retry.pause().is_none());
    }
}
