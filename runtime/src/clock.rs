//! The platform's clock: every "now" and "today" of the runtime and the server comes from
//! here. The host's UTC time, moved by a shift that only tests set ([`shift_for_tests`]): a
//! test sees a scenario's term end or a training run out by moving the clock, not by editing
//! the metadata. The shift is process-wide, so a test that moves it runs in a process of its
//! own; nothing outside Rust code (no route, no flag, no variable) can reach it.

use std::sync::atomic::{AtomicI64, Ordering};

use time::{Date, Duration, OffsetDateTime};

/// Seconds added to the host's time (0 but in tests that moved it).
static SHIFT_SECONDS: AtomicI64 = AtomicI64::new(0);

/// The current time, UTC.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    match SHIFT_SECONDS.load(Ordering::Relaxed) {
        0 => now,
        s => now.saturating_add(Duration::seconds(s)),
    }
}

/// Today's date, UTC.
pub fn today() -> Date {
    now().date()
}

/// The current time as RFC 3339, UTC.
pub fn now_rfc3339() -> String {
    now()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("the current time formats")
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    now().unix_timestamp()
}

/// Moves the clock of the whole process by `by` (added to any earlier shift). For tests
/// only, in a process of their own.
#[doc(hidden)]
pub fn shift_for_tests(by: Duration) {
    SHIFT_SECONDS.fetch_add(by.whole_seconds(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_is_the_hosts_utc_time_unless_a_test_moved_it() {
        let host = OffsetDateTime::now_utc();
        let ours = now();
        assert!((ours - host).abs() < Duration::seconds(5));
        assert_eq!(ours.offset(), time::UtcOffset::UTC);
        assert!(now_rfc3339().ends_with('Z'));
    }
}
