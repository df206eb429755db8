//! The log filter in force, changed at run time (`POST /admin/log-level?level=...`) without a
//! restart: tracing-subscriber's reloadable filter, set up by the server's logging.

use std::sync::{Mutex, OnceLock, PoisonError};

use tracing_subscriber::EnvFilter;

/// Replaces the filter of the process' subscriber.
type Apply = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

struct Level {
    apply: Apply,
    /// The filter in force, as it was given.
    current: Mutex<String>,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

/// Keep the means to change the filter that logging started with (`initial`, as given).
pub fn install(initial: &str, apply: Apply) {
    let _ = LEVEL.set(Level {
        apply,
        current: Mutex::new(initial.to_string()),
    });
}

/// The filter in force (`None` when the process has no reloadable log, e.g. a CLI command).
pub fn current() -> Option<String> {
    let level = LEVEL.get()?;
    Some(
        level
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
    )
}

/// Put `filter` (tracing's env-filter syntax: `warn`, `info,cedargate::authn=debug`, ...) in
/// force. `Err` explains a filter that does not parse, or a process without a reloadable log;
/// the filter in force then stays.
pub fn set(filter: &str) -> Result<(), String> {
    let level = LEVEL.get().ok_or("this process has no reloadable log")?;
    let filter = filter.trim();
    if filter.is_empty() {
        return Err("the level is empty".into());
    }
    let parsed = EnvFilter::builder()
        .parse(filter)
        .map_err(|e| format!("not a log filter: {e}"))?;
    let mut current = level.current.lock().unwrap_or_else(PoisonError::into_inner);
    // Logged under the filter that was in force: a change that quiets the log is still seen.
    tracing::warn!(from = %current, to = %filter, "log level changing");
    (level.apply)(parsed)?;
    *current = filter.to_string();
    Ok(())
}
