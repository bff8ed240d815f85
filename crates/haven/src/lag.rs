//! Scheduling lag probes, for telling a busy runtime from a paused process.
//!
//! Every 10 ms two probes sleep and measure how late they woke:
//! - `haven_runtime_lag_seconds`: a task on the request runtime. It is late when every worker is
//!   busy or blocked, and a request that became ready then waits as long.
//! - `haven_thread_lag_seconds`: a plain thread outside the runtime. It is late only when the
//!   whole process is held up (the CPU taken by other processes, memory reclaim, a paused
//!   virtual machine), so a stall seen by both is not Haven's code.
//!
//! Tokio's timer wheel has millisecond steps, so the runtime probe reads up to about 1 ms late
//! on an idle server too.

use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(10);
/// A wake-up this late is also logged (`warn`), at most once per [`WARN_EVERY`] per probe.
const WARN_AT: Duration = Duration::from_millis(50);
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Records one wake-up `late`, and logs it when it is [`WARN_AT`] or later.
fn observe(
    lag: &metrics::Histogram,
    late: Duration,
    last_warned: &mut Option<Instant>,
    what: &str,
) {
    lag.record(late.as_secs_f64());
    if late >= WARN_AT && last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
        *last_warned = Some(Instant::now());
        tracing::warn!(
            late_ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX),
            probe = what,
            "held up: a probe woke late (haven_{what}_lag_seconds)"
        );
    }
}

/// Histogram buckets for the probes, in seconds.
pub const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Starts both probes; they run until the process exits. Must be called inside the runtime.
pub fn start() -> tokio::task::JoinHandle<()> {
    let _ = std::thread::Builder::new()
        .name("haven-lag".to_owned())
        .spawn(|| {
            let lag = metrics::histogram!("haven_thread_lag_seconds");
            let mut warned = None;
            loop {
                let t = Instant::now();
                std::thread::sleep(PERIOD);
                observe(
                    &lag,
                    t.elapsed().saturating_sub(PERIOD),
                    &mut warned,
                    "thread",
                );
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot start the thread lag probe"));
    tokio::spawn(async {
        let lag = metrics::histogram!("haven_runtime_lag_seconds");
        let mut warned = None;
        loop {
            let t = Instant::now();
            tokio::time::sleep(PERIOD).await;
            observe(
                &lag,
                t.elapsed().saturating_sub(PERIOD),
                &mut warned,
                "runtime",
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_wake_up_warns_once_per_period() {
        let lag = metrics::Histogram::noop();
        let mut warned = None;
        observe(&lag, Duration::from_millis(10), &mut warned, "runtime");
        assert!(warned.is_none(), "10 ms late is not worth a warning");
        observe(&lag, Duration::from_millis(60), &mut warned, "runtime");
        assert!(warned.is_some(), "60 ms late warns");
        let first = warned;
        observe(&lag, Duration::from_millis(80), &mut warned, "runtime");
        assert_eq!(warned, first, "a second one within 10 s is only counted");
    }
}
