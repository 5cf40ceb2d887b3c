//! Rate limits as token buckets: `burst` requests at once, then `rate` per
//! second. Time is an argument (ms since the epoch), so the rule is a plain
//! function of what came before.

/// One caller's bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    /// Requests per second, refilled continuously.
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate_per_second: f64, burst: u32, now_ms: i64) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate_per_second.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Whether the bucket has refilled completely by `now_ms`: its caller
    /// has been idle long enough that forgetting it changes nothing.
    pub fn full_at(&self, now_ms: i64) -> bool {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Takes one request at `now_ms`; when the bucket is empty, the
    /// milliseconds until one is there again.
    pub fn take(&mut self, now_ms: i64) -> Result<(), u64> {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last_ms = now_ms.max(self.last_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait_s = (1.0 - self.tokens) / self.rate;
            Err((wait_s * 1000.0).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10.0, 3, 0);
        assert!((0..3).all(|_| b.take(0).is_ok()), "the burst at once");
        assert_eq!(b.take(0), Err(100), "then one per 100 ms");
        assert_eq!(b.take(50), Err(50));
        assert_eq!(b.take(100), Ok(()));
        assert!(b.take(100).is_err());
        assert!(
            (0..3).all(|_| b.take(10_000).is_ok()),
            "refilled, but not past the burst"
        );
        assert!(b.take(10_000).is_err());
        assert!(!b.full_at(10_000));
        assert!(b.full_at(10_300), "three tokens at 10 per second");
    }

    proptest! {
        #[test]
        fn never_more_than_the_burst_plus_the_rate(
            rate in 1u32..100,
            burst in 1u32..50,
            gaps in proptest::collection::vec(0i64..200, 1..300),
        ) {
            let mut b = TokenBucket::new(f64::from(rate), burst, 0);
            let (mut now, mut taken) = (0i64, 0u64);
            for gap in gaps {
                now += gap;
                if b.take(now).is_ok() {
                    taken += 1;
                }
            }
            let allowed = f64::from(burst) + f64::from(rate) * now as f64 / 1000.0;
            prop_assert!(taken as f64 <= allowed + 1e-9, "{taken} > {allowed}");
        }
    }
}
