//! `cairn forget` against restic's own `forget`: on the same repository,
//! with the same policy flags, both must keep the same snapshots.

use crate::common::{Scratch, stderr, text};
use std::collections::BTreeSet;

/// Make a snapshot with restic at `time` (local time, restic's format)
/// for `host` of the folder `src`.
fn restic_snapshot(s: &Scratch, src: &std::path::Path, host: &str, time: &str, tag: &str) {
    let mut args = vec![
        "backup",
        "--host",
        host,
        "--time",
        time,
        src.to_str().unwrap(),
    ];
    if !tag.is_empty() {
        args.extend(["--tag", tag]);
    }
    s.restic_ok(&args);
}

/// The ids a `forget --json` report keeps, over every group.
fn kept(report: &serde_json::Value, what: &str) -> BTreeSet<String> {
    report
        .as_array()
        .unwrap_or_else(|| panic!("{what}: not a JSON array: {report}"))
        .iter()
        .flat_map(|g| g["keep"].as_array().cloned().unwrap_or_default())
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn ids(list: &serde_json::Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn forget_keeps_what_restic_forget_keeps_and_restic_reads_the_result() {
    let s = Scratch::new();
    s.init();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    // Two hosts (two groups), 28 snapshots over 14 months: several a day
    // on some days, gaps of weeks, a month boundary, a year boundary, a
    // tagged one. Every count below runs out by the oldest snapshot of each
    // group: restic 0.16 and later (and Cairn) also keep the oldest while a
    // count is left, Debian's restic 0.14 does not.
    let times = [
        "2023-01-15 09:00:00",
        "2023-03-02 10:00:00",
        "2023-05-20 11:00:00",
        "2023-08-01 12:00:00",
        "2023-10-31 23:59:00",
        "2023-11-01 00:01:00",
        "2023-12-31 22:00:00",
        "2024-01-01 02:00:00",
        "2024-01-20 08:00:00",
        "2024-02-10 08:00:00",
        "2024-02-11 08:00:00",
        "2024-02-26 08:00:00",
        "2024-02-27 06:00:00",
        "2024-02-27 18:00:00",
        "2024-02-28 06:00:00",
        "2024-02-28 07:30:00",
        "2024-02-28 19:00:00",
        "2024-02-29 01:00:00",
        "2024-02-29 13:00:00",
        "2024-02-29 13:40:00",
        "2024-03-01 00:10:00",
    ];
    for (i, t) in times.iter().enumerate() {
        std::fs::write(src.join("file"), format!("version {i}")).unwrap();
        let tag = if i == 2 { "keep-me" } else { "" };
        restic_snapshot(&s, &src, "alpha", t, tag);
    }
    for t in [
        "2023-12-05 10:00:00",
        "2024-01-10 10:00:00",
        "2024-02-01 10:00:00",
        "2024-02-20 10:00:00",
        "2024-02-27 10:00:00",
        "2024-02-28 10:00:00",
        "2024-02-29 10:00:00",
    ] {
        restic_snapshot(&s, &src, "beta", t, "");
    }
    let all = ids(&s.cairn_json(&["snapshots"]));
    assert_eq!(all.len(), 28);

    let policies: [&[&str]; 5] = [
        &["--keep-last", "3"],
        &[
            "--keep-daily",
            "4",
            "--keep-weekly",
            "2",
            "--keep-monthly",
            "3",
        ],
        &[
            "--keep-hourly",
            "5",
            "--keep-yearly",
            "1",
            "--keep-tag",
            "keep-me",
        ],
        &["--keep-within", "2d", "--keep-monthly", "2"],
        &["--keep-last", "1", "--keep-within-daily", "1m"],
    ];
    for policy in policies {
        let mut restic_args = vec!["forget", "--dry-run", "--json", "--group-by", "host,paths"];
        restic_args.extend(policy);
        let out = s.restic_ok(&restic_args);
        let theirs: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("restic forget --json ({e}): {out}"));
        let mut cairn_args = vec!["forget", "--dry-run", "--group-by", "host,paths"];
        cairn_args.extend(policy);
        let ours = s.cairn_json(&cairn_args);
        let (want, got) = (kept(&theirs, "restic"), kept(&ours, "cairn"));
        assert!(
            !got.is_empty() && got.len() < all.len(),
            "{policy:?}: {ours}"
        );
        assert_eq!(
            got, want,
            "{policy:?}: cairn keeps {ours}\nrestic keeps {theirs}"
        );
    }
    assert_eq!(
        ids(&s.cairn_json(&["snapshots"])),
        all,
        "a dry run removed something"
    );

    // For real: exactly the kept snapshots remain, and restic agrees the
    // repository is sound.
    let policy = [
        "--keep-daily",
        "4",
        "--keep-weekly",
        "2",
        "--keep-monthly",
        "3",
    ];
    let mut args = vec!["forget", "--dry-run", "--json", "--group-by", "host,paths"];
    args.extend(policy);
    let expected = kept(
        &serde_json::from_str(s.restic_ok(&args).trim()).unwrap(),
        "restic",
    );
    let mut args = vec!["forget", "--group-by", "host,paths"];
    args.extend(policy);
    let said = s.cairn_ok(&args);
    assert!(
        said.contains(&format!("removed {} snapshots", all.len() - expected.len())),
        "{said}"
    );
    let left: serde_json::Value =
        serde_json::from_str(s.restic_ok(&["snapshots", "--json"]).trim()).unwrap();
    assert_eq!(ids(&left), expected);
    s.restic_ok(&["check"]);
    s.cairn_ok(&["check"]);

    // By id; and bad input is named.
    let one = expected.iter().next().unwrap().clone();
    s.cairn_ok(&["forget", &one[..8]]);
    assert_eq!(ids(&s.cairn_json(&["snapshots"])).len(), expected.len() - 1);
    let out = s.cairn(&["forget", "--keep-daily", "-2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("--keep-daily -2"), "{}", text(&out));
    let out = s.cairn(&["forget", "--keep-within", "3w"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stderr(&out).contains("unknown unit"), "{}", text(&out));
    let out = s.cairn(&["forget", "deadbeef"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("deadbeef"), "{}", text(&out));
}
