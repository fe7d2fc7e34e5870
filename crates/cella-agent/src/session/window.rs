//! Send credit for one output stream (stdout or stderr) of a session.
//!
//! The host grants bytes (`Credit` frames, [`Window::grant`]); the output pump waits until some
//! credit exists ([`Window::available`]), reads at most that much from the pipe and spends it
//! ([`Window::consume`]). The pump is the only consumer, so what it saw available is still
//! there when it consumes. While the credit is zero the pump does not read, the pipe fills and
//! the process blocks in `write(2)`: that is the back-pressure that bounds every buffer between
//! the guest process and the host's client.
//!
//! Grants saturate instead of overflowing: a host that grants absurd amounts gets an unbounded
//! window, never a panic.

use std::sync::Mutex;

use tokio::sync::Notify;

/// Credit of one output stream.
#[derive(Debug)]
pub struct Window {
    credit: Mutex<u64>,
    notify: Notify,
}

impl Window {
    /// A window holding `initial` bytes of credit.
    pub fn new(initial: u32) -> Self {
        Self { credit: Mutex::new(u64::from(initial)), notify: Notify::new() }
    }

    /// Adds credit (from a host `Credit` frame) and wakes the pump.
    pub fn grant(&self, bytes: u32) {
        let mut credit = self.lock();
        *credit = credit.saturating_add(u64::from(bytes));
        drop(credit);
        self.notify.notify_one();
    }

    /// Current credit, without waiting.
    pub fn current(&self) -> u64 {
        *self.lock()
    }

    /// Waits until the credit is positive and returns it.
    pub async fn available(&self) -> u64 {
        loop {
            let notified = self.notify.notified();
            let credit = self.current();
            if credit > 0 {
                return credit;
            }
            notified.await;
        }
    }

    /// Spends `bytes` of credit (at most what [`Window::available`] returned).
    pub fn consume(&self, bytes: u64) {
        let mut credit = self.lock();
        *credit = credit.saturating_sub(bytes);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.credit.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn available_waits_for_a_grant_when_empty() {
        let window = Arc::new(Window::new(4));
        assert_eq!(window.available().await, 4);
        window.consume(4);

        let waiter = tokio::spawn({
            let window = window.clone();
            async move { window.available().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "must wait while the credit is zero");
        window.grant(10);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(),
            10
        );
    }

    #[test]
    fn grants_saturate_and_consumption_never_underflows() {
        let window = Window::new(u32::MAX);
        for _ in 0..10 {
            window.grant(u32::MAX);
        }
        assert_eq!(window.current(), 11 * u64::from(u32::MAX));
        window.consume(u64::MAX);
        assert_eq!(window.current(), 0);
    }
}
