//! The restart and health policies: pure timing decisions, tested on their own.

use std::time::Duration;

/// When to restart a crashed plugin, and when to give up.
///
/// The delay before restart *n* (counting consecutive crashes from 1) is `initial_delay`
/// doubled *n - 1* times, at most `max_delay`: 1, 2, 4, 8, 16, 16, ... seconds by default.
/// After `max_consecutive_crashes` crashes in a row the plugin is disabled. A plugin that ran
/// for `reset_after` before crashing starts counting again from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// The delay after the first crash (default 1 s).
    pub initial_delay: Duration,
    /// The longest delay (default 16 s).
    pub max_delay: Duration,
    /// Crashes in a row after which the plugin is disabled (default 10).
    pub max_consecutive_crashes: u32,
    /// How long a plugin must run for its crash count to reset (default 60 s).
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(16),
            max_consecutive_crashes: 10,
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Setters for building on the defaults: `RestartPolicy::default().with_...(..)`.
impl RestartPolicy {
    /// The same policy with [`initial_delay`](Self::initial_delay) set.
    pub fn with_initial_delay(mut self, initial_delay: Duration) -> Self {
        self.initial_delay = initial_delay;
        self
    }

    /// The same policy with [`max_delay`](Self::max_delay) set.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// The same policy with [`max_consecutive_crashes`](Self::max_consecutive_crashes) set.
    pub fn with_max_consecutive_crashes(mut self, max_consecutive_crashes: u32) -> Self {
        self.max_consecutive_crashes = max_consecutive_crashes;
        self
    }

    /// The same policy with [`reset_after`](Self::reset_after) set.
    pub fn with_reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }
}

impl RestartPolicy {
    /// The delay before restarting after `consecutive_crashes` crashes in a row (the one just
    /// seen included), or `None` when the plugin must be disabled instead.
    ///
    /// ```
    /// use std::time::Duration;
    /// use toru_host::RestartPolicy;
    /// let p = RestartPolicy::default();
    /// assert_eq!(p.delay(1), Some(Duration::from_secs(1)));
    /// assert_eq!(p.delay(5), Some(Duration::from_secs(16)));
    /// assert_eq!(p.delay(10), None);
    /// ```
    pub fn delay(&self, consecutive_crashes: u32) -> Option<Duration> {
        if consecutive_crashes >= self.max_consecutive_crashes {
            return None;
        }
        let doublings = consecutive_crashes.saturating_sub(1).min(31);
        Some(
            self.initial_delay
                .saturating_mul(1u32 << doublings)
                .min(self.max_delay),
        )
    }

    /// The delay before another start after `failures` starts in a row failed for lack of
    /// resources: the crash schedule (1, 2, 4, 8, 16, 16 ... s by default), never giving up, since
    /// such a failure is the machine's, not the plugin's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use toru_host::RestartPolicy;
    /// let p = RestartPolicy::default();
    /// assert_eq!(p.resource_delay(1), Duration::from_secs(1));
    /// assert_eq!(p.resource_delay(100), Duration::from_secs(16));
    /// ```
    pub fn resource_delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    /// The consecutive-crash count after a crash, given the count before it and how long the
    /// plugin had been running.
    pub fn count_after_crash(&self, before: u32, ran_for: Duration) -> u32 {
        if ran_for >= self.reset_after {
            1
        } else {
            before.saturating_add(1)
        }
    }
}

/// How the host checks that a running plugin still answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthPolicy {
    /// Time between pings (default 10 s).
    pub interval: Duration,
    /// How long a `pong` may take (default 5 s).
    pub timeout: Duration,
    /// Missed pings in a row after which the plugin is killed and restarted (default 3).
    pub max_missed: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            max_missed: 3,
        }
    }
}

/// Setters for building on the defaults: `HealthPolicy::default().with_...(..)`.
impl HealthPolicy {
    /// The same policy with [`interval`](Self::interval) set.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The same policy with [`timeout`](Self::timeout) set.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same policy with [`max_missed`](Self::max_missed) set.
    pub fn with_max_missed(mut self, max_missed: u32) -> Self {
        self.max_missed = max_missed;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_1_2_4_8_16_then_16_and_disables_at_10() {
        let p = RestartPolicy::default();
        let delays: Vec<Option<u64>> = (1..=11).map(|n| p.delay(n).map(|d| d.as_secs())).collect();
        let s = Some;
        assert_eq!(
            delays,
            [
                s(1),
                s(2),
                s(4),
                s(8),
                s(16),
                s(16),
                s(16),
                s(16),
                s(16),
                None,
                None
            ]
        );
    }

    #[test]
    fn schedule_scales_with_the_policy_and_never_overflows() {
        let p = RestartPolicy {
            initial_delay: Duration::from_millis(3),
            max_delay: Duration::from_millis(20),
            max_consecutive_crashes: u32::MAX,
            reset_after: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1), Some(Duration::from_millis(3)));
        assert_eq!(p.delay(3), Some(Duration::from_millis(12)));
        assert_eq!(p.delay(4), Some(Duration::from_millis(20)));
        assert_eq!(p.delay(1000), Some(Duration::from_millis(20)));
    }

    #[test]
    fn a_long_healthy_run_resets_the_count() {
        let p = RestartPolicy::default();
        assert_eq!(p.count_after_crash(4, Duration::from_secs(59)), 5);
        assert_eq!(p.count_after_crash(4, Duration::from_secs(60)), 1);
        assert_eq!(p.count_after_crash(0, Duration::ZERO), 1);
    }

    #[test]
    fn zero_max_crashes_disables_at_once() {
        let p = RestartPolicy {
            max_consecutive_crashes: 1,
            ..RestartPolicy::default()
        };
        assert_eq!(p.delay(1), None);
    }
}
