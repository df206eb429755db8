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
#[cfg(test)]
pub fn days_ago(days: i64) -> String {
    format(OffsetDateTime::now_utc() - Duration::days(days))
}

/// When the current calendar `period` began, in UTC: `weekly` on Monday 00:00, `monthly` on
/// the 1st at 00:00; `None` for `all-time`.
pub fn period_start(period: &str) -> Option<String> {
    period_start_with_ms(period).map(|(stamp, _)| stamp)
}

/// [`period_start`] and the same instant in Unix milliseconds.
pub fn period_start_with_ms(period: &str) -> Option<(String, u64)> {
    let now = OffsetDateTime::now_utc();
    let midnight = now.replace_time(time::Time::MIDNIGHT);
    let start = match period {
        "weekly" => midnight - Duration::days(i64::from(now.weekday().number_days_from_monday())),
        "monthly" => midnight.replace_day(1).ok()?,
        _ => return None,
    };
    let ms = u64::try_from(start.unix_timestamp()).unwrap_or(0) * 1000;
    Some((format(start), ms))
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

    #[test]
    fn periods_start_at_midnight_on_monday_and_the_first() {
        let week = super::period_start("weekly").unwrap();
        let month = super::period_start("monthly").unwrap();
        let now = super::now();
        assert!(week.ends_with("T00:00:00.000Z") && week <= now, "{week}");
        assert!(
            month.ends_with("-01T00:00:00.000Z") && month <= now,
            "{month}"
        );
        assert!(super::days_ago(7) < week);
        assert_eq!(super::period_start("all-time"), None);
    }
}
