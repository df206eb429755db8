//! Reloading from files without a restart, on SIGHUP and, when watching, when the files change
//! (polled: a cheap stamp — names, sizes, modification times — compared every interval). The
//! policies, the WAF's IP lists and each TLS certificate reload this way; every reload parses
//! the new files completely first and keeps what is in force when they are wrong.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Something kept in step with files.
pub trait Reload: Send + Sync + 'static {
    /// What changes when the files do.
    type Stamp: PartialEq + Send;
    /// The files' stamp now (cheap: metadata only).
    fn stamp(&self) -> Self::Stamp;
    /// Re-read the files (blocking work); the implementation logs and counts the outcome.
    fn reload_files(&self, trigger: &'static str);
}

/// A file's modification time, the stamp of most [`Reload`]ers (`None`: it cannot be read).
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The background service that reloads `target` on SIGHUP and, every `watch` interval,
/// when its stamp changed.
pub struct Reloader<R> {
    what: &'static str,
    target: Arc<R>,
    watch: Option<Duration>,
}

impl<R: Reload> Reloader<R> {
    pub fn new(what: &'static str, target: Arc<R>, watch: Option<Duration>) -> Reloader<R> {
        Reloader {
            what,
            target,
            watch,
        }
    }
}

#[async_trait]
impl<R: Reload> BackgroundService for Reloader<R> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        // Installing the handler also stops SIGHUP's default action (terminating the process).
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(what = self.what, error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let mut stamp = self.target.stamp();
        let mut tick = tokio::time::interval(self.watch.unwrap_or(Duration::from_secs(3600)));
        tick.tick().await;
        loop {
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
                _ = tick.tick() => {
                    if self.watch.is_none() {
                        continue;
                    }
                    let now = self.target.stamp();
                    if now == stamp {
                        continue;
                    }
                    "file change"
                }
            };
            // Taken before reading, so that a change made during the reload is seen next time.
            stamp = self.target.stamp();
            let target = self.target.clone();
            let _ = tokio::task::spawn_blocking(move || target.reload_files(trigger)).await;
        }
    }
}
