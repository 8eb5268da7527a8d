//! Scheduled triggers: a cron expression with seconds, read in a time zone, and which
//! records each tick selects. Pure: the engine's scheduler asks when ticks fall.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Which records a tick sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// Records written since the previous tick (on the first tick: every record), except
    /// those whose latest write is this webhook's own write-back.
    #[default]
    Changed,
    /// Every record, on every tick.
    All,
}

impl Select {
    pub fn as_str(self) -> &'static str {
        match self {
            Select::Changed => "changed",
            Select::All => "all",
        }
    }
}

/// A validated schedule.
#[derive(Clone)]
pub struct Schedule {
    cron: cron::Schedule,
    tz: Tz,
    pub select: Select,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({} in {}, {})", self.cron, self.tz, self.select.as_str())
    }
}

/// Why a schedule was refused, and which definition field is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    pub field: &'static str,
    pub message: String,
}

impl Schedule {
    /// Parses `expr` (six or seven fields: second minute hour day-of-month month
    /// day-of-week [year]) in the IANA time zone `time_zone` (UTC when absent). A schedule
    /// whose ticks are all past parses (a stored one may have run its last tick); the API
    /// refuses to save one with [`Schedule::next_after`].
    pub fn parse(expr: &str, time_zone: Option<&str>, select: Select) -> Result<Schedule, ScheduleError> {
        let expr = expr.trim();
        let fields = expr.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(ScheduleError {
                field: "trigger.schedule",
                message: format!(
                    "`{expr}` has {fields} fields; a schedule has six: second minute hour day-of-month month \
                     day-of-week (and an optional year), e.g. `0 */15 * * * *`"
                ),
            });
        }
        let cron = cron::Schedule::from_str(expr).map_err(|e| ScheduleError {
            field: "trigger.schedule",
            message: format!("`{expr}` is not a valid cron expression: {e}"),
        })?;
        let tz = match time_zone.map(str::trim) {
            None | Some("") => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| ScheduleError {
                field: "trigger.time_zone",
                message: format!("`{name}` is not an IANA time zone name such as `Europe/Berlin` or `UTC`"),
            })?,
        };
        Ok(Schedule { cron, tz, select })
    }

    fn at(&self, ms: i64) -> DateTime<Tz> {
        self.tz.timestamp_millis_opt(ms).single().unwrap_or_else(|| Utc::now().with_timezone(&self.tz))
    }

    /// The first tick strictly after `after_ms` (Unix ms), if the schedule has one.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        self.cron.after(&self.at(after_ms)).next().map(|t| t.timestamp_millis())
    }

    /// The latest tick in `(after_ms, now_ms]`: ticks missed while no node ran collapse into
    /// this one run. None when no tick is due. Walks back from now, so a long outage costs
    /// one step, not one per missed tick.
    pub fn due(&self, after_ms: i64, now_ms: i64) -> Option<i64> {
        let latest = self.cron.after(&self.at(now_ms.saturating_add(1))).next_back()?.timestamp_millis();
        (latest > after_ms && latest <= now_ms).then_some(latest)
    }

    /// `ms` as RFC 3339 in the schedule's time zone, to the second (`2026-03-29T09:00:00+02:00`).
    pub fn local_time(&self, ms: i64) -> String {
        self.at(ms).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    pub fn time_zone(&self) -> &str {
        self.tz.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn iso(ms: i64) -> String {
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap().to_rfc3339()
    }

    #[test]
    fn ticks_fall_on_the_expression_in_its_time_zone() {
        let s = Schedule::parse("0 */15 * * * *", None, Select::Changed).unwrap();
        assert_eq!(iso(s.next_after(ms("2026-03-01T10:07:30Z")).unwrap()), "2026-03-01T10:15:00+00:00");
        assert_eq!(iso(s.next_after(ms("2026-03-01T10:15:00Z")).unwrap()), "2026-03-01T10:30:00+00:00");

        // 09:00 every day in Berlin: 08:00 UTC in winter, 07:00 UTC after the clocks go forward.
        let b = Schedule::parse("0 0 9 * * *", Some("Europe/Berlin"), Select::All).unwrap();
        assert_eq!(iso(b.next_after(ms("2026-03-28T12:00:00Z")).unwrap()), "2026-03-29T07:00:00+00:00");
        assert_eq!(iso(b.next_after(ms("2026-03-27T12:00:00Z")).unwrap()), "2026-03-28T08:00:00+00:00");
        assert_eq!(b.time_zone(), "Europe/Berlin");
        assert_eq!(b.local_time(ms("2026-03-29T07:00:00Z")), "2026-03-29T09:00:00+02:00");

        // Seconds count, and so does the optional year.
        let every = Schedule::parse("*/5 * * * * *", Some("UTC"), Select::Changed).unwrap();
        assert_eq!(every.next_after(ms("2026-01-01T00:00:01Z")), Some(ms("2026-01-01T00:00:05Z")));
        assert!(Schedule::parse("0 0 0 1 1 * 2099", None, Select::Changed).is_ok());
    }

    #[test]
    fn missed_ticks_collapse_into_the_latest_one() {
        let s = Schedule::parse("0 * * * * *", None, Select::Changed).unwrap();
        let last = ms("2026-05-01T10:00:00Z");
        assert_eq!(s.due(last, ms("2026-05-01T10:00:59Z")), None, "nothing due before the next minute");
        assert_eq!(s.due(last, ms("2026-05-01T10:01:00Z")), Some(ms("2026-05-01T10:01:00Z")));
        // Down for three hours: one run, for the latest tick.
        assert_eq!(s.due(last, ms("2026-05-01T13:00:30Z")), Some(ms("2026-05-01T13:00:00Z")));
        // Exactly on a tick, and a tick already run.
        assert_eq!(s.due(last, ms("2026-05-01T13:00:00Z")), Some(ms("2026-05-01T13:00:00Z")));
        assert_eq!(s.due(ms("2026-05-01T13:00:00Z"), ms("2026-05-01T13:00:00.999Z")), None);
        // A year down, every second: still one step.
        let every = Schedule::parse("* * * * * *", None, Select::All).unwrap();
        assert_eq!(every.due(last, ms("2027-05-01T10:00:00.5Z")), Some(ms("2027-05-01T10:00:00Z")));
        // In a time zone, across the autumn clock change (02:30 happens twice in Berlin).
        let b = Schedule::parse("0 30 2 * * *", Some("Europe/Berlin"), Select::All).unwrap();
        let due = b.due(ms("2026-10-24T12:00:00Z"), ms("2026-10-25T12:00:00Z")).unwrap();
        assert!(iso(due).starts_with("2026-10-25T0"), "{}", iso(due));
    }

    #[test]
    fn bad_schedules_name_the_field_at_fault() {
        let err = |e: &str, tz: Option<&str>| Schedule::parse(e, tz, Select::Changed).unwrap_err();
        let e = err("*/15 * * * *", None);
        assert_eq!(e.field, "trigger.schedule");
        assert!(e.message.contains("has 5 fields") && e.message.contains("second minute hour"), "{}", e.message);
        let e = err("0 61 * * * *", None);
        assert_eq!(e.field, "trigger.schedule");
        assert!(e.message.contains("not a valid cron expression"), "{}", e.message);
        // All past: valid, and never due again.
        let past = Schedule::parse("0 0 0 1 1 * 2001", None, Select::Changed).unwrap();
        assert_eq!(past.next_after(ms("2026-01-01T00:00:00Z")), None);
        assert_eq!(past.due(ms("2001-01-01T00:00:00Z"), ms("2026-01-01T00:00:00Z")), None);
        assert_eq!(past.due(0, ms("2026-01-01T00:00:00Z")), Some(ms("2001-01-01T00:00:00Z")));
        let e = err("0 * * * * *", Some("Mars/Olympus"));
        assert_eq!(e.field, "trigger.time_zone");
        assert!(e.message.contains("Mars/Olympus"), "{}", e.message);
    }
}
