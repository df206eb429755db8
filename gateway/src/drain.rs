//! Graceful shutdown that ends when the work does, and the embedded backend's hand-over in a
//! graceful upgrade.
//!
//! On SIGTERM (and after a graceful upgrade has handed the listeners over) pingora stops
//! accepting, then sleeps its whole grace period (`[server] grace_period_seconds`) before it
//! stops its runtimes, however little is left to finish: an idle gateway took ~6 s to exit.
//! Here every request in progress is counted — from the first bytes of its head (counted by the
//! connection, [`crate::front`]) until its access line is written (counted by its context) —
//! and once a graceful shutdown has begun, the process exits as soon as the count has stayed at
//! zero for a moment, after a short minimum ([`KEEPALIVE_LINGER`]: idle keep-alive connections
//! stay open that long, and it covers connections accepted just before the signal whose first
//! bytes or TLS handshake are still on their way). The grace period and
//! `graceful_shutdown_timeout_seconds` stay the bound for requests that take longer.
//!
//! The embedded backend is stopped last: once no request of this process is in progress it
//! stops accepting, finishes the requests it has (a graceful upgrade's new process sends its
//! requests here until then), and the process exits. Its store, held by one process at a time,
//! is released with the backend's last connection, and the new process's backend opens it
//! ([`backend::take_over`]); requests the new process could not hand to either backend in
//! between wait for its own ([`Backend::wait_ready`]) instead of failing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pingora::server::ExecutionPhase;
use tokio::sync::{broadcast, watch};

/// Requests in progress on every listener.
static IN_PROGRESS: AtomicUsize = AtomicUsize::new(0);

/// Listeners whose connections pingora has not closed yet: once a graceful shutdown has
/// closed them all, no new request can reach this process.
static LISTENERS_OPEN: AtomicUsize = AtomicUsize::new(0);

/// A listener was set up (its connections count until [`listener_closed`]).
pub fn listener_opened() {
    LISTENERS_OPEN.fetch_add(1, Ordering::AcqRel);
}

/// A listener's connections waiting for a request have been closed (graceful shutdown).
pub fn listener_closed() {
    LISTENERS_OPEN.fetch_sub(1, Ordering::AcqRel);
}

/// How long keep-alive connections idle at a graceful shutdown stay open (pingora closes them
/// at once): a client sending its next request on one meanwhile gets its answer, with
/// `Connection: close`, instead of a connection closed under it.
pub const KEEPALIVE_LINGER: Duration = Duration::from_secs(1);

/// How long a graceful shutdown waits at least: the keep-alive linger, which also covers
/// connections accepted just before the signal (and the listeners must have closed their idle
/// connections, [`listener_closed`]).
const MINIMUM: Duration = KEEPALIVE_LINGER;

/// How often the count is checked while draining; it must read zero twice in a row.
const POLL: Duration = Duration::from_millis(20);

/// How long a request waits for this process's embedded backend during a hand-over.
const HAND_OVER_WAIT: Duration = Duration::from_secs(30);

/// This process's embedded backend (none with an external one), and whether it serves yet.
#[derive(Debug)]
pub struct Backend {
    handle: std::sync::OnceLock<backend::BackendHandle>,
    ready: watch::Sender<bool>,
}

impl Backend {
    /// A backend that serves from the start: an external one, or none yet when `ready` is
    /// false (a hand-over's backend, [`Backend::serving`] once it is up).
    pub fn new(ready: bool) -> Backend {
        Backend {
            handle: std::sync::OnceLock::new(),
            ready: watch::Sender::new(ready),
        }
    }

    /// The embedded backend serves.
    pub fn serving(&self, handle: backend::BackendHandle) {
        let _ = self.handle.set(handle);
        self.ready.send_replace(true);
    }

    /// Whether the backend serves (a failed connection to it is then a real failure).
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Wait (bounded) for the backend to serve; whether it does.
    pub async fn wait_ready(&self) -> bool {
        let mut rx = self.ready.subscribe();
        matches!(
            tokio::time::timeout(HAND_OVER_WAIT, rx.wait_for(|ready| *ready)).await,
            Ok(Ok(_))
        )
    }

    /// Stop the embedded backend and wait for its connections to close; `false` when some
    /// are still open after `bound`.
    fn stop_and_drain(&self, bound: Duration) -> bool {
        let Some(handle) = self.handle.get() else {
            return true;
        };
        handle.stop();
        let began = Instant::now();
        while handle.connections() > 0 {
            if began.elapsed() >= bound {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }
}

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
/// exit as soon as no request is in progress and the embedded backend has drained (see the
/// module doc). `grace`: the grace period, which bounds the backend's drain.
pub fn exit_when_drained(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    backend: std::sync::Arc<Backend>,
    grace: Duration,
) {
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
                // Until every listener has closed its idle connections, a request may still
                // arrive on one (and need the backend, which is stopped next).
                if in_progress() == 0 && LISTENERS_OPEN.load(Ordering::Acquire) == 0 {
                    idle_checks += 1;
                } else {
                    idle_checks = 0;
                }
                if idle_checks >= 2 {
                    let bound = grace.saturating_sub(began.elapsed());
                    if !backend.stop_and_drain(bound) {
                        // The grace period is over: pingora stops the runtimes now.
                        return;
                    }
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
