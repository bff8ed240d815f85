//! Per-account send rate: a token bucket per account, in this node's memory. A client over its
//! rate gets `429` with `Retry-After`; nothing it sent is lost (it was never accepted).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` messages per second on average, up to `burst` at once. A rate of 0 disables it.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn check(&self, account_id: &str) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets of idle accounts so the map cannot grow without bound.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets
            .entry(account_id.to_owned())
            .or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.rate))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_then_refilled() {
        let l = RateLimiter::new(1000, 5);
        for _ in 0..5 {
            l.check("a").unwrap();
        }
        let wait = l.check("a").unwrap_err();
        assert!(wait <= Duration::from_millis(2));
        l.check("b").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        l.check("a").unwrap();
    }

    #[test]
    fn zero_disables() {
        let l = RateLimiter::new(0, 0);
        for _ in 0..1000 {
            l.check("a").unwrap();
        }
    }
}
