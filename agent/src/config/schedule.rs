//! When a job runs: a cron expression (five fields, or six with a leading
//! seconds field, or `@hourly`, `@daily`, `@weekly`, `@monthly`,
//! `@yearly`), read in an IANA timezone, plus an optional spread.
//!
//! The spread is a fixed delay per node and job, derived from the host
//! name, not drawn anew each run: a fleet's agents start at different
//! seconds, and each agent still runs at a regular interval (systemd's
//! `RandomizedDelaySec` with `FixedRandomDelay`).
//!
//! Daylight-saving changes follow the cron library: a local time skipped
//! by a change fires at the first time after it; a local time that occurs
//! twice fires once.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    spread: Duration,
    text: String,
}

/// An IANA timezone by name (`UTC`, `Europe/Berlin`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("{name:?} is not an IANA timezone name (such as UTC or Europe/Berlin)")
    })
}

impl Schedule {
    /// Parse `expr` in timezone `tz`, with up to `spread_secs` of delay.
    pub fn parse(expr: &str, tz: &str, spread_secs: u64) -> Result<Schedule, String> {
        let tz = parse_timezone(tz)?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "{fields} fields; give 5 (minute hour day month weekday), or 6 with seconds first"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| e.to_string())?;
        Ok(Schedule {
            cron,
            tz,
            spread: Duration::from_secs(spread_secs),
            text: expr.to_string(),
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` the expression matches, plus
    /// this node's delay for `key` (the job or group name).
    pub fn next_after(&self, after: DateTime<Utc>, key: &str) -> Option<DateTime<Utc>> {
        let delay = chrono::Duration::from_std(spread_delay(self.spread, key)).ok()?;
        // A run is due at match + delay: look for matches after `after - delay`.
        let local = (after - delay).with_timezone(&self.tz);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        Some(next.with_timezone(&Utc) + delay)
    }
}

/// This node's fixed delay for `key`: a hash of the host name and the key,
/// below `spread`.
fn spread_delay(spread: Duration, key: &str) -> Duration {
    spread_delay_for(&crate::util::hostname(), spread, key)
}

fn spread_delay_for(host: &str, spread: Duration, key: &str) -> Duration {
    if spread.is_zero() {
        return Duration::ZERO;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{host}\0{key}").as_bytes());
    let mut n = [0u8; 8];
    n.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_le_bytes(n) % spread.as_millis().max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_six_fields_and_macros() {
        let hourly = Schedule::parse("0 * * * *", "UTC", 0).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-12-02T16:59:59Z"), "j"),
            Some(at("2026-12-02T17:00:00Z"))
        );
        let every5s = Schedule::parse("*/5 * * * * *", "UTC", 0).unwrap();
        assert_eq!(
            every5s.next_after(at("2026-12-02T16:00:01Z"), "j"),
            Some(at("2026-12-02T16:00:05Z"))
        );
        let daily = Schedule::parse("@daily", "UTC", 0).unwrap();
        assert_eq!(
            daily.next_after(at("2026-12-02T16:00:00Z"), "j"),
            Some(at("2026-12-03T00:00:00Z"))
        );
        assert!(Schedule::parse("* * * *", "UTC", 0).is_err());
        assert!(Schedule::parse("0 0 * * * * 2027", "UTC", 0).is_err());
        assert!(Schedule::parse("61 * * * *", "UTC", 0).is_err());
        assert!(Schedule::parse("0 * * * *", "Mars/Olympus", 0).is_err());
    }

    #[test]
    fn timezone_moves_the_hour() {
        // 02:00 in Berlin is 01:00 UTC in winter.
        let s = Schedule::parse("0 2 * * *", "Europe/Berlin", 0).unwrap();
        assert_eq!(
            s.next_after(at("2026-12-02T12:00:00Z"), "j"),
            Some(at("2026-12-03T01:00:00Z"))
        );
    }

    #[test]
    fn a_skipped_local_time_still_runs_once() {
        // 2027-03-28 02:30 does not exist in Berlin (clocks go 02:00 -> 03:00).
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin", 0).unwrap();
        let next = s.next_after(at("2027-03-27T12:00:00Z"), "j").unwrap();
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let local = next.with_timezone(&tz);
        assert!(
            next > at("2027-03-28T00:00:00Z") && next < at("2027-03-29T00:00:00Z"),
            "{local}"
        );
    }

    #[test]
    fn spread_is_fixed_per_node_and_below_the_bound() {
        let spread = Duration::from_secs(600);
        let a = spread_delay_for("node-a", spread, "pg");
        assert_eq!(a, spread_delay_for("node-a", spread, "pg"));
        assert!(a < spread);
        let others: Vec<Duration> = (0..20)
            .map(|i| spread_delay_for(&format!("node-{i}"), spread, "pg"))
            .collect();
        assert!(others.iter().any(|d| *d != a), "the fleet is spread out");
        let s = Schedule {
            spread,
            ..Schedule::parse("0 * * * *", "UTC", 0).unwrap()
        };
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 16, 30, 0).unwrap();
        let next = s.next_after(now, "pg").unwrap();
        assert!(next > now && next <= now + chrono::Duration::minutes(40));
    }
}
