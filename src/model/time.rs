//! Time as the AWS JSON protocol carries it: epoch seconds, as a JSON number.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time, so tests can pin it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the epoch, with millisecond precision as ECS reports them.
    fn now(&self) -> f64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        (d.as_millis() as f64) / 1000.0
    }
}
