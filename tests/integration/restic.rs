//! Interoperability with the real restic binary, both directions: restic is
//! the users' exit door and Cairn's strongest correctness oracle.

use crate::common::*;

#[test]
fn restic_reads_what_cairn_writes() {
    let (s, src) = Scratch::with_fixture();
    let first = s.cairn_json(&["backup", src.to_str().unwrap(), "--tag", "first"]);
    std::fs::write(src.join("added-later.txt"), b"second snapshot").unwrap();
    let second = s.cairn_json(&["backup", src.to_str().unwrap()]);

    let snaps: serde_json::Value =
        serde_json::from_str(&s.restic_ok(&["snapshots", "--json"])).unwrap();
    let ids: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{snaps}");
    assert!(
        ids.contains(&first["snapshot_id"].as_str().unwrap()),
        "{snaps}"
    );
    assert!(
        ids.contains(&second["snapshot_id"].as_str().unwrap()),
        "{snaps}"
    );
    assert!(
        snaps.to_string().contains("\"first\""),
        "tags must survive: {snaps}"
    );

    let ls = s.restic_ok(&["ls", "latest"]);
    assert!(ls.contains("/names/new\nline"), "{ls}");
    assert!(ls.contains("/added-later.txt"), "{ls}");

    s.restic_ok(&["check", "--read-data"]);
    s.restic_ok(&[
        "restore",
        "latest",
        "--target",
        s.path("restic-out").to_str().unwrap(),
    ]);
    let out = s.path("restic-out").join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &out);
}

#[test]
fn cairn_reads_what_restic_writes() {
    let s = Scratch::new();
    let src = s.path("src");
    make_fixture(&src);
    s.restic_ok(&["init", "--repository-version", "2"]);
    s.restic_ok(&["backup", src.to_str().unwrap(), "--tag", "by-restic"]);
    std::fs::write(src.join("added-later.txt"), b"second snapshot").unwrap();
    std::fs::remove_file(src.join("one")).unwrap();
    s.restic_ok(&["backup", src.to_str().unwrap(), "--compression", "max"]);

    let snaps = s.cairn_json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    assert_eq!(snaps[0]["tags"][0], "by-restic", "{snaps}");
    let ls = s.cairn_ok(&["ls", "latest"]);
    assert!(ls.contains("/names/new\\nline\""), "{ls}");
    assert!(ls.contains("/added-later.txt"), "{ls}");
    s.cairn_ok(&["check", "--read-data"]);
    let verify = s.cairn_json(&["verify", "latest"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0, "{verify}");

    assert_same_tree(&src, &s.restore_latest("out", &src));

    // And Cairn can add to a restic repository that restic still reads.
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    s.restic_ok(&["check", "--read-data"]);
    assert_eq!(s.snapshot_count(), 3);
}
