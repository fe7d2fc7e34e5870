//! Timestamps and unique tokens.
//!
//! Every timestamp column holds **unix time in milliseconds** as a SQLite `INTEGER` (`i64`), so
//! rows compare and sort numerically and survive any locale. Tokens identify one holder of a
//! claim or lease; they are unique across processes, threads and pid reuse on one host.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A token unique to this call: pid, wall-clock nanoseconds and a process-wide counter.
pub fn unique_token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_one_process_are_distinct() {
        assert_ne!(unique_token(), unique_token());
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
