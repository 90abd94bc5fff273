//! Time as the AWS JSON protocol carries it (epoch seconds, as a JSON number), and the clock
//! the daemon reads and waits on, injected so tests move time instead of waiting for it.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A future that completes after a clock's sleep.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of the current time and of sleeps on it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the epoch, with millisecond precision as ECS reports them.
    fn now(&self) -> f64;

    /// Completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Sleep;
}

/// The system's wall clock, with tokio's timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (d.as_millis() as f64) / 1000.0
    }

    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

#[cfg(any(test, feature = "test-support"))]
pub use manual::ManualClock;

#[cfg(any(test, feature = "test-support"))]
mod manual {
    use std::sync::Mutex;

    use tokio::sync::watch;

    use super::*;

    /// A clock that moves only when a test says so; sleeps end when it passes their deadline.
    #[derive(Debug)]
    pub struct ManualClock {
        now: Mutex<f64>,
        moved: watch::Sender<f64>,
    }

    impl ManualClock {
        pub fn new(start: f64) -> Self {
            ManualClock { now: Mutex::new(start), moved: watch::channel(start).0 }
        }

        /// Moves the clock forward by `d`, waking every sleep whose time has come.
        pub fn advance(&self, d: Duration) {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now += d.as_secs_f64();
            self.moved.send_replace(*now);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> f64 {
            (*self.now.lock().unwrap_or_else(|e| e.into_inner()) * 1000.0).round() / 1000.0
        }

        fn sleep(&self, d: Duration) -> Sleep {
            let deadline = *self.now.lock().unwrap_or_else(|e| e.into_inner()) + d.as_secs_f64();
            let mut rx = self.moved.subscribe();
            Box::pin(async move {
                while *rx.borrow_and_update() < deadline {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn sleeps_end_when_the_clock_passes_them() {
            let clock = ManualClock::new(100.0);
            let mut short = clock.sleep(Duration::from_secs(5));
            let mut long = clock.sleep(Duration::from_secs(60));
            let poll = |s: &mut Sleep| futures_poll(s);
            assert!(!poll(&mut short));
            clock.advance(Duration::from_secs(5));
            assert!(poll(&mut short));
            assert!(!poll(&mut long));
            clock.advance(Duration::from_secs(55));
            assert!(poll(&mut long));
            assert_eq!(clock.now(), 160.0);
        }

        fn futures_poll(s: &mut Sleep) -> bool {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            s.as_mut().poll(&mut cx).is_ready()
        }
    }
}
