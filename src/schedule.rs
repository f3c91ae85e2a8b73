//! When snapshots are due: every `snapshot_interval`, and optionally at a
//! wall-clock time of day (`snapshot_at`). Pure functions of the clock, so
//! tests inject the time.

use std::time::Duration;

const DAY_MS: i64 = 86_400_000;

/// A time of day with the offset from UTC it is given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    /// Minutes after midnight in the given offset (0..1440).
    pub minute: u32,
    /// Offset from UTC in minutes (`+02:00` is 120).
    pub offset_minutes: i32,
}

impl TimeOfDay {
    /// Parses `HH:MM`, `HH:MMZ` (UTC) or `HH:MM+hh:mm` / `HH:MM-hh:mm`.
    pub fn parse(s: &str) -> Option<TimeOfDay> {
        let s = s.trim();
        let (clock, offset) = if let Some(c) = s.strip_suffix(['Z', 'z']) {
            (c, 0)
        } else if let Some(i) = s.get(5..).and_then(|t| t.find(['+', '-'])).map(|i| i + 5) {
            let sign = if s[i..].starts_with('-') { -1 } else { 1 };
            (&s[..i], sign * hhmm(&s[i + 1..])? as i32)
        } else {
            (s, 0)
        };
        let minute = hhmm(clock)?;
        (offset.abs() < 24 * 60).then_some(TimeOfDay {
            minute,
            offset_minutes: offset,
        })
    }

    /// The latest occurrence at or before `now_ms` (ms since the Unix epoch).
    pub fn last_occurrence(&self, now_ms: i64) -> i64 {
        let shift = (i64::from(self.minute) - i64::from(self.offset_minutes)) * 60_000;
        let today = now_ms.div_euclid(DAY_MS) * DAY_MS + shift.rem_euclid(DAY_MS);
        if today <= now_ms {
            today
        } else {
            today - DAY_MS
        }
    }
}

fn hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// When snapshots are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// A snapshot is due when the newest is this old.
    pub interval: Duration,
    /// Also due once the newest snapshot is older than the last occurrence of
    /// this time of day.
    pub at: Option<TimeOfDay>,
}

impl SnapshotSchedule {
    /// Whether a snapshot is due at `now_ms` when the newest was taken at
    /// `last_ms`.
    pub fn due(&self, last_ms: i64, now_ms: i64) -> bool {
        let by_interval = last_ms.saturating_add(self.interval.as_millis() as i64) <= now_ms;
        let by_clock = self
            .at
            .is_some_and(|at| last_ms < at.last_occurrence(now_ms));
        by_interval || by_clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-22T00:00:00Z.
    const MIDNIGHT: i64 = 1_795_305_600_000;
    const H: i64 = 3_600_000;

    #[test]
    fn parses_times_of_day() {
        let t = |minute, offset_minutes| {
            Some(TimeOfDay {
                minute,
                offset_minutes,
            })
        };
        assert_eq!(TimeOfDay::parse("03:00"), t(180, 0));
        assert_eq!(TimeOfDay::parse("03:30Z"), t(210, 0));
        assert_eq!(TimeOfDay::parse("23:59+02:00"), t(1439, 120));
        assert_eq!(TimeOfDay::parse("00:15-05:30"), t(15, -330));
        for bad in ["3:00", "24:00", "03:60", "03-00", "", "03:00+2", "noon"] {
            assert_eq!(TimeOfDay::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn last_occurrence_respects_the_offset() {
        let three_utc = TimeOfDay::parse("03:00").unwrap();
        assert_eq!(
            three_utc.last_occurrence(MIDNIGHT + 4 * H),
            MIDNIGHT + 3 * H
        );
        assert_eq!(
            three_utc.last_occurrence(MIDNIGHT + 3 * H),
            MIDNIGHT + 3 * H
        );
        assert_eq!(
            three_utc.last_occurrence(MIDNIGHT + 2 * H),
            MIDNIGHT - 21 * H
        );
        // 03:00 at +02:00 is 01:00 UTC.
        let paris = TimeOfDay::parse("03:00+02:00").unwrap();
        assert_eq!(paris.last_occurrence(MIDNIGHT + 2 * H), MIDNIGHT + H);
        // 01:00 at -05:00 is 06:00 UTC.
        let ny = TimeOfDay::parse("01:00-05:00").unwrap();
        assert_eq!(ny.last_occurrence(MIDNIGHT + 5 * H), MIDNIGHT - 18 * H);
    }

    #[test]
    fn a_snapshot_is_due_by_interval_or_by_the_clock() {
        let daily = SnapshotSchedule {
            interval: Duration::from_secs(24 * 3600),
            at: None,
        };
        assert!(!daily.due(MIDNIGHT, MIDNIGHT + 23 * H));
        assert!(daily.due(MIDNIGHT, MIDNIGHT + 24 * H));
        let at3 = SnapshotSchedule {
            at: TimeOfDay::parse("03:00"),
            ..daily
        };
        // Taken at 01:00: due again at 03:00 the same night, then not until 03:00 next day.
        assert!(!at3.due(MIDNIGHT + H, MIDNIGHT + 2 * H));
        assert!(at3.due(MIDNIGHT + H, MIDNIGHT + 3 * H));
        assert!(!at3.due(MIDNIGHT + 3 * H, MIDNIGHT + 20 * H));
        assert!(at3.due(MIDNIGHT + 3 * H, MIDNIGHT + 27 * H));
        // The interval still applies when it is shorter.
        let hourly_at3 = SnapshotSchedule {
            interval: Duration::from_secs(3600),
            ..at3
        };
        assert!(hourly_at3.due(MIDNIGHT + 10 * H, MIDNIGHT + 11 * H));
        // A clock that went backwards makes nothing due early.
        assert!(!daily.due(MIDNIGHT, MIDNIGHT - H));
    }
}
