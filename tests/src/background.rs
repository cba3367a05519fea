//! A named thread that runs until its guard is dropped: a body polling a [`StopFlag`] in, a guard
//! that raises the flag and joins on drop out. The harness's watchers and the bench's witnesses
//! are all such threads.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Raised by [`BackgroundThread`] when it is stopped; the body checks it between blocking calls
/// (each bounded by a read timeout, so a stop is noticed within one timeout).
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// Whether the thread was asked to stop.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The running thread; [`BackgroundThread::stop`] or drop raises its flag and joins it.
#[derive(Debug)]
pub struct BackgroundThread {
    stop: StopFlag,
    handle: Option<JoinHandle<()>>,
}

impl BackgroundThread {
    /// Spawns `body` on a thread named `name`, handing it the flag to poll.
    pub fn spawn(name: impl Into<String>, body: impl FnOnce(&StopFlag) + Send + 'static) -> io::Result<Self> {
        let stop = StopFlag::default();
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || body(&flag))?;
        Ok(BackgroundThread { stop, handle: Some(handle) })
    }

    /// Raises the flag and waits for the body to return; a second call does nothing. A panic in
    /// the body is not propagated: the owner reports what the thread recorded instead.
    pub fn stop(&mut self) {
        self.stop.raise();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for BackgroundThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn drop_stops_and_joins_the_body() {
        let laps = Arc::new(AtomicU32::new(0));
        let l = Arc::clone(&laps);
        let t = BackgroundThread::spawn("bg-test", move |stop| {
            while !stop.is_raised() {
                l.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
        .unwrap();
        crate::poll::wait_until(crate::poll::DEFAULT_TIMEOUT, "the body to run", || laps.load(Ordering::Relaxed) > 0);
        drop(t);
        // The body's clone goes only when its closure has returned and the thread is joined.
        assert_eq!(Arc::strong_count(&laps), 1, "drop returned before the body ended");
    }
}
