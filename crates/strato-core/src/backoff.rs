//! Backoff after failures: something that keeps failing (a node provider)
//! is tried again later and later, so that it does not spin.
//!
//! Rules (property-tested below): the delay after `n` failures is
//! `base · 2^min(n, max_doublings)`, capped; it never exceeds the cap and
//! never shrinks while failures go on; once the delay has passed, the next
//! try is due. Time is an argument (ms since the epoch).

/// How the delay grows with the failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub base_ms: i64,
    /// The failures beyond which the delay stops doubling.
    pub max_doublings: u32,
    pub cap_ms: i64,
}

impl Policy {
    /// A node provider: 4 s after the first failure, 8 s after the second,
    /// and so on up to 256 s (2 s · 2^7; the 300 s cap is the outer bound).
    pub const PROVIDER: Policy = Policy {
        base_ms: 2_000,
        max_doublings: 7,
        cap_ms: 300_000,
    };

    /// The wait after `failures` failures in a row.
    pub fn delay_ms(&self, failures: u32) -> i64 {
        self.base_ms
            .saturating_mul(1i64 << failures.min(self.max_doublings).min(62))
            .min(self.cap_ms)
    }
}

/// Failures in a row, and when the next try is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    policy: Policy,
    failures: u32,
    /// No try before this time.
    until: i64,
    /// When it last failed.
    failed_at: i64,
    last_error: String,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Policy::PROVIDER)
    }
}

impl Backoff {
    pub fn new(policy: Policy) -> Self {
        Backoff {
            policy,
            failures: 0,
            until: 0,
            failed_at: 0,
            last_error: String::new(),
        }
    }

    /// One more failure at `now`: the next try waits for the delay.
    pub fn fail(&mut self, now: i64, error: impl Into<String>) {
        self.failed_at = now;
        self.failures = self.failures.saturating_add(1);
        self.until = now.saturating_add(self.policy.delay_ms(self.failures));
        self.last_error = error.into();
    }

    /// Whether a try is due at `now`.
    pub fn ready(&self, now: i64) -> bool {
        self.until <= now
    }

    /// While a try is not due: until when, and the last failure's words.
    pub fn waiting(&self, now: i64) -> Option<(i64, &str)> {
        (!self.ready(now)).then_some((self.until, self.last_error.as_str()))
    }

    /// Something made after the last failure worked (a node created since
    /// came up): the failures count from zero again. A wait already begun
    /// runs out as it would.
    pub fn succeeded_since(&mut self, made_at: i64) {
        if made_at > self.failed_at {
            self.failures = 0;
        }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn provider_timings() {
        let mut b = Backoff::default();
        assert!(b.ready(0));
        b.fail(10_000, "out of machines");
        assert_eq!(b.waiting(10_000), Some((14_000, "out of machines")));
        assert!(!b.ready(13_999) && b.ready(14_000));
        b.fail(14_000, "still out");
        assert_eq!(b.waiting(14_000), Some((22_000, "still out")));
        assert_eq!(b.waiting(22_000), None);
        let p = Policy::PROVIDER;
        assert_eq!(p.delay_ms(7), 256_000);
        assert_eq!(p.delay_ms(u32::MAX), 256_000);
    }

    #[test]
    fn only_a_success_after_the_last_failure_resets() {
        let mut b = Backoff::default();
        b.fail(1_000, "no");
        b.fail(5_000, "no");
        b.succeeded_since(4_000);
        assert_eq!(b.failures(), 2);
        b.succeeded_since(5_001);
        assert_eq!(b.failures(), 0);
        // The wait begun runs out as it would.
        assert!(!b.ready(8_999));
        b.fail(9_000, "again");
        assert_eq!(b.waiting(9_000), Some((13_000, "again")));
    }

    proptest! {
        #[test]
        fn delays_stay_under_the_cap_and_never_shrink(
            base_ms in 1i64..10_000,
            max_doublings in 0u32..70,
            cap_ms in 1i64..1_000_000,
            failures in 0u32..200,
        ) {
            let p = Policy { base_ms, max_doublings, cap_ms };
            prop_assert!(p.delay_ms(failures) <= cap_ms);
            prop_assert!(p.delay_ms(failures) > 0);
            prop_assert!(p.delay_ms(failures + 1) >= p.delay_ms(failures));
        }

        #[test]
        fn a_try_is_due_exactly_when_the_delay_has_passed(
            steps in prop::collection::vec(0i64..400_000, 1..20),
            probe in 0i64..400_000,
        ) {
            let mut b = Backoff::default();
            let mut now = 0;
            let mut last_delay = 0;
            for step in steps {
                now += step;
                b.fail(now, "x");
                let (until, _) = b.waiting(now).expect("waits after a failure");
                let delay = until - now;
                prop_assert!(delay >= last_delay && delay <= Policy::PROVIDER.cap_ms);
                last_delay = delay;
                prop_assert_eq!(b.ready(now + probe), probe >= delay);
            }
        }
    }
}
