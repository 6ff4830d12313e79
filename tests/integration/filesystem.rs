//! The filesystem adapter end to end: back up, list, restore, verify.

use crate::common::*;
use std::path::Path;

fn restored(scratch: &Scratch, target: &str, src: &Path) -> std::path::PathBuf {
    scratch
        .path(target)
        .join(src.strip_prefix("/").expect("absolute"))
}

#[test]
fn round_trip_is_byte_identical_with_metadata() {
    let (s, src) = Scratch::with_fixture();
    let summary = s.cairn_json(&["backup", src.to_str().unwrap()]);
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!(summary["skipped"].as_array().unwrap().len(), 0, "{summary}");
    // 13 regular files in the fixture, counting the hard link.
    assert_eq!(summary["files"], 13, "{summary}");

    let listing = s.cairn_ok(&["ls", "latest"]);
    // A newline in a name is printed escaped, in quotes.
    assert!(listing.contains("/names/new\\nline\""), "{listing}");
    assert!(listing.contains("/link-out"), "{listing}");

    let out = s.restore_latest("out", &src);
    assert_same_tree(&src, &out);
    // The symlink pointing out of the tree is stored as a link, not followed.
    assert_eq!(
        std::fs::read_link(out.join("link-out")).unwrap(),
        Path::new("/etc/hostname")
    );
    // The sparse file stays sparse: 64 MiB long, far fewer blocks on disk.
    let sparse = std::fs::metadata(out.join("sparse.img")).unwrap();
    assert_eq!(sparse.len(), 64 * 1024 * 1024);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&sparse) * 512 < 16 * 1024 * 1024,
        "restored sparse file takes {} blocks",
        std::os::unix::fs::MetadataExt::blocks(&sparse)
    );
    // Hard links come back at least as files with the same bytes.
    assert_eq!(std::fs::read(out.join("hardlink-to-one")).unwrap(), b"1");

    let verify = s.cairn_json(&["verify", "latest"]);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0, "{verify}");
    assert!(
        verify["bytes"].as_u64().unwrap() > 64 * 1024 * 1024,
        "{verify}"
    );
    s.cairn_ok(&["check", "--read-data"]);
}

#[test]
fn excludes_and_temporary_file_rules() {
    let s = Scratch::new();
    let src = s.path("src");
    for rel in [
        "keep.txt",
        "TEMP.scratch",
        "a.tmp",
        "b.swp",
        "tmp/inside",
        "sub/tmp/x",
        "sub/keep.log",
        "sub/c.tmp",
        "skip-me/file",
    ] {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, rel).unwrap();
    }
    s.init();
    let skip_dir = format!("{}/skip-me", src.display());
    s.cairn_ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        "*.log",
        "--exclude",
        &skip_dir,
    ]);
    let listing = s.cairn_ok(&["ls", "latest"]);
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.strip_prefix(src.to_str().unwrap()))
        .collect();
    assert_eq!(names, ["", "/keep.txt", "/sub"], "listing:\n{listing}");

    // With the temporary-file rules off, only the explicit excludes apply.
    s.cairn_ok(&[
        "backup",
        src.to_str().unwrap(),
        "--no-exclude-temporary",
        "--exclude",
        "*.log",
    ]);
    let listing = s.cairn_ok(&["ls", "latest"]);
    for expected in [
        "/TEMP.scratch",
        "/a.tmp",
        "/b.swp",
        "/tmp/inside",
        "/sub/tmp/x",
        "/sub/c.tmp",
        "/skip-me/file",
    ] {
        assert!(
            listing.contains(&format!("{}{expected}", src.display())),
            "{expected} missing:\n{listing}"
        );
    }
    assert!(!listing.contains("keep.log"), "{listing}");
}

#[test]
fn unchanged_files_are_not_read_again_and_data_deduplicates() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big.bin"), random_bytes(3 * 1024 * 1024, 5)).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    s.init();
    let first = s.cairn_json(&["backup", src.to_str().unwrap()]);
    assert_eq!(first["files_unchanged"], 0, "{first}");
    assert!(first["parent"].is_null(), "{first}");

    let second = s.cairn_json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["files_unchanged"], 2, "{second}");
    assert_eq!(
        second["bytes_read"], 0,
        "unchanged files must not be read: {second}"
    );
    assert_eq!(second["parent"], first["snapshot_id"], "{second}");

    // One changed file is read again; the other is reused.
    std::fs::write(src.join("small.txt"), b"changed!").unwrap();
    let third = s.cairn_json(&["backup", src.to_str().unwrap()]);
    assert_eq!(third["files_unchanged"], 1, "{third}");
    assert_eq!(third["bytes_read"], 8, "{third}");

    // --force reads everything, and identical content is not stored again.
    let forced = s.cairn_json(&["backup", "--force", src.to_str().unwrap()]);
    assert_eq!(forced["files_unchanged"], 0, "{forced}");
    assert_eq!(
        forced["bytes_new"], 0,
        "identical data must deduplicate: {forced}"
    );

    assert_same_tree(&src, &s.restore_latest("out", &src));
    assert_eq!(s.snapshot_count(), 4);
}

#[test]
fn include_restores_only_the_chosen_subtree() {
    let (s, src) = Scratch::with_fixture();
    s.cairn_ok(&["backup", src.to_str().unwrap()]);
    let docs = format!("{}/docs", src.display());
    s.cairn_ok(&[
        "restore",
        "latest",
        "--target",
        s.path("out").to_str().unwrap(),
        "--include",
        &docs,
    ]);
    let out = restored(&s, "out", &src);
    assert_same_tree(&src.join("docs"), &out.join("docs"));
    let top: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["docs"], "only docs/ must be restored");
}

#[test]
fn single_file_and_several_roots() {
    let s = Scratch::new();
    let a = s.path("a");
    let b = s.path("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("x"), b"x").unwrap();
    std::fs::write(b.join("single.txt"), b"single").unwrap();
    s.init();
    let single = b.join("single.txt");
    s.cairn_ok(&["backup", a.to_str().unwrap(), single.to_str().unwrap()]);
    let snaps = s.cairn_json(&["snapshots"]);
    let paths = snaps[0]["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 2, "{snaps}");
    s.cairn_ok(&[
        "restore",
        "latest",
        "--target",
        s.path("out").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(restored(&s, "out", &single)).unwrap(),
        b"single"
    );
    assert_same_tree(&a, &restored(&s, "out", &a));
}

#[test]
fn compiled_adapters_are_cached_on_disk() {
    let s = Scratch::new();
    let cache = s.path("own-cache");
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    s.init();
    let out = s
        .cairn_cmd(&["backup", src.to_str().unwrap()])
        .env("CAIRN_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let cached: Vec<_> = std::fs::read_dir(cache.join("components"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        cached[0].extension().is_some_and(|e| e == "cwasm"),
        "{cached:?}"
    );
    let before = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    let out = s
        .cairn_cmd(&["backup", src.to_str().unwrap()])
        .env("CAIRN_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let after = std::fs::metadata(&cached[0]).unwrap().modified().unwrap();
    assert_eq!(
        before, after,
        "the second run must load the cached component, not recompile it"
    );
}
