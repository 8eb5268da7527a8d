//! Retry decisions: whether an attempt's result is worth another try ([`classify`]) and how
//! long to wait before it ([`RetryPolicy::delay`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

use crate::client::{OutboundResponse, SendError};

/// The longest `Retry-After` that is honoured; longer values are capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Is this result worth another attempt? Separate from how long to wait.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A 2xx response: delivered.
    Success,
    /// A transient failure; `after` is the server's `Retry-After`, if it gave one.
    Retry {
        /// The server-requested wait (capped at [`MAX_RETRY_AFTER`]).
        after: Option<Duration>,
    },
    /// A permanent failure: another attempt would fail the same way.
    Fail,
}

/// Classifies an attempt's result.
///
/// - 2xx → [`Verdict::Success`];
/// - 408, 429 and 5xx → [`Verdict::Retry`] with `after` taken from `Retry-After`
///   (delta-seconds or an HTTP-date, capped at one hour);
/// - any other status (1xx, 3xx — redirects are not followed — and other 4xx) → [`Verdict::Fail`];
/// - network errors ([`SendError::Timeout`], [`SendError::Connect`], [`SendError::Io`]) →
///   `Retry { after: None }`;
/// - [`SendError::InvalidRequest`] and [`SendError::TargetRefused`] → [`Verdict::Fail`].
pub fn classify(result: &Result<OutboundResponse, SendError>) -> Verdict {
    match result {
        Ok(response) => match response.status {
            200..=299 => Verdict::Success,
            408 | 429 | 500..=599 => Verdict::Retry { after: retry_after(&response.headers, SystemTime::now()) },
            _ => Verdict::Fail,
        },
        Err(SendError::Timeout(_) | SendError::Connect(_) | SendError::Io(_)) => Verdict::Retry { after: None },
        Err(SendError::InvalidRequest(_) | SendError::TargetRefused(_)) => Verdict::Fail,
    }
}

/// The `Retry-After` of a response's headers, relative to `now`.
fn retry_after(headers: &[(String, String)], now: SystemTime) -> Option<Duration> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
        .and_then(|(_, value)| parse_retry_after(value, now))
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (a date in the past means
/// "now", zero). Capped at [`MAX_RETRY_AFTER`]. `None` when unparseable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let wait = if value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit a u64 is still "a very long time".
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = parse_http_date(value)?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Parses an HTTP-date (RFC 9110 §5.6.7): the preferred IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        // IMF-fixdate: "Sun," "06" "Nov" "1994" "08:49:37" "GMT"
        [weekday, day, month, year, time, "GMT"] if weekday.ends_with(',') => {
            (day.parse::<u32>().ok()?, *month, year.parse::<i64>().ok()?, *time)
        }
        // RFC 850: "Sunday," "06-Nov-94" "08:49:37" "GMT"
        [weekday, date, time, "GMT"] if weekday.ends_with(',') => {
            let mut it = date.split('-');
            let day = it.next()?.parse::<u32>().ok()?;
            let month = it.next()?;
            let yy = it.next()?;
            if it.next().is_some() || yy.len() != 2 {
                return None;
            }
            let yy = yy.parse::<i64>().ok()?;
            // RFC 9110: a two-digit year that appears more than 50 years in the future is
            // in the past century; with dates around now, 70..99 → 19xx.
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            (day, month, year, *time)
        }
        // asctime: "Sun" "Nov" "6" "08:49:37" "1994"
        [_weekday, month, day, time, year] => (day.parse::<u32>().ok()?, *month, year.parse::<i64>().ok()?, *time),
        _ => return None,
    };
    let month = match month {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let mut hms = time.split(':');
    let hour = hms.next()?.parse::<u64>().ok()?;
    let minute = hms.next()?.parse::<u64>().ok()?;
    let second = hms.next()?.parse::<u64>().ok()?;
    if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let days = u64::try_from(days).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How the wait between attempts grows.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// The same `wait` before every retry.
    Fixed,
    /// `wait * 2^(n-2)` before attempt `n`, capped at `max`, with jitter.
    Exponential {
        /// The largest delay before jitter.
        max: Duration,
    },
}

/// How many times to retry and how long to wait in between.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `retries + 1` attempts at most).
    pub retries: u32,
    /// The base wait.
    pub wait: Duration,
    /// How the wait grows.
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// Delay before the attempt numbered `next_attempt` (2 = first retry).
    ///
    /// Fixed: `wait`. Exponential: `wait * 2^(next_attempt-2)`, capped at `max`, then jittered
    /// uniformly between 50% and 100% of that value. In both cases a longer `retry_after`
    /// (the server's `Retry-After`) wins.
    pub fn delay(&self, next_attempt: u32, retry_after: Option<Duration>) -> Duration {
        let computed = match &self.backoff {
            Backoff::Fixed => self.wait,
            Backoff::Exponential { max } => {
                let exponent = next_attempt.saturating_sub(2);
                let grown = 2u32
                    .checked_pow(exponent)
                    .and_then(|factor| self.wait.checked_mul(factor))
                    .unwrap_or(Duration::MAX);
                jitter(grown.min(*max))
            }
        };
        match retry_after {
            Some(server) if server > computed => server,
            _ => computed,
        }
    }

    /// Whether no attempt is left after `attempts_made` attempts (`attempts_made >= retries + 1`).
    pub fn exhausted(&self, attempts_made: u32) -> bool {
        u64::from(attempts_made) > u64::from(self.retries)
    }
}

/// A uniformly random duration between half of `value` and `value`.
fn jitter(value: Duration) -> Duration {
    let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let low = nanos / 2;
    Duration::from_nanos(rand::rng().random_range(low..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Result<OutboundResponse, SendError> {
        Ok(OutboundResponse {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: Vec::new(),
            body_truncated: false,
            duration: Duration::from_millis(5),
        })
    }

    fn retry(secs: u64) -> Verdict {
        Verdict::Retry { after: Some(Duration::from_secs(secs)) }
    }

    #[test]
    fn classify_table() {
        let no_after = Verdict::Retry { after: None };
        let cases: Vec<(Result<OutboundResponse, SendError>, Verdict)> = vec![
            (response(200, &[]), Verdict::Success),
            (response(201, &[]), Verdict::Success),
            (response(204, &[]), Verdict::Success),
            (response(302, &[("Location", "/elsewhere")]), Verdict::Fail),
            (response(400, &[]), Verdict::Fail),
            (response(401, &[]), Verdict::Fail),
            (response(404, &[]), Verdict::Fail),
            (response(408, &[]), no_after.clone()),
            (response(429, &[("Retry-After", "7")]), retry(7)),
            (response(429, &[("retry-after", " 7 ")]), retry(7)),
            (response(429, &[("Retry-After", "99999")]), retry(3600)),
            (response(429, &[("Retry-After", "soon")]), no_after.clone()),
            // A far-future HTTP-date is capped at one hour.
            (response(503, &[("Retry-After", "Fri, 31 Dec 2100 23:59:59 GMT")]), retry(3600)),
            // A past HTTP-date means "now".
            (response(503, &[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")]), retry(0)),
            (response(500, &[]), no_after.clone()),
            (response(502, &[]), no_after.clone()),
            (Err(SendError::Timeout(Duration::from_secs(1))), no_after.clone()),
            (Err(SendError::Connect("connection refused".into())), no_after.clone()),
            (Err(SendError::Io("connection reset".into())), no_after.clone()),
            (Err(SendError::TargetRefused("127.0.0.1 is a loopback address".into())), Verdict::Fail),
            (Err(SendError::InvalidRequest("invalid URL".into())), Verdict::Fail),
        ];
        for (result, expected) in cases {
            let label = match &result {
                Ok(r) => format!("status {} {:?}", r.status, r.headers),
                Err(e) => format!("error {e}"),
            };
            assert_eq!(classify(&result), expected, "{label}");
        }
    }

    #[test]
    fn retry_after_http_date_is_relative_to_now() {
        let date = parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        assert_eq!(date.duration_since(UNIX_EPOCH).expect("after epoch"), Duration::from_secs(1_445_412_480));
        let now = date - Duration::from_secs(90);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(90)));
        // The obsolete forms name the same instant.
        assert_eq!(parse_http_date("Wednesday, 21-Oct-15 07:28:00 GMT"), Some(date));
        assert_eq!(parse_http_date("Wed Oct 21 07:28:00 2015"), Some(date));
        assert_eq!(parse_http_date("Wed, 21 Oct 2015 07:28:00 CET"), None);
        assert_eq!(parse_http_date("Wed, 32 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn fixed_delay() {
        let policy = RetryPolicy { retries: 3, wait: Duration::from_secs(10), backoff: Backoff::Fixed };
        for attempt in 2..=4 {
            assert_eq!(policy.delay(attempt, None), Duration::from_secs(10));
        }
        assert_eq!(policy.delay(2, Some(Duration::from_secs(3))), Duration::from_secs(10));
        assert_eq!(policy.delay(2, Some(Duration::from_secs(30))), Duration::from_secs(30));
    }

    #[test]
    fn exponential_delay_bounds_cap_and_retry_after() {
        let policy = RetryPolicy {
            retries: 10,
            wait: Duration::from_secs(1),
            backoff: Backoff::Exponential { max: Duration::from_secs(60) },
        };
        for _ in 0..50 {
            for (attempt, full) in [(2u32, 1u64), (3, 2), (4, 4), (5, 8), (8, 60), (40, 60)] {
                let full = Duration::from_secs(full);
                let d = policy.delay(attempt, None);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} outside [{:?}, {full:?}]", full / 2);
            }
            // Huge attempt numbers do not overflow.
            assert!(policy.delay(u32::MAX, None) <= Duration::from_secs(60));
            // Retry-After longer than the computed delay wins; a shorter one does not shorten it.
            assert_eq!(policy.delay(2, Some(Duration::from_secs(120))), Duration::from_secs(120));
            let d = policy.delay(3, Some(Duration::from_millis(1)));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
        }
    }

    #[test]
    fn exhausted_counts_first_attempt() {
        let policy = RetryPolicy { retries: 2, wait: Duration::from_secs(1), backoff: Backoff::Fixed };
        assert!(!policy.exhausted(0));
        assert!(!policy.exhausted(1));
        assert!(!policy.exhausted(2));
        assert!(policy.exhausted(3));
        let none = RetryPolicy { retries: 0, ..policy.clone() };
        assert!(none.exhausted(1));
        let max = RetryPolicy { retries: u32::MAX, ..policy };
        assert!(!max.exhausted(u32::MAX));
    }
}
