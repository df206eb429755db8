//! Graceful shutdown that ends when the work does.
//!
//! On SIGTERM (and after a graceful upgrade has handed the listeners over) pingora stops
//! accepting, then sleeps its whole grace period (`[server] grace_period_seconds`) before it
//! stops its runtimes, however little is left to finish: an idle gateway took ~6 s to exit.
//! Here every request in progress is counted — from the first bytes of its head (counted by the
//! connection, [`crate::front`]) until its access line is written (counted by its context) —
//! and once a graceful shutdown has begun, the process exits as soon as the count has stayed at
//! zero for a moment, after a short minimum that covers connections accepted just before the
//! signal whose first bytes (or TLS handshake) are still on their way. The grace period and
//! `graceful_shutdown_timeout_seconds` stay the bound for requests that take longer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;
use tokio::sync::broadcast;

/// Requests in progress on every listener.
static IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// How long a graceful shutdown waits at least, for connections accepted just before it.
const MINIMUM: Duration = Duration::from_millis(500);

/// How often the count is checked while draining; it must read zero twice in a row.
const POLL: Duration = Duration::from_millis(20);

/// One request in progress, for as long as it lives.
#[derive(Debug)]
pub struct Busy(());

impl Busy {
    pub fn new() -> Busy {
        IN_PROGRESS.fetch_add(1, Ordering::Relaxed);
        Busy(())
    }
}

impl Default for Busy {
    fn default() -> Busy {
        Busy::new()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        IN_PROGRESS.fetch_sub(1, Ordering::Release);
    }
}

/// Requests in progress now.
pub fn in_progress() -> usize {
    IN_PROGRESS.load(Ordering::Acquire)
}

/// Exit the process, once: the drain watcher and the end of `serve` may both get here.
pub fn exit(code: i32) -> ! {
    static ONCE: Mutex<()> = Mutex::new(());
    // Held until the process is gone: a second caller waits here for the exit under way.
    let _held = ONCE.lock();
    crate::lines::flush_all();
    std::process::exit(code)
}

/// Watch the server's phases from a thread of its own; when its graceful shutdown has begun,
/// exit as soon as no request is in progress (see the module doc).
pub fn exit_when_drained(mut phases: broadcast::Receiver<ExecutionPhase>) {
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(ExecutionPhase::Terminated) | Err(broadcast::error::RecvError::Closed) => {
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                }
            }
            let began = Instant::now();
            std::thread::sleep(MINIMUM);
            let mut idle_checks = 0;
            loop {
                if in_progress() == 0 {
                    idle_checks += 1;
                } else {
                    idle_checks = 0;
                }
                if idle_checks >= 2 {
                    tracing::info!(
                        drained_ms = began.elapsed().as_millis() as u64,
                        "graceful shutdown: no request in progress, exiting"
                    );
                    exit(0);
                }
                std::thread::sleep(POLL);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no drain watcher: a graceful shutdown takes its whole grace period");
    }
}
