//! Which snapshots a retention policy keeps: restic's `forget` rules, rule
//! for rule, so that `cairn forget` and `restic forget` given the same
//! flags keep the same snapshots of a group.
//!
//! Snapshots are taken newest first. `--keep-last N` keeps the N newest;
//! `--keep-hourly N` (daily, weekly, monthly, yearly) keeps the newest
//! snapshot of each of the N newest hours (days, ISO weeks, months, years)
//! that have one, counted in each snapshot's own UTC offset; `-1` means
//! every such period. While a count is left when the oldest snapshot is
//! reached, the oldest is kept too. `--keep-within D` keeps every snapshot
//! less than D older than the newest one (not counting snapshots dated in
//! the future); `--keep-within-daily D` and its kin keep the newest of each
//! period within D. `--keep-tag a,b` keeps every snapshot that has both
//! tags. A snapshot kept by any rule is kept.

use chrono::{
    DateTime, Datelike, FixedOffset, Local, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike,
};

/// A calendar span as restic writes it: `1y2m3d4h` (years, months, days,
/// hours; any part may be left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Years.
    pub years: i32,
    /// Months.
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Hours.
    pub hours: i32,
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Span, String> {
        let bad = |why: &str| format!("duration {text:?}: {why} (write it as 1y2m3d4h)");
        let mut span = Span::default();
        let mut number = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            if c == '-' {
                return Err(bad("it is negative"));
            }
            let n: i32 = number.parse().map_err(|_| bad("a number is missing"))?;
            if n > 100_000 {
                return Err(bad(&format!("{n}{c} is too long")));
            }
            number.clear();
            match c {
                'y' => span.years = n,
                'm' => span.months = n,
                'd' => span.days = n,
                'h' => span.hours = n,
                _ => return Err(bad(&format!("unknown unit {c:?}"))),
            }
        }
        if !number.is_empty() {
            return Err(bad("the last number has no unit"));
        }
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        Ok(span)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Span {
    /// Whether every part is zero (the rule is off).
    pub fn is_zero(&self) -> bool {
        *self == Span::default()
    }

    /// `t` less this span, as restic computes it: years, months and days
    /// on the calendar, a day past the end of a month rolling over into the
    /// next (March 31 less a month is March 3, as Go's `AddDate` does), then
    /// the hours as elapsed time.
    ///
    /// Like restic (Go), a time whose offset is the machine's own zone's at
    /// that instant is taken to be in that zone, so the calendar step keeps
    /// the wall-clock time across a daylight-saving change; any other
    /// offset stays fixed.
    pub fn before(&self, t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        let local = t.with_timezone(&Local);
        let moved = if local.offset().fix() == *t.offset() {
            let naive = self.calendar_back(local.naive_local());
            match Local.from_local_datetime(&naive) {
                chrono::LocalResult::Single(m) | chrono::LocalResult::Ambiguous(m, _) => {
                    m.fixed_offset()
                }
                // A wall-clock time a change skipped: Go moves it on by the
                // change, an hour in every zone this runs in.
                chrono::LocalResult::None => Local
                    .from_local_datetime(&(naive + chrono::Duration::hours(1)))
                    .earliest()
                    .map_or(t, |m| m.fixed_offset()),
            }
        } else {
            let naive = self.calendar_back(t.naive_local());
            t.offset().from_local_datetime(&naive).single().unwrap_or(t)
        };
        moved - chrono::Duration::hours(self.hours as i64)
    }

    /// The wall-clock time `t` less the years, months and days, a day past
    /// the end of a month rolling into the next as Go's `time.Date` does.
    fn calendar_back(&self, t: NaiveDateTime) -> NaiveDateTime {
        let months = (t.year() - self.years) as i64 * 12 + t.month0() as i64 - self.months as i64;
        let (year, month0) = (months.div_euclid(12) as i32, months.rem_euclid(12) as u32);
        // Spans are bounded when parsed, so the year is always in range.
        let first = NaiveDate::from_ymd_opt(year, month0 + 1, 1).unwrap_or(NaiveDate::MIN);
        let date = first + chrono::Duration::days(t.day() as i64 - 1 - self.days as i64);
        date.and_time(t.time())
    }
}

/// A retention policy. Counts: 0 is off, -1 keeps every period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N snapshots.
    pub last: i32,
    /// The newest snapshot of each of the last N hours that have one.
    pub hourly: i32,
    /// ... days.
    pub daily: i32,
    /// ... ISO weeks.
    pub weekly: i32,
    /// ... months.
    pub monthly: i32,
    /// ... years.
    pub yearly: i32,
    /// Every snapshot within this span of the newest.
    pub within: Span,
    /// The newest snapshot of each hour within this span of the newest.
    pub within_hourly: Span,
    /// ... of each day.
    pub within_daily: Span,
    /// ... of each ISO week.
    pub within_weekly: Span,
    /// ... of each month.
    pub within_monthly: Span,
    /// ... of each year.
    pub within_yearly: Span,
    /// Snapshots having every tag of any one of these lists.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    /// Whether no rule is set: then every snapshot is kept.
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// Whether a snapshot with tags `have` matches the tag list `list`, as
/// restic decides it: it has every tag of the list, and an empty tag in the
/// list matches a snapshot without tags.
pub fn has_tags(have: &[String], list: &[String]) -> bool {
    for tag in list {
        if tag.is_empty() && have.is_empty() {
            return true;
        }
        if !have.contains(tag) {
            return false;
        }
    }
    true
}

/// A tag list as restic reads one from a flag: comma-separated, each tag
/// trimmed, empty tags kept (an empty tag means "no tags").
pub fn tag_list(spec: &str) -> Vec<String> {
    spec.split(',').map(|t| t.trim().to_string()).collect()
}

/// What the policy decided for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Keep it.
    pub keep: bool,
    /// The rules that keep it (restic's wording: "daily snapshot", ...).
    pub reasons: Vec<String>,
}

/// The period a snapshot falls in, for one rule; `nr` is its place in the
/// newest-first order (the "last" rule's period is the snapshot itself).
type Bucker = fn(&DateTime<FixedOffset>, usize) -> i64;

fn always(_: &DateTime<FixedOffset>, nr: usize) -> i64 {
    nr as i64
}
fn hour(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 1_000_000 + t.month() as i64 * 10_000 + t.day() as i64 * 100 + t.hour() as i64
}
fn day(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 10_000 + t.month() as i64 * 100 + t.day() as i64
}
fn week(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    let w = t.iso_week();
    w.year() as i64 * 100 + w.week() as i64
}
fn month(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64 * 100 + t.month() as i64
}
fn year(t: &DateTime<FixedOffset>, _: usize) -> i64 {
    t.year() as i64
}

/// Decide which of one group's snapshots `policy` keeps. `items` come in
/// any order and go out newest first (items of equal time keep their
/// order), each with its verdict. `now` bounds "the newest": a snapshot
/// dated in the future does not move the `within` windows.
pub fn apply<T>(
    mut items: Vec<T>,
    time: impl Fn(&T) -> DateTime<FixedOffset>,
    tags: impl Fn(&T) -> Vec<String>,
    policy: &KeepPolicy,
    now: DateTime<FixedOffset>,
) -> Vec<(T, Verdict)> {
    items.sort_by_key(|item| std::cmp::Reverse(time(item)));
    if policy.is_empty() {
        return items
            .into_iter()
            .map(|i| {
                let v = Verdict {
                    keep: true,
                    reasons: vec!["policy is empty".into()],
                };
                (i, v)
            })
            .collect();
    }
    let mut counted: [(i32, Bucker, Option<i64>, &str); 6] = [
        (policy.last, always, None, "last snapshot"),
        (policy.hourly, hour, None, "hourly snapshot"),
        (policy.daily, day, None, "daily snapshot"),
        (policy.weekly, week, None, "weekly snapshot"),
        (policy.monthly, month, None, "monthly snapshot"),
        (policy.yearly, year, None, "yearly snapshot"),
    ];
    let mut windows: [(Span, Bucker, Option<i64>, &str); 5] = [
        (policy.within_hourly, hour, None, "hourly within"),
        (policy.within_daily, day, None, "daily within"),
        (policy.within_weekly, week, None, "weekly within"),
        (policy.within_monthly, month, None, "monthly within"),
        (policy.within_yearly, year, None, "yearly within"),
    ];
    let newest = items
        .iter()
        .map(&time)
        .filter(|t| *t < now)
        .max()
        .unwrap_or(now);
    let count = items.len();
    let mut out = Vec::with_capacity(count);
    for (nr, item) in items.into_iter().enumerate() {
        let t = time(&item);
        let mut reasons = Vec::new();
        let have = tags(&item);
        for list in &policy.tags {
            if has_tags(&have, list) {
                reasons.push(format!("has tags [{}]", list.join(" ")));
            }
        }
        if !policy.within.is_zero() && t > policy.within.before(newest) {
            reasons.push(format!("within {}", policy.within));
        }
        for (left, bucker, last, reason) in &mut counted {
            if *left > 0 || *left == -1 {
                let period = bucker(&t, nr);
                // The oldest snapshot is kept while a count is left: the
                // longest history the counts allow.
                if Some(period) != *last || nr == count - 1 {
                    *last = Some(period);
                    if *left > 0 {
                        *left -= 1;
                    }
                    reasons.push(reason.to_string());
                }
            }
        }
        for (span, bucker, last, reason) in &mut windows {
            if !span.is_zero() && t > span.before(newest) {
                let period = bucker(&t, nr);
                if Some(period) != *last {
                    *last = Some(period);
                    reasons.push(format!("{reason} {span}"));
                }
            }
        }
        let keep = !reasons.is_empty();
        out.push((item, Verdict { keep, reasons }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).expect("a test time")
    }

    fn kept(times: &[&str], policy: &KeepPolicy) -> Vec<String> {
        let items: Vec<String> = times.iter().map(|s| s.to_string()).collect();
        apply(
            items,
            |s| at(s),
            |_| Vec::new(),
            policy,
            at("2030-01-01T00:00:00Z"),
        )
        .into_iter()
        .filter(|(_, v)| v.keep)
        .map(|(s, _)| s)
        .collect()
    }

    #[test]
    fn spans_parse_print_and_subtract_as_restic_does() {
        let span: Span = "1y2m3d4h".parse().unwrap();
        assert_eq!(span.to_string(), "1y2m3d4h");
        assert_eq!("2d".parse::<Span>().unwrap().days, 2);
        assert!("3w".parse::<Span>().unwrap_err().contains("unknown unit"));
        assert!("12".parse::<Span>().unwrap_err().contains("no unit"));
        assert!("-5d".parse::<Span>().unwrap_err().contains("negative"));
        assert!("300000y".parse::<Span>().unwrap_err().contains("too long"));
        assert!("".parse::<Span>().is_err());
        // Go's AddDate: March 31 less one month is "February 31", March 3.
        let m: Span = "1m".parse().unwrap();
        assert_eq!(
            m.before(at("2023-03-31T10:00:00+02:00")),
            at("2023-03-03T10:00:00+02:00")
        );
        let mixed: Span = "1y1d5h".parse().unwrap();
        assert_eq!(
            mixed.before(at("2024-03-01T03:00:00Z")),
            at("2023-02-27T22:00:00Z")
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_and_the_oldest_while_counts_remain() {
        let times = [
            "2024-05-03T20:00:00Z",
            "2024-05-03T08:00:00Z",
            "2024-05-02T23:00:00Z",
            "2024-05-02T01:00:00Z",
        ];
        let daily = KeepPolicy {
            daily: 2,
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept(&times, &daily),
            ["2024-05-03T20:00:00Z", "2024-05-02T23:00:00Z"]
        );
        // Three days asked, two exist: the oldest snapshot is kept as well.
        let more = KeepPolicy {
            daily: 3,
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept(&times, &more),
            [
                "2024-05-03T20:00:00Z",
                "2024-05-02T23:00:00Z",
                "2024-05-02T01:00:00Z"
            ]
        );
    }

    #[test]
    fn periods_are_counted_in_the_snapshots_own_offset() {
        // 23:30 at +02:00 and 00:30 at +02:00 are two days there, though one
        // day in UTC.
        let times = ["2024-05-03T00:30:00+02:00", "2024-05-02T23:30:00+02:00"];
        let daily = KeepPolicy {
            daily: 1,
            last: 0,
            ..KeepPolicy::default()
        };
        assert_eq!(kept(&times, &daily), ["2024-05-03T00:30:00+02:00"]);
        let two = KeepPolicy {
            daily: 2,
            ..KeepPolicy::default()
        };
        assert_eq!(kept(&times, &two).len(), 2);
    }

    #[test]
    fn within_counts_back_from_the_newest_snapshot_not_in_the_future() {
        let times = [
            "2031-01-01T00:00:00Z", // in the future of `now`: kept, ignored as newest
            "2024-05-03T00:00:00Z",
            "2024-05-01T12:00:00Z",
            "2024-04-30T00:00:00Z",
        ];
        let within = KeepPolicy {
            within: "2d".parse().unwrap(),
            ..KeepPolicy::default()
        };
        assert_eq!(
            kept(&times, &within),
            [
                "2031-01-01T00:00:00Z",
                "2024-05-03T00:00:00Z",
                "2024-05-01T12:00:00Z"
            ]
        );
    }

    #[test]
    fn an_empty_policy_keeps_everything_and_tags_keep_what_has_them() {
        let times = ["2024-05-03T00:00:00Z", "2024-05-01T00:00:00Z"];
        assert_eq!(kept(&times, &KeepPolicy::default()).len(), 2);
        let items = vec![
            ("a", vec!["x".to_string(), "y".to_string()]),
            ("b", vec!["x".to_string()]),
        ];
        let policy = KeepPolicy {
            tags: vec![vec!["x".into(), "y".into()]],
            ..KeepPolicy::default()
        };
        let out = apply(
            items,
            |_| at("2024-05-01T00:00:00Z"),
            |(_, t)| t.clone(),
            &policy,
            at("2030-01-01T00:00:00Z"),
        );
        let keep: Vec<&str> = out
            .iter()
            .filter(|(_, v)| v.keep)
            .map(|((n, _), _)| *n)
            .collect();
        assert_eq!(keep, ["a"]);
    }
}
