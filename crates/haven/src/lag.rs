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
            loop {
                let t = Instant::now();
                std::thread::sleep(PERIOD);
                lag.record(t.elapsed().saturating_sub(PERIOD).as_secs_f64());
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot start the thread lag probe"));
    tokio::spawn(async {
        let lag = metrics::histogram!("haven_runtime_lag_seconds");
        loop {
            let t = Instant::now();
            tokio::time::sleep(PERIOD).await;
            lag.record(t.elapsed().saturating_sub(PERIOD).as_secs_f64());
        }
    })
}
