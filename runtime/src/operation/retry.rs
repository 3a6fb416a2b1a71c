//! Whether and when an attempt is retried: exponential back-off with jitter, capped, never
//! past the operation's deadline.

use std::time::Duration;

use super::Operation;

// Measured in benches/benches/contention.rs (16 serializable writers on 4 PostgreSQL rows):
// first retries sooner than ~10 ms only collide again, and long caps idle the losers.
const BACKOFF_BASE: Duration = Duration::from_millis(20);
const BACKOFF_CAP: Duration = Duration::from_millis(40);
/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

impl Operation {
    /// Sleeps before the next attempt, if one is allowed: exponential back-off with
    /// jitter, capped, and never past the deadline.
    pub(super) async fn backoff(&mut self) -> bool {
        if self.attempt > self.options.retries {
            return false;
        }
        let exp = BACKOFF_BASE.saturating_mul(1 << (self.attempt - 1).min(16));
        let ceiling = exp.min(BACKOFF_CAP);
        // "Equal jitter": half fixed, half random, so contenders spread out.
        let delay = ceiling / 2 + ceiling.mul_f64(jitter() / 2.0);
        // The timer fires on a millisecond tick at or after `delay`: leave that
        // millisecond of slack so the wake-up cannot land past the deadline.
        if let Some(left) = self.remaining()
            && delay + TIMER_TICK >= left
        {
            return false;
        }
        tracing::debug!(
            operation = self.name,
            attempt = self.attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying after a conflict"
        );
        tokio::time::sleep(delay).await;
        true
    }
}

/// A number in [0, 1) to spread contenders' retries out.
fn jitter() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;
    use crate::operation::OpName;
    use tokio::time::Instant;

    #[test]
    fn jitter_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|j| (0.0..1.0).contains(j)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }

    // On tokio's paused clock: the sleeps are exact, so the bound is too.
    #[tokio::test(start_paused = true)]
    async fn backoff_never_sleeps_past_the_deadline() {
        let options = Options::new()
            .retries(100)
            .timeout(Duration::from_millis(50));
        let mut op = Operation::new(&options, OpName::plain("t"));
        let started = Instant::now();
        let mut slept = 0;
        loop {
            op.attempt += 1;
            if !op.backoff().await {
                break;
            }
            slept += 1;
        }
        assert!(slept > 0);
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn backoff_stops_after_the_retries() {
        let mut op = Operation::new(&Options::new().retries(2), OpName::plain("t"));
        op.attempt = 1;
        assert!(op.backoff().await);
        op.attempt = 2;
        assert!(op.backoff().await);
        op.attempt = 3;
        assert!(!op.backoff().await);
    }
}
