//! A token bucket for log lines the guest can trigger.
//!
//! A hostile guest can send malformed frames or flood heartbeats as fast as the port allows;
//! logging each one would let it fill the host's disk. Every guest-triggered log site asks a
//! [`RateLimiter`] first and reports how many lines it suppressed when it logs again.

use std::time::{Duration, Instant};

/// Allows `burst` events at once and then one per `interval`.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    interval: Duration,
    tokens: u32,
    last_refill: Instant,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter allowing `burst` events, refilled one per `interval`.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self { burst, interval, tokens: burst, last_refill: Instant::now(), suppressed: 0 }
    }

    /// The default for guest-triggered warnings: 10 at once, then one a second.
    pub fn for_guest_logs() -> Self {
        Self::new(10, Duration::from_secs(1))
    }

    /// Returns `Some(suppressed_since_last)` when the event may be logged, `None` otherwise.
    pub fn check(&mut self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.last_refill);
        let refill = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u32;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(self.burst);
            self.last_refill = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_and_suppressed_count() {
        let mut limiter = RateLimiter::new(2, Duration::from_secs(1));
        let start = limiter.last_refill;
        assert_eq!(limiter.check_at(start), Some(0));
        assert_eq!(limiter.check_at(start), Some(0));
        assert_eq!(limiter.check_at(start), None);
        assert_eq!(limiter.check_at(start), None);
        assert_eq!(limiter.check_at(start + Duration::from_secs(1)), Some(2));
    }
}
