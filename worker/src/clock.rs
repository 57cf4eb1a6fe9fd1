//! Wall-clock time for cron schedules. Production reads the system clock; tests run on tokio's
//! paused clock, so wall time there advances with tokio time instead.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Where "now" comes from.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system's UTC clock.
    System,
    /// `wall0` plus however far tokio's clock has moved since `inst0`.
    Tokio {
        wall0: DateTime<Utc>,
        inst0: Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's (possibly paused) time, starting at `wall0`.
    pub fn following_tokio(wall0: DateTime<Utc>) -> Self {
        Clock::Tokio {
            wall0,
            inst0: Instant::now(),
        }
    }

    /// The current UTC time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall0, inst0 } => {
                // Elapsed tokio time is far below chrono's range; fall back to wall0 if not.
                *wall0 + chrono::Duration::from_std(inst0.elapsed()).unwrap_or_default()
            }
        }
    }

    /// The tokio instant at which the wall clock reads `at` (now, if `at` has passed).
    pub fn instant_at(&self, at: DateTime<Utc>) -> Instant {
        let wait = (at - self.now()).to_std().unwrap_or_default();
        Instant::now() + wait
    }
}
