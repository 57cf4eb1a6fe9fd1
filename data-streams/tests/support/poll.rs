//! Waiting in tests: until something holds ([`eventually`]), or until it stops changing
//! ([`settled`]).

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// What one look of [`eventually`] found: `Some`/`Ok` ends the wait with the value; `None` or
/// `Err(what was seen instead)` looks again.
pub trait Attempt {
    type Value;

    /// The value, or what was seen instead (if the check says).
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl<T> Attempt for Option<T> {
    type Value = T;

    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Attempt for Result<T, String> {
    type Value = T;

    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Poll `check` every 100 ms until it returns `Some`/`Ok`, or panic after `within`, with the last
/// `Err` (what was seen instead) when the check returns a `Result`.
pub async fn eventually<F, Fut>(
    within: Duration,
    what: &str,
    mut check: F,
) -> <Fut::Output as Attempt>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Attempt,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await.into_result() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => match last {
                Some(last) => {
                    panic!("timed out after {within:?} waiting for {what}; last seen: {last}")
                }
                None => panic!("timed out after {within:?} waiting for {what}"),
            },
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll `sample` until it returns the same value twice `window` apart (something stopped
/// changing), or panic after `within`. Returns the settled value.
pub async fn settled<T, F, Fut>(within: Duration, window: Duration, what: &str, mut sample: F) -> T
where
    T: PartialEq + Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + within;
    let mut last = sample().await;
    loop {
        tokio::time::sleep(window).await;
        let now = sample().await;
        if now == last {
            return now;
        }
        if Instant::now() >= deadline {
            panic!("{what} did not settle within {within:?}; last seen {last:?} then {now:?}");
        }
        last = now;
    }
}
