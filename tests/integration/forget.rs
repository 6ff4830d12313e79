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
    let policy = policies[1];
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

/// The bytes of every file under `dir`.
fn stored_bytes(dir: &std::path::Path) -> u64 {
    walk(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn prune_removes_what_no_snapshot_uses_and_every_snapshot_still_restores() {
    use crate::common::{assert_same_tree, random_bytes};
    let s = Scratch::new();
    s.init();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    // v1: a large random file and 300 small ones, sharing packs.
    std::fs::write(src.join("big.bin"), random_bytes(6 << 20, 1)).unwrap();
    for i in 0..300u64 {
        std::fs::write(
            src.join(format!("small/{i}")),
            random_bytes(20_000, 100 + i),
        )
        .unwrap();
    }
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    // v2: the large file and every other small one gone, one new file.
    std::fs::remove_file(src.join("big.bin")).unwrap();
    for i in (0..300u64).step_by(2) {
        std::fs::remove_file(src.join(format!("small/{i}"))).unwrap();
    }
    std::fs::write(src.join("new.bin"), random_bytes(1 << 20, 7)).unwrap();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    // restic writes a snapshot into the same repository: prune keeps its data.
    s.restic_ok(&["backup", src.to_str().unwrap()]);
    let snaps = s.cairn_json(&["snapshots"]);
    let first = snaps[0]["id"].as_str().unwrap().to_string();
    let second = snaps[1]["id"].as_str().unwrap().to_string();
    s.cairn_ok(&["forget", &first]);

    // A dry run changes nothing.
    let before = stored_bytes(&s.repo());
    let dry = s.cairn_json(&["prune", "--dry-run"]);
    assert!(dry["packs_repacked"].as_u64().unwrap() >= 1, "{dry}");
    assert_eq!(
        stored_bytes(&s.repo()),
        before,
        "a dry run changed the repository"
    );

    // For real: the large file's data and the removed small files go; the
    // packs they shared with kept files are repacked.
    let done = s.cairn_json(&["prune"]);
    assert_eq!(done["snapshots"], 2, "{done}");
    assert!(done["packs_repacked"].as_u64().unwrap() >= 1, "{done}");
    assert!(done["blobs_repacked"].as_u64().unwrap() >= 150, "{done}");
    let after = stored_bytes(&s.repo());
    assert!(
        before - after >= (6 << 20) + 2_500_000,
        "only {} bytes freed: {done}",
        before - after
    );

    // Both tools find the repository whole and restore every snapshot.
    s.restic_ok(&["check", "--read-data"]);
    s.cairn_ok(&["check", "--read-data"]);
    let restored = s.restore_latest("out", &src);
    assert_same_tree(&src, &restored);
    let by_restic = s.path("by-restic");
    s.restic_ok(&["restore", &second, "--target", by_restic.to_str().unwrap()]);
    assert_same_tree(&src, &by_restic.join(src.strip_prefix("/").unwrap()));

    // Nothing is left to do.
    let again = s.cairn_json(&["prune"]);
    for field in ["packs_removed", "packs_repacked", "packs_unreferenced"] {
        assert_eq!(again[field], 0, "{field}: {again}");
    }
}

#[test]
fn backup_time_records_the_time_given_as_restic_does() {
    let s = Scratch::new();
    s.init();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("file"), "x").unwrap();
    s.cairn_ok(&[
        "backup",
        "--time",
        "2024-02-29 13:40:05",
        src.to_str().unwrap(),
    ]);
    restic_snapshot(&s, &src, "any", "2024-02-29 13:40:05", "");
    s.cairn_ok(&[
        "backup",
        "--time",
        "2021-06-01T12:00:00+02:00",
        src.to_str().unwrap(),
    ]);
    let list: serde_json::Value =
        serde_json::from_str(s.restic_ok(&["snapshots", "--json"]).trim()).unwrap();
    let mut times: Vec<chrono::DateTime<chrono::FixedOffset>> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| chrono::DateTime::parse_from_rfc3339(s["time"].as_str().unwrap()).unwrap())
        .collect();
    times.sort();
    assert_eq!(times.len(), 3, "{list}");
    // Local time, read the same way by both tools.
    assert_eq!(times[1], times[2], "{list}");
    assert_eq!(
        times[0],
        chrono::DateTime::parse_from_rfc3339("2021-06-01T10:00:00Z").unwrap(),
        "{list}"
    );
    // The 2021 backup's parent may not be the newer 2024 one (restic
    // takes the newest snapshot not newer than --time).
    let old = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["time"].as_str().unwrap().starts_with("2021"))
        .unwrap();
    assert!(old.get("parent").is_none(), "{old}");
    let out = s.cairn(&["backup", "--time", "yesterday", src.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stderr(&out).contains("\"yesterday\" is not a time"),
        "{}",
        text(&out)
    );
    assert_eq!(s.snapshot_count(), 3);
}
