//! Timestamps in the one format every document and error uses: RFC 3339, UTC, milliseconds.
//!
//! The format has a fixed width, so two stamps compare correctly as strings (the weekly
//! leaderboard relies on that instead of parsing).

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{Duration, OffsetDateTime};

const FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `t` as `2026-11-23T22:00:00.000Z`.
pub fn format(t: OffsetDateTime) -> String {
    t.format(FORMAT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_owned())
}

/// The current time.
pub fn now() -> String {
    format(OffsetDateTime::now_utc())
}

/// The time `days` days ago.
pub fn days_ago(days: i64) -> String {
    format(OffsetDateTime::now_utc() - Duration::days(days))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamps_are_fixed_width_and_ordered() {
        let old = super::days_ago(7);
        let now = super::now();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T');
        assert!(old < now);
    }
}
