//! [`Timestamp`]: whole seconds since the Unix epoch, shown and parsed as UTC dates.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const SECS_PER_DAY: u64 = 86_400;

/// A point in time, in whole seconds since 1970-01-01T00:00:00Z (UTC, no leap seconds).
///
/// In a license key's JSON it is a plain integer. It displays as `2027-01-01T00:00:00Z` and
/// parses from that form or from a bare date, `2027-01-01`, meaning midnight UTC.
///
/// ```
/// use toru_plugin_api::license::Timestamp;
/// let t: Timestamp = "2027-01-01".parse()?;
/// assert_eq!(t.as_unix(), 1_798_761_600);
/// assert_eq!(t.to_string(), "2027-01-01T00:00:00Z");
/// assert_eq!(t.add_days(31).to_string(), "2027-02-01T00:00:00Z");
/// # Ok::<(), toru_plugin_api::license::TimestampError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `secs` seconds after the epoch.
    pub const fn from_unix(secs: u64) -> Self {
        Timestamp(secs)
    }

    /// Seconds since the epoch.
    pub const fn as_unix(self) -> u64 {
        self.0
    }

    /// The system clock, rounded down to the second (the epoch if the clock is before it).
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Timestamp(secs)
    }

    /// `days` days later, saturating at the largest timestamp.
    pub const fn add_days(self, days: u64) -> Self {
        self.add_secs(days.saturating_mul(SECS_PER_DAY))
    }

    /// `secs` seconds later, saturating at the largest timestamp.
    pub const fn add_secs(self, secs: u64) -> Self {
        Timestamp(self.0.saturating_add(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / SECS_PER_DAY;
        let secs = self.0 % SECS_PER_DAY;
        // u64::MAX / 86_400 fits an i64 with room to spare.
        let (y, m, d) = civil_from_days(days as i64);
        let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
        write!(f, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Parses `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`, years 1970 to 9999.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text).ok_or_else(|| TimestampError {
            text: text.to_owned(),
        })
    }
}

/// A text that [`Timestamp`] could not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC, years 1970 to 9999)")]
pub struct TimestampError {
    text: String,
}

fn parse(text: &str) -> Option<Timestamp> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let [y, m, d] = fields(date, '-', [4, 2, 2])?;
    if !(1970..=9999).contains(&y) {
        return None;
    }
    let days = days_from_civil(y as i64, m as u32, d as u32);
    // Rejects 2027-02-30 and month 13: the day must name itself.
    if civil_from_days(days) != (y as i64, m as u32, d as u32) {
        return None;
    }
    let secs = match time {
        None => 0,
        Some(time) => {
            let [hh, mm, ss] = fields(time, ':', [2, 2, 2])?;
            if hh > 23 || mm > 59 || ss > 59 {
                return None;
            }
            hh * 3600 + mm * 60 + ss
        }
    };
    Some(Timestamp(days as u64 * SECS_PER_DAY + secs))
}

/// Three all-digit fields of exactly the given widths, separated by `sep`.
fn fields(text: &str, sep: char, widths: [usize; 3]) -> Option<[u64; 3]> {
    let mut parts = text.split(sep);
    let mut out = [0; 3];
    for (slot, width) in out.iter_mut().zip(widths) {
        let part = parts.next()?;
        if part.len() != width || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

// Howard Hinnant's `days_from_civil` and `civil_from_days`
// (http://howardhinnant.github.io/date_algorithms.html), for the proleptic Gregorian calendar.

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Timestamp(951_782_400 + 3661).to_string(),
            "2000-02-29T01:01:01Z"
        );
        assert_eq!(Timestamp(u64::MAX).as_unix(), u64::MAX);
        // Far-future values still display (with a long year) rather than panic.
        assert!(Timestamp(u64::MAX).to_string().ends_with('Z'));
    }

    #[test]
    fn parses_dates_and_date_times() {
        let t: Timestamp = "2000-02-29".parse().unwrap();
        assert_eq!(t.as_unix(), 951_782_400);
        let t: Timestamp = "2000-02-29T01:01:01Z".parse().unwrap();
        assert_eq!(t.as_unix(), 951_782_400 + 3661);
        assert_eq!("1970-01-01".parse::<Timestamp>().unwrap(), Timestamp(0));
    }

    #[test]
    fn every_day_round_trips() {
        for days in 0..(400 * 366) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            let t = Timestamp(days as u64 * SECS_PER_DAY);
            assert_eq!(t.to_string().parse::<Timestamp>().unwrap(), t);
        }
    }

    #[test]
    fn refuses_what_is_not_a_date() {
        for bad in [
            "",
            "2027",
            "2027-1-01",
            "2027-02-30",
            "2027-13-01",
            "2026-02-29",
            "1969-12-31",
            "2027-01-01T",
            "2027-01-01T00:00:00",
            "2027-01-01T24:00:00Z",
            "2027-01-01 00:00:00Z",
            "+2027-01-01",
            "2027-01-01-01",
            "２０２７-01-01",
        ] {
            let err = bad.parse::<Timestamp>().unwrap_err();
            assert!(err.to_string().contains("is not a date"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn adds_days_without_overflow() {
        assert_eq!(Timestamp(0).add_days(1), Timestamp(86_400));
        assert_eq!(Timestamp(u64::MAX - 1).add_days(1), Timestamp(u64::MAX));
        assert_eq!(Timestamp(5).add_secs(u64::MAX), Timestamp(u64::MAX));
    }
}
