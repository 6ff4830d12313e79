//! S3 storage, tenants and residency, against one real Garage per region.

use crate::common::{Scratch, assert_same_tree, make_fixture, random_bytes, text};
use crate::garage::{Garage, write};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Garages by region, a scratch directory and a config file.
struct World {
    s: Scratch,
    garages: BTreeMap<String, Garage>,
    config: PathBuf,
}

fn bucket(region: &str) -> String {
    format!("bk-{region}")
}

fn env_name(region: &str, what: &str) -> String {
    format!("{what}_{}", region.to_uppercase().replace('-', "_"))
}

impl World {
    /// One Garage per region, each answering as that region.
    fn new(regions: &[&str]) -> World {
        let garages = regions
            .iter()
            .map(|r| (r.to_string(), Garage::start(r, &[&bucket(r)])))
            .collect();
        let s = Scratch::new();
        let config = s.path("cairn.toml");
        World { s, garages, config }
    }

    fn g(&self, region: &str) -> &Garage {
        &self.garages[region]
    }

    fn audit(&self) -> PathBuf {
        self.s.path("audit.jsonl")
    }

    /// The [regions] part of a config: every Garage under its own name,
    /// unless `declared` renames one (to declare a bucket in the wrong region).
    fn regions_toml(&self, declared: &BTreeMap<&str, &str>) -> String {
        let mut t = format!("audit-log = {:?}\n", self.audit());
        for region in self.garages.keys() {
            let name = declared.get(region.as_str()).copied().unwrap_or(region);
            t += &self.region_entry(name, region);
        }
        t
    }

    /// One [regions.NAME] table for the Garage of `region`; credentials
    /// come from variables named after NAME.
    fn region_entry(&self, name: &str, region: &str) -> String {
        format!(
            "[regions.{name}]\nendpoint = {:?}\nbucket = {:?}\npath-style = true\naccess-key-id-env = {:?}\nsecret-access-key-env = {:?}\nmax-attempts = 2\nrequest-timeout-secs = 20\nmultipart-threshold-mib = 5\npart-size-mib = 5\n",
            self.g(region).endpoint(),
            bucket(region),
            env_name(name, "KEY"),
            env_name(name, "SECRET"),
        )
    }

    fn password_file(&self, tenant: &str) -> String {
        write(
            &self.s.path(&format!("{tenant}.key")),
            &format!("password of {tenant}\n"),
        )
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::common::cairn_bin());
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("CAIRN_REPOSITORY")
            .env_remove("CAIRN_PASSWORD")
            .env_remove("CAIRN_PASSWORD_FILE")
            .env_remove("CAIRN_LOG")
            .env("CAIRN_CACHE_DIR", crate::common::cache_dir());
        for (region, g) in &self.garages {
            c.env(env_name(region, "KEY"), &g.key_id);
            c.env(env_name(region, "SECRET"), &g.secret);
        }
        // For a region configured without credentials: the standard AWS
        // chain, which finds these first (tests that use it say so).
        if let Some(g) = self.garages.get("us-east-1") {
            c.env("AWS_ACCESS_KEY_ID", &g.key_id)
                .env("AWS_SECRET_ACCESS_KEY", &g.secret)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_SESSION_TOKEN");
        }
        c
    }

    fn cairn(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run cairn")
    }

    fn cairn_ok(&self, args: &[&str]) -> String {
        let out = self.cairn(args);
        assert!(
            out.status.success(),
            "cairn {args:?}: {}\n{}",
            out.status,
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A source folder `src` in the scratch space holding these files.
    fn source(&self, files: &[(&str, &[u8])]) -> PathBuf {
        let src = self.s.path("src");
        std::fs::create_dir_all(&src).unwrap();
        for (name, data) in files {
            std::fs::write(src.join(name), data).unwrap();
        }
        src
    }

    /// Restore the tenant's latest snapshot into `target` (in the scratch
    /// folder) and compare it with `src` by `diff -r` and metadata.
    fn restore_same(&self, tenant: &str, target: &str, src: &Path) {
        let dir = self.s.path(target);
        self.cairn_ok(&[
            "restore",
            "--tenant",
            tenant,
            "latest",
            "--target",
            dir.to_str().unwrap(),
        ]);
        assert_same_tree(src, &restored(&dir, src));
    }

    /// Every key in a region's bucket.
    fn keys(&self, region: &str) -> BTreeSet<String> {
        self.g(region).keys(&bucket(region)).into_iter().collect()
    }

    /// Tenants owning objects in a region (the first path component).
    fn owners(&self, region: &str) -> BTreeSet<String> {
        self.keys(region)
            .iter()
            .map(|k| k.split('/').next().unwrap().to_string())
            .collect()
    }

    /// restic on a tenant's repository in one region.
    fn restic(&self, region: &str, tenant: &str, args: &[&str]) -> Output {
        let g = self.g(region);
        Command::new("restic")
            .arg("-r")
            .arg(format!("s3:{}/{}/{tenant}", g.endpoint(), bucket(region)))
            .args(["-o", &format!("s3.region={region}")])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &g.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &g.secret)
            .env("RESTIC_PASSWORD", format!("password of {tenant}"))
            .env("RESTIC_CACHE_DIR", self.s.path("restic-cache"))
            .output()
            .expect("run restic")
    }
}

fn tenant_toml(
    w: &World,
    name: &str,
    regime: &str,
    primary: &str,
    secondary: &str,
    extra: &str,
) -> String {
    format!(
        "[tenants.{name}]\nregime = {regime:?}\nprimary = {primary:?}\nsecondary = {secondary:?}\npassword-file = {:?}\n{extra}",
        w.password_file(name)
    )
}

fn job_toml(name: &str, tenant: &str, path: &Path) -> String {
    format!(
        "[jobs.{name}]\ntenant = {tenant:?}\npaths = [{:?}]\n",
        path.to_str().unwrap()
    )
}

const EU_US: &str = "[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n[regimes.us]\nregions = [\"us-east-1\", \"us-east-2\"]\n";

/// Audit records, parsed.
fn audit_records(w: &World) -> Vec<serde_json::Value> {
    std::fs::read_to_string(w.audit())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

#[test]
fn two_tenants_in_two_regimes_stay_in_their_pairs_and_restic_reads_them() {
    let w = World::new(&["eu-west-1", "eu-central-1", "us-east-1", "us-east-2"]);
    let acme_src = w.s.path("acme-src");
    make_fixture(&acme_src);
    let globex_src = w.s.path("globex-src");
    std::fs::create_dir_all(&globex_src).unwrap();
    std::fs::write(globex_src.join("ledger.bin"), random_bytes(3 << 20, 7)).unwrap();
    // Three ways to credentials: environment variables named in the config
    // (EU), a shared credentials file (us-east-2), the AWS chain (us-east-1).
    let creds = w.s.path("aws-credentials");
    let g2 = w.g("us-east-2");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n[use2]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            g2.key_id, g2.secret
        ),
    )
    .unwrap();
    let env_lines = |r: &str| {
        format!(
            "access-key-id-env = {:?}\nsecret-access-key-env = {:?}\n",
            env_name(r, "KEY"),
            env_name(r, "SECRET")
        )
    };
    let regions = w
        .regions_toml(&BTreeMap::new())
        .replace(
            &env_lines("us-east-2"),
            &format!("credentials-file = {creds:?}\nprofile = \"use2\"\n"),
        )
        .replace(&env_lines("us-east-1"), "");
    assert!(regions.contains("credentials-file") && !regions.contains("KEY_US_EAST_1"));
    w.write_config(&format!(
        "{regions}{EU_US}{}{}{}{}",
        tenant_toml(&w, "acme", "eu", "eu-west-1", "eu-central-1", ""),
        tenant_toml(&w, "globex", "us", "us-east-2", "us-east-1", ""),
        job_toml("acme-files", "acme", &acme_src),
        job_toml("globex-files", "globex", &globex_src),
    ));
    w.cairn_ok(&["init", "--tenant", "acme"]);
    w.cairn_ok(&["init", "--tenant", "globex"]);
    w.cairn_ok(&["backup", "--job", "acme-files"]);
    w.cairn_ok(&["backup", "--job", "globex-files"]);

    // Each tenant's objects are in both regions of its pair and nowhere else.
    for r in ["eu-west-1", "eu-central-1"] {
        assert_eq!(
            w.owners(r),
            BTreeSet::from(["acme".to_string()]),
            "owners in {r}"
        );
    }
    for r in ["us-east-1", "us-east-2"] {
        assert_eq!(
            w.owners(r),
            BTreeSet::from(["globex".to_string()]),
            "owners in {r}"
        );
    }
    assert_eq!(
        w.keys("eu-west-1"),
        w.keys("eu-central-1"),
        "the EU pair differs"
    );
    assert_eq!(
        w.keys("us-east-1"),
        w.keys("us-east-2"),
        "the US pair differs"
    );
    assert!(
        w.keys("eu-west-1")
            .iter()
            .any(|k| k.starts_with("acme/data/")),
        "no packs for acme"
    );

    // Every object written is in the audit log with its region, and every
    // record names a region of the tenant's pair and an object that exists.
    let records = audit_records(&w);
    let pair = |t: &str| match t {
        "acme" => ["eu-west-1", "eu-central-1"],
        _ => ["us-east-1", "us-east-2"],
    };
    let mut logged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        let (tenant, region, key) = (
            r["tenant"].as_str().unwrap(),
            r["region"].as_str().unwrap(),
            r["key"].as_str().unwrap(),
        );
        assert!(pair(tenant).contains(&region), "audit: {r}");
        assert_eq!(r["bucket"], bucket(region));
        if r["op"] == "put" {
            assert_eq!(r["sha256"].as_str().unwrap().len(), 64);
            logged.entry(region.into()).or_default().insert(key.into());
        } else {
            logged.entry(region.into()).or_default().remove(key);
        }
    }
    for region in ["eu-west-1", "eu-central-1", "us-east-1", "us-east-2"] {
        assert_eq!(
            logged[region],
            w.keys(region),
            "audit log vs listing of {region}"
        );
    }

    // The report proves it from the stores themselves.
    let report: serde_json::Value =
        serde_json::from_str(w.cairn_ok(&["residency", "report", "--json"]).trim()).unwrap();
    for t in report["tenants"].as_array().unwrap() {
        assert_eq!(t["violations"].as_array().unwrap().len(), 0, "{t}");
        assert_eq!(t["in_sync"], true, "{t}");
    }
    w.cairn_ok(&["residency", "verify"]);

    // Restore through Cairn, and through restic from the secondary.
    w.restore_same("acme", "restore-acme", &acme_src);
    let out = w.restic("eu-central-1", "acme", &["check", "--read-data"]);
    assert!(out.status.success(), "restic check: {}", text(&out));
    let rtarget = w.s.path("restic-acme");
    let out = w.restic(
        "eu-central-1",
        "acme",
        &["restore", "latest", "--target", rtarget.to_str().unwrap()],
    );
    assert!(out.status.success(), "restic restore: {}", text(&out));
    assert_same_tree(&acme_src, &restored(&rtarget, &acme_src));
    let snaps = String::from_utf8_lossy(&w.restic("us-east-1", "globex", &["snapshots"]).stdout)
        .into_owned();
    assert!(snaps.contains(globex_src.to_str().unwrap()), "{snaps}");

    // A tenant's repository is its own: acme's password does not open globex.
    let out = w.restic("us-east-1", "acme", &["snapshots"]);
    assert!(!out.status.success(), "acme has nothing in us-east-1");

    // Asking to read a tenant's data from a region outside its pair is
    // refused before any request, naming tenant and region.
    let before = w.keys("us-east-1");
    let out = w.cairn(&["repair", "--tenant", "acme", "--from", "us-east-1"]);
    assert!(!out.status.success());
    let err = crate::common::stderr(&out);
    assert!(err.contains("acme") && err.contains("us-east-1"), "{err}");
    assert_eq!(w.keys("us-east-1"), before);

    // Even at trace level, the SDK's signing traces and the secrets stay out.
    let out = w
        .cmd(&["backup", "--job", "acme-files", "-vvv"])
        .env(
            "CAIRN_LOG",
            "trace,aws_sigv4=trace,aws_smithy_runtime=trace,hyper=trace",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("TRACE") || all.contains("DEBUG"),
        "not verbose: {all}"
    );
    let leaked: Vec<&str> = all
        .lines()
        .filter(|l| {
            l.contains("aws_sigv4")
                || ((l.contains("TRACE") || l.contains("DEBUG"))
                    && ["aws_smithy", "aws_sdk", "hyper"]
                        .iter()
                        .any(|t| l.contains(t)))
        })
        .collect();
    assert!(leaked.is_empty(), "signing traces leaked: {leaked:#?}");
    for g in w.garages.values() {
        assert!(!all.contains(&g.secret), "a secret leaked");
    }

    // A plain -r s3: URL would bypass the policy: refused with --config.
    let g = w.g("us-east-1");
    let url = format!("s3:{}/{}/acme", g.endpoint(), bucket("us-east-1"));
    let out = w.cairn(&["-r", &url, "snapshots"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        crate::common::stderr(&out).contains("--tenant"),
        "{}",
        text(&out)
    );
    // Without a config it is a plain restic-style S3 repository.
    let g2 = w.g("us-east-2");
    let plain = format!("s3:{}/{}/plain", g2.endpoint(), bucket("us-east-2"));
    let run = |args: &[&str]| {
        let out = Command::new(crate::common::cairn_bin())
            .args(["-r", &plain])
            .args(args)
            .env("CAIRN_PASSWORD", "plain password")
            .env("AWS_ACCESS_KEY_ID", &g2.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &g2.secret)
            .env("AWS_REGION", "us-east-2")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("CAIRN_CACHE_DIR", crate::common::cache_dir())
            .env_remove("CAIRN_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "cairn {args:?}: {}", text(&out));
    };
    run(&["init"]);
    run(&["backup", globex_src.to_str().unwrap()]);
    run(&[
        "restore",
        "latest",
        "--target",
        w.s.path("plain-out").to_str().unwrap(),
    ]);
    crate::common::assert_same_tree(&globex_src, &restored(&w.s.path("plain-out"), &globex_src));

    // An object of acme's placed in us-east-1 behind Cairn's back is found
    // by the report, which then fails naming tenant and region.
    // 1,100 of them: more than one listing page (1,000 keys).
    g.put_many(
        &bucket("us-east-1"),
        (0..1100).map(|i| format!("acme/data/00/planted-{i}")),
    );
    let out = w.cairn(&["residency", "report", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let acme = report["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "acme")
        .unwrap();
    assert_eq!(acme["regions"]["us-east-1"]["objects"], 1100, "{acme}");
    assert_eq!(acme["violations"][0], "us-east-1", "{acme}");
    let out = w.cairn(&["residency", "report"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains("VIOLATION") && all.contains("tenant acme") && all.contains("us-east-1"),
        "{all}"
    );
}

#[test]
fn a_config_whose_pair_leaves_its_regime_writes_nothing() {
    let w = World::new(&["eu-west-1", "eu-central-1", "us-east-1"]);
    let src = w.source(&[("f", b"data")]);
    w.write_config(&format!(
        "{}[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n[regimes.us]\nregions = [\"us-east-1\"]\n{}{}",
        w.regions_toml(&BTreeMap::new()),
        tenant_toml(&w, "acme", "eu", "eu-west-1", "us-east-1", ""),
        job_toml("acme-files", "acme", &src),
    ));
    for args in [
        &["init", "--tenant", "acme"][..],
        &["backup", "--job", "acme-files"],
        &["snapshots", "--tenant", "acme"],
        &["replicate"],
        &["residency", "report"],
    ] {
        let out = w.cairn(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = crate::common::stderr(&out);
        assert!(
            err.contains("tenant acme") && err.contains("us-east-1"),
            "{args:?}: {err}"
        );
    }
    for r in ["eu-west-1", "eu-central-1", "us-east-1"] {
        assert!(w.keys(r).is_empty(), "{r} got objects");
    }
    assert!(
        !w.audit().exists(),
        "nothing was written, so nothing was logged"
    );
}

#[test]
fn a_bucket_declared_in_the_wrong_region_is_refused() {
    let w = World::new(&["eu-west-1", "eu-central-1", "us-east-1"]);
    let src = w.source(&[("f", &random_bytes(100_000, 3))]);
    let regime = "[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n";
    let tenant = |extra: &str| {
        format!(
            "{}{}",
            tenant_toml(&w, "acme", "eu", "eu-west-1", "eu-central-1", extra),
            job_toml("acme-files", "acme", &src)
        )
    };
    // A healthy pair first.
    let audit = format!("audit-log = {:?}\n", w.audit());
    let good = format!(
        "{audit}{}{}",
        w.region_entry("eu-west-1", "eu-west-1"),
        w.region_entry("eu-central-1", "eu-central-1")
    );
    w.write_config(&format!("{good}{regime}{}", tenant("")));
    w.cairn_ok(&["init", "--tenant", "acme"]);

    // Now "eu-central-1" points at the Garage that really is us-east-1.
    let wrong = format!(
        "{audit}{}{}",
        w.region_entry("eu-west-1", "eu-west-1"),
        w.region_entry("eu-central-1", "us-east-1")
    );
    let with_env = |args: &[&str]| {
        let mut c = w.cmd(args);
        let g = w.g("us-east-1");
        c.env(env_name("eu-central-1", "KEY"), &g.key_id)
            .env(env_name("eu-central-1", "SECRET"), &g.secret);
        c.output().unwrap()
    };
    w.write_config(&format!(
        "{wrong}{regime}{}",
        tenant("require-both = true\n")
    ));
    let out = with_env(&["residency", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("bucket bk-us-east-1 is in region us-east-1, declared in eu-central-1"),
        "{}",
        text(&out)
    );
    let out = with_env(&["backup", "--job", "acme-files"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = crate::common::stderr(&out);
    assert!(
        err.contains("eu-central-1") && err.contains("disabled") && err.contains("us-east-1"),
        "{err}"
    );

    // Without require-both the backup lands in the good region only, and
    // says so with its own exit code; the mis-declared bucket gets nothing.
    w.write_config(&format!("{wrong}{regime}{}", tenant("")));
    let out = with_env(&["backup", "--job", "acme-files"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        crate::common::stderr(&out).contains("eu-central-1"),
        "{}",
        text(&out)
    );
    assert!(
        w.keys("us-east-1").is_empty(),
        "the mis-declared bucket got data"
    );
    assert!(
        w.keys("eu-west-1")
            .iter()
            .any(|k| k.starts_with("acme/snapshots/"))
    );
    // The report checks bucket regions too: an acme object in the bucket
    // that is really in us-east-1 is outside the pair, whatever the config
    // calls that bucket.
    w.g("us-east-1")
        .put(&bucket("us-east-1"), "acme/data/00/stray", b"x".to_vec());
    let out = with_env(&["residency", "report"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("eu-central-1 (its bucket is really in us-east-1)"),
        "{}",
        text(&out)
    );

    // init refuses a pair with a disabled region: a repository is started
    // in both regions or in none.
    w.write_config(&format!(
        "{wrong}{regime}{}",
        tenant_toml(&w, "other", "eu", "eu-west-1", "eu-central-1", "")
    ));
    let out = with_env(&["init", "--tenant", "other"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        crate::common::stderr(&out).contains("both regions"),
        "{}",
        text(&out)
    );
    assert!(!w.keys("eu-west-1").iter().any(|k| k.starts_with("other/")));
}

/// Tenant acme in the EU pair, initialised, with a job backing up `files`
/// random 12 MiB files (several packs each); returns the source folder.
fn acme_in_the_eu_pair(w: &World, files: u64, seed: u64) -> PathBuf {
    let parts: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| (format!("part-{i}"), random_bytes(12 << 20, seed + i)))
        .collect();
    let named: Vec<(&str, &[u8])> = parts.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    let src = w.source(&named);
    w.write_config(&format!(
        "{}[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n{}{}",
        w.regions_toml(&BTreeMap::new()),
        tenant_toml(w, "acme", "eu", "eu-west-1", "eu-central-1", ""),
        job_toml("acme-files", "acme", &src),
    ));
    w.cairn_ok(&["init", "--tenant", "acme"]);
    src
}

#[test]
fn a_region_stopped_mid_backup_lags_and_replicate_catches_it_up() {
    let mut w = World::new(&["eu-west-1", "eu-central-1"]);
    let src = acme_in_the_eu_pair(&w, 6, 100);
    let before = audit_records(&w).len();

    let child = w
        .cmd(&["backup", "--job", "acme-files"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the secondary as soon as the backup has written to it (its lock).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wrote = audit_records(&w)[before..]
            .iter()
            .any(|r| r["region"] == "eu-central-1");
        if wrote {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never wrote to eu-central-1"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.garages.get_mut("eu-central-1").unwrap().stop();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let err = crate::common::stderr(&out);
    assert!(
        err.contains("eu-central-1") && err.contains("lagging"),
        "{err}"
    );

    // The primary alone restores it.
    w.restore_same("acme", "restore", &src);

    // With the secondary back, replicate copies exactly what it lacks.
    w.garages.get_mut("eu-central-1").unwrap().restart();
    let missing: Vec<_> = w
        .keys("eu-west-1")
        .difference(&w.keys("eu-central-1"))
        .cloned()
        .collect();
    assert!(missing.iter().any(|k| k.contains("/data/")), "{missing:?}");
    let out = w.cairn_ok(&["replicate", "--tenant", "acme", "--json"]);
    let copied: u64 = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["copied"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let missing_without_locks = missing.iter().filter(|k| !k.contains("/locks/")).count();
    assert_eq!(copied as usize, missing_without_locks, "{out}");
    let strip_locks = |s: BTreeSet<String>| -> BTreeSet<String> {
        s.into_iter().filter(|k| !k.contains("/locks/")).collect()
    };
    assert_eq!(
        strip_locks(w.keys("eu-west-1")),
        strip_locks(w.keys("eu-central-1"))
    );
    // The caught-up secondary is a whole repository on its own.
    let out = w.restic("eu-central-1", "acme", &["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));

    // Lag again, with new data; this time the next backup itself (no
    // replicate) copies across what the secondary lacks before it records
    // its snapshot.
    std::fs::write(src.join("later"), random_bytes(20 << 20, 999)).unwrap();
    w.garages.get_mut("eu-central-1").unwrap().stop();
    let out = w.cairn(&["backup", "--job", "acme-files"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    w.garages.get_mut("eu-central-1").unwrap().restart();
    assert_ne!(
        strip_locks(w.keys("eu-west-1")),
        strip_locks(w.keys("eu-central-1"))
    );
    w.cairn_ok(&["backup", "--job", "acme-files"]);
    assert_eq!(
        strip_locks(w.keys("eu-west-1")),
        strip_locks(w.keys("eu-central-1")),
        "the backup did not even out the pair"
    );
    let out = w.restic("eu-central-1", "acme", &["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_damaged_primary_object_is_healed_and_repaired_and_shred_is_per_tenant() {
    let w = World::new(&["eu-west-1", "eu-central-1", "us-east-1", "us-east-2"]);
    let src = w.source(&[
        ("big", &random_bytes(8 << 20, 11)),
        ("small", b"small file"),
    ]);
    w.write_config(&format!(
        "{}{EU_US}{}{}{}{}",
        w.regions_toml(&BTreeMap::new()),
        tenant_toml(&w, "acme", "eu", "eu-west-1", "eu-central-1", ""),
        tenant_toml(&w, "globex", "us", "us-east-1", "us-east-2", ""),
        job_toml("acme-files", "acme", &src),
        job_toml("globex-files", "globex", &src),
    ));
    for t in ["acme", "globex"] {
        w.cairn_ok(&["init", "--tenant", t]);
        w.cairn_ok(&["backup", "--job", &format!("{t}-files")]);
    }

    // Flip bytes in the middle of acme's largest pack in the primary.
    let primary = w.g("eu-west-1");
    let pack = w
        .keys("eu-west-1")
        .into_iter()
        .filter(|k| k.starts_with("acme/data/"))
        .max_by_key(|k| primary.get(&bucket("eu-west-1"), k).len())
        .unwrap();
    let mut data = primary.get(&bucket("eu-west-1"), &pack);
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 64] {
        *b ^= 0xff;
    }
    primary.put(&bucket("eu-west-1"), &pack, data);
    // And the config, the one file not named by its hash.
    let mut config = primary.get(&bucket("eu-west-1"), "acme/config");
    let last = config.len() - 1;
    config[last] ^= 1;
    primary.put(&bucket("eu-west-1"), "acme/config", config);

    let target = w.s.path("restore");
    let out = w.cairn(&[
        "restore",
        "--tenant",
        "acme",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let err = crate::common::stderr(&out);
    assert!(err.contains("healed") && err.contains(&pack), "{err}");
    assert!(err.contains("healed acme/config"), "{err}");
    assert_same_tree(&src, &restored(&target, &src));

    let out = w.cairn(&["check", "--tenant", "acme", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        crate::common::stderr(&out).contains("healed"),
        "{}",
        text(&out)
    );

    let out = w.cairn_ok(&[
        "repair",
        "--tenant",
        "acme",
        "--from",
        "secondary",
        "--json",
    ]);
    let v = crate::common::last_json(&out);
    assert_eq!(v["repaired"], 2, "the pack and the config: {out}");
    let fixed = primary.get(&bucket("eu-west-1"), &pack);
    let name = pack.rsplit('/').next().unwrap();
    assert_eq!(
        hex_sha256(&fixed),
        name,
        "the primary's copy is whole again"
    );

    // Shred acme: its restore fails from now on, globex is untouched.
    let out = w.cairn(&["tenant", "shred", "acme"]);
    assert!(
        !out.status.success(),
        "shred without confirmation must refuse"
    );
    assert!(
        w.keys("eu-west-1")
            .iter()
            .any(|k| k.starts_with("acme/keys/"))
    );
    w.cairn_ok(&["tenant", "shred", "acme", "--confirm", "acme"]);
    for r in ["eu-west-1", "eu-central-1"] {
        assert!(
            !w.keys(r).iter().any(|k| k.starts_with("acme/keys/")),
            "{r} still has keys"
        );
    }
    let t2 = w.s.path("after-shred");
    let out = w.cairn(&[
        "restore",
        "--tenant",
        "acme",
        "latest",
        "--target",
        t2.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        crate::common::stderr(&out).contains("shredded"),
        "{}",
        text(&out)
    );
    let out = w.cairn(&["replicate", "--tenant", "acme"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "replicate must not revive a shredded tenant"
    );
    let out = w.restic("eu-central-1", "acme", &["snapshots"]);
    assert!(!out.status.success(), "restic opened a shredded repository");
    w.restore_same("globex", "globex", &src);
    let deletes = audit_records(&w)
        .into_iter()
        .filter(|r| r["op"] == "delete" && r["key"].as_str().unwrap().starts_with("acme/keys/"))
        .count();
    assert_eq!(deletes, 2, "one key deleted in each region");
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[test]
fn bad_storage_input_is_named_after_bounded_retries_and_secrets_stay_hidden() {
    let w = World::new(&["eu-west-1", "eu-central-1"]);
    let good = w.regions_toml(&BTreeMap::new());
    let regime = "[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n";
    let tenant = tenant_toml(
        &w,
        "acme",
        "eu",
        "eu-west-1",
        "eu-central-1",
        "require-both = true\n",
    );
    let secret = w.g("eu-west-1").secret.clone();
    let cases: [(&str, String, &str); 3] = [
        (
            "unreachable endpoint",
            good.replace(&w.g("eu-west-1").endpoint(), "http://127.0.0.1:9"),
            "cannot reach http://127.0.0.1:9",
        ),
        (
            "missing bucket",
            good.replace("\"bk-eu-west-1\"", "\"no-such-bucket\""),
            "bucket no-such-bucket does not exist",
        ),
        ("wrong credentials", good.clone(), "check the credentials"),
    ];
    for (what, regions, expect) in cases {
        w.write_config(&format!("{regions}{regime}{tenant}"));
        let mut cmd = w.cmd(&["init", "--tenant", "acme"]);
        if what == "wrong credentials" {
            cmd.env(
                env_name("eu-west-1", "SECRET"),
                "wrong-secret-0123456789abcdef",
            );
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {all}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: retries are not bounded"
        );
        assert!(
            all.contains("eu-west-1") && all.contains(expect),
            "{what}: {all}"
        );
        assert!(!all.contains(&secret), "{what}: the secret leaked: {all}");
        assert!(
            !all.contains("wrong-secret-0123456789abcdef"),
            "{what}: the secret leaked"
        );
        for r in ["eu-west-1", "eu-central-1"] {
            assert!(w.keys(r).is_empty(), "{what}: {r} got objects");
        }
    }
}

#[test]
fn an_interrupted_backup_does_not_upload_its_packs_again() {
    let w = World::new(&["eu-west-1", "eu-central-1"]);
    let src = acme_in_the_eu_pair(&w, 8, 200);
    let data_puts = |region: &str| -> Vec<String> {
        audit_records(&w)
            .into_iter()
            .filter(|r| r["op"] == "put" && r["region"] == region)
            .map(|r| r["key"].as_str().unwrap().to_string())
            .filter(|k| k.contains("/data/"))
            .collect()
    };
    let mut child = w
        .cmd(&["backup", "--job", "acme-files"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while data_puts("eu-west-1").len() < 2 {
        assert!(Instant::now() < deadline, "no packs uploaded");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let uploaded_before = data_puts("eu-west-1");
    assert!(
        !w.keys("eu-west-1")
            .iter()
            .any(|k| k.contains("/snapshots/")),
        "a killed backup recorded a snapshot"
    );

    let out = w.cairn_ok(&["backup", "--job", "acme-files", "--json"]);
    let summary = crate::common::last_json(&out);
    assert!(
        summary["packs_adopted"].as_u64().unwrap() >= uploaded_before.len() as u64,
        "{summary}"
    );
    for region in ["eu-west-1", "eu-central-1"] {
        let puts = data_puts(region);
        let unique: BTreeSet<_> = puts.iter().collect();
        assert_eq!(
            unique.len(),
            puts.len(),
            "a pack was uploaded twice to {region}"
        );
        // The data is random: had the first run's packs been uploaded again,
        // more than the source's size would have gone up.
        let bytes: u64 = audit_records(&w)
            .iter()
            .filter(|r| r["op"] == "put" && r["region"] == region)
            .filter(|r| r["key"].as_str().unwrap().contains("/data/"))
            .map(|r| r["size"].as_u64().unwrap())
            .sum();
        let source = 8 * (12u64 << 20);
        assert!(
            bytes < source + (2 << 20),
            "{region}: {bytes} bytes of packs uploaded for {source} bytes of data"
        );
    }
    assert_eq!(
        w.keys("eu-west-1")
            .iter()
            .filter(|k| !k.contains("/locks/"))
            .count(),
        w.keys("eu-central-1")
            .iter()
            .filter(|k| !k.contains("/locks/"))
            .count()
    );
    w.restore_same("acme", "restore", &src);
    let out = w.restic("eu-central-1", "acme", &["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn throttling_is_retried_and_the_retries_are_bounded() {
    let w = World::new(&["eu-west-1", "eu-central-1"]);
    let proxy = crate::garage::ThrottlingProxy::start(w.g("eu-west-1").s3_port, 3);
    let src = w.source(&[("f", &random_bytes(1 << 20, 9))]);
    let regions = w
        .regions_toml(&BTreeMap::new())
        .replace(
            &w.g("eu-west-1").endpoint(),
            &format!("http://127.0.0.1:{}", proxy.port),
        )
        .replace("max-attempts = 2", "max-attempts = 4");
    w.write_config(&format!(
        "{regions}[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n{}{}",
        tenant_toml(
            &w,
            "acme",
            "eu",
            "eu-west-1",
            "eu-central-1",
            "require-both = true\n"
        ),
        job_toml("acme-files", "acme", &src),
    ));
    // Three 503 SlowDown replies are absorbed by the retries.
    w.cairn_ok(&["init", "--tenant", "acme"]);
    w.cairn_ok(&["backup", "--job", "acme-files"]);
    assert_eq!(proxy.throttled(), 3);
    assert!(
        w.keys("eu-west-1")
            .iter()
            .any(|k| k.contains("/snapshots/"))
    );

    // A region that keeps throttling is given up on after max-attempts per
    // request, with an error naming region and bucket.
    proxy.throttle_all();
    let before = proxy.throttled();
    let started = Instant::now();
    let out = w
        .cmd(&["backup", "--job", "acme-files"])
        .env(cairn::ops::protocol::CHILD_ENV, "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = crate::common::stderr(&out);
    assert!(
        err.contains("eu-west-1") && err.contains("bk-eu-west-1") && err.contains("SlowDown"),
        "{err}"
    );
    // The retries are counted for the agent's metrics, also when the
    // command fails (in the end message its commands send last).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let Ok(cairn::ops::protocol::Message::End(end)) = cairn::ops::protocol::decode(last) else {
        panic!("the last line is no end message: {stdout}");
    };
    assert_eq!(end.exit, cairn::ops::protocol::Exit::Failed, "{stdout}");
    assert!(end.storage_retries >= 3, "{end:?}");
    let attempts = proxy.throttled() - before;
    assert!(
        (4..=8).contains(&attempts),
        "{attempts} throttled attempts: retries are not bounded by max-attempts"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// How many pack files a region holds.
fn data_objects(w: &World, region: &str) -> usize {
    w.keys(region)
        .iter()
        .filter(|k| k.contains("/data/"))
        .count()
}

#[test]
fn forget_and_prune_on_a_pair_need_both_regions_and_leave_both_whole() {
    let mut w = World::new(&["eu-west-1", "eu-central-1"]);
    let src = acme_in_the_eu_pair(&w, 2, 300);
    w.cairn_ok(&["backup", "--job", "acme-files"]);
    // The second backup drops one 12 MiB file and adds another.
    std::fs::remove_file(src.join("part-0")).unwrap();
    std::fs::write(src.join("part-2"), random_bytes(12 << 20, 302)).unwrap();
    w.cairn_ok(&["backup", "--job", "acme-files"]);
    let packs_before = data_objects(&w, "eu-west-1");

    // With a region down, neither forget nor prune removes anything.
    w.garages.get_mut("eu-central-1").unwrap().stop();
    for args in [
        &["forget", "--tenant", "acme", "--keep-last", "1"][..],
        &["prune", "--tenant", "acme"][..],
    ] {
        let out = w.cairn(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        let err = crate::common::stderr(&out);
        assert!(
            err.contains("eu-central-1") && err.contains("both regions"),
            "{args:?}: {err}"
        );
    }
    w.garages.get_mut("eu-central-1").unwrap().restart();
    assert_eq!(data_objects(&w, "eu-west-1"), packs_before);

    // Both up: the first snapshot and its data go from both regions alike.
    w.cairn_ok(&["forget", "--tenant", "acme", "--keep-last", "1", "--prune"]);
    let strip_locks = |s: BTreeSet<String>| -> BTreeSet<String> {
        s.into_iter().filter(|k| !k.contains("/locks/")).collect()
    };
    assert_eq!(
        strip_locks(w.keys("eu-west-1")),
        strip_locks(w.keys("eu-central-1"))
    );
    assert!(
        data_objects(&w, "eu-west-1") < packs_before,
        "no pack was removed"
    );
    for region in ["eu-west-1", "eu-central-1"] {
        let out = w.restic(region, "acme", &["check", "--read-data"]);
        assert!(out.status.success(), "{region}: {}", text(&out));
    }
    w.restore_same("acme", "after-prune", &src);
}

#[test]
fn a_wal_stream_on_a_region_pair_lands_in_both_regions_and_recovers_with_the_primary_down() {
    use crate::pitr::{
        Cluster, Recovered, cairn_for_postgres, stop_stream, stream_job, stream_programs,
        wait_caught_up,
    };
    use std::os::unix::fs::PermissionsExt;
    let mut w = World::new(&["eu-west-1", "eu-central-1"]);
    std::fs::set_permissions(w.s.path(""), std::fs::Permissions::from_mode(0o711)).unwrap();
    let source = Cluster::create(&w.s, "source", 5448);
    source.create_markers();
    let insert = |n: usize| {
        source.insert_markers(n);
    };
    w.write_config(&format!(
        "{}[agent]\nstate-dir = {:?}\n[regimes.eu]\nregions = [\"eu-west-1\", \"eu-central-1\"]\n{}{}wal = {{ flush-secs = 1 }}\n",
        w.regions_toml(&BTreeMap::new()),
        w.s.path("state"),
        tenant_toml(&w, "acme", "eu", "eu-west-1", "eu-central-1", ""),
        stream_job(5448, &stream_programs()),
    ));
    w.cairn_ok(&["init", "--tenant", "acme"]);
    let stream = w
        .cmd(&["wal-stream", "--job", "pg"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    source.wait_slot(true);
    insert(10);
    w.cairn_ok(&["backup", "--job", "pg"]);
    insert(10);
    source.sql("postgres", "SELECT pg_switch_wal()");
    insert(5);
    wait_caught_up("cairn_pg", |q| source.sql("postgres", q));
    stop_stream(stream);

    // Every window is in both regions, and nothing outside the pair.
    let strip_locks = |s: BTreeSet<String>| -> BTreeSet<String> {
        s.into_iter().filter(|k| !k.contains("/locks/")).collect()
    };
    assert_eq!(
        strip_locks(w.keys("eu-west-1")),
        strip_locks(w.keys("eu-central-1"))
    );
    w.cairn_ok(&["residency", "report"]);
    for region in ["eu-west-1", "eu-central-1"] {
        let out = w.restic(
            region,
            "acme",
            &["snapshots", "--json", "--tag", "cairn-wal"],
        );
        assert!(out.status.success(), "{}", text(&out));
        let windows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert!(!windows.is_empty(), "{region}: no WAL window");
        let out = w.restic(region, "acme", &["check", "--read-data"]);
        assert!(out.status.success(), "{region}: {}", text(&out));
    }

    // The primary region down: the base backup and the WAL come from the
    // secondary, and the copy holds every row.
    let cairn = cairn_for_postgres(&w.s.path(""));
    w.garages.get_mut("eu-west-1").unwrap().stop();
    let template = w.cmd(&[]);
    let mut c = Command::new(&cairn);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let data = w.s.path("restored");
    let out = c
        .arg("--config")
        .arg(&w.config)
        .args([
            "--json",
            "--no-lock",
            "restore",
            "--job",
            "pg",
            "--until",
            "latest",
            "--start",
            "--target",
        ])
        .arg(&data)
        .output()
        .unwrap();
    w.garages.get_mut("eu-west-1").unwrap().restart();
    assert!(out.status.success(), "{}", text(&out));
    let r = crate::common::last_json(&String::from_utf8_lossy(&out.stdout));
    let server = Recovered {
        data,
        sockets: PathBuf::from(r["socket_dir"].as_str().unwrap()),
        port: r["port"].as_u64().unwrap() as u16,
    };
    assert_eq!(
        server
            .query("postgres", "SELECT count(*) || '|' || max(id) FROM marker")
            .trim(),
        "25|25",
        "{r}"
    );
}
