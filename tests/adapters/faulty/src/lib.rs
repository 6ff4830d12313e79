//! A test adapter that misbehaves on request, to prove the host contains it:
//! `{"fault": "trap" | "panic" | "loop" | "oom" | "error" | "none" | "connect" |
//! "listen" | "orphan" | "pump" | "run" | "names" | "log", "address":
//! "ip:port", "path": P, "stat": Q, "program": X, "args": [...],
//! "message": M}`. Each fault comes after one entry was emitted, so a
//! snapshot would have content. `connect` opens a TCP
//! connection to `address` (through WASI sockets, which the host checks
//! against the job's grants) and says "hello" on it; `listen` tries to
//! listen on `address` and fails either way, saying whether the host
//! allowed it; `orphan` starts a
//! granted `sleep 30` and returns success without waiting for it; `pump`
//! does what the filesystem adapter does with a file, but looks at `stat`
//! (default `path`) and then pumps `path`: the race of a file swapped
//! between the two; `run` starts granted `program` with `args` and stores
//! its standard output as `/faulty/output`; `names` emits entries whose
//! names no file can have (a NUL byte) or that only some targets accept (a
//! 300-byte name), beside an ordinary one; `log` logs `message`; `panic`
//! panics (its message goes to standard error, then it traps).
//! Restore with `{"fault": "loop"}` never returns.

use cairn_sdk::{
    Adapter, BackupSummary, Error, Info, Metadata, RestoreSummary, VerifyReport, archive,
};
use std::io::Write;

struct Faulty;

#[derive(serde::Deserialize)]
struct Config {
    fault: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    stat: Option<String>,
    #[serde(default)]
    program: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    message: String,
}

impl Adapter for Faulty {
    type BackupConfig = Config;
    type RestoreConfig = serde_json::Value;
    type VerifyConfig = serde_json::Value;

    fn info() -> Info {
        Info::new("faulty", "0.0.0", "Misbehaves on request (tests only).")
    }

    fn backup(config: Config) -> Result<BackupSummary, Error> {
        // Emit something first, so a fault after it must not leave a snapshot.
        let mut w = archive::begin_stream("/faulty/data", &Metadata::with_mode(0o644))?;
        w.write_all(&vec![7u8; 100_000])?;
        w.finish()?;
        match config.fault.as_str() {
            "trap" => unreachable_trap(),
            // A Rust panic prints its message to standard error, then traps.
            "panic" => panic!("the faulty adapter panicked on request"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "error" => Err(Error::Other("the faulty adapter was asked to fail".into())),
            "connect" => {
                let mut stream = std::net::TcpStream::connect(&config.address)
                    .map_err(|e| Error::Other(format!("connecting to {}: {e}", config.address)))?;
                stream
                    .write_all(b"hello")
                    .map_err(|e| Error::Other(format!("writing to {}: {e}", config.address)))?;
                Ok(BackupSummary {
                    files: 1,
                    ..Default::default()
                })
            }
            "listen" => match std::net::TcpListener::bind(&config.address) {
                // Never waits for a connection: a test must not hang.
                Ok(_) => Err(Error::Other(format!(
                    "listening on {}: the host allowed it",
                    config.address
                ))),
                Err(e) => Err(Error::Other(format!(
                    "listening on {}: {e}",
                    config.address
                ))),
            },
            "orphan" => {
                // Start a granted `sleep` and return without waiting for it.
                let child = cairn_sdk::process::Command::new("sleep")
                    .arg("30")
                    .spawn()?;
                std::mem::forget(child);
                Ok(BackupSummary {
                    files: 1,
                    ..Default::default()
                })
            }
            "none" => Ok(BackupSummary {
                files: 1,
                ..Default::default()
            }),
            "pump" => {
                let looked = cairn_sdk::fs::stat(config.stat.as_deref().unwrap_or(&config.path))?;
                let mut w = archive::begin_file("/faulty/pumped", &looked.meta)?;
                match w.pump_file(&config.path) {
                    Ok(_) => w.finish().map(|_| ())?,
                    Err(Error::Io(reason)) | Err(Error::NotFound(reason)) => {
                        w.cancel();
                        archive::skip(&config.path, &reason);
                    }
                    Err(e) => return Err(e),
                }
                Ok(BackupSummary {
                    files: 1,
                    ..Default::default()
                })
            }
            "run" => {
                let mut w = archive::begin_stream("/faulty/output", &Metadata::with_mode(0o600))?;
                let mut child = cairn_sdk::process::Command::new(&config.program)
                    .args(config.args.iter().cloned())
                    .stdout(cairn_sdk::process::Stdio::Pipe)
                    .spawn()?;
                let pumped = child.pump_stdout(&mut w);
                let status = child.wait()?;
                pumped?;
                w.finish()?;
                status.check(&config.program)?;
                Ok(BackupSummary {
                    files: 1,
                    ..Default::default()
                })
            }
            "names" => {
                let dir = Metadata::with_mode(0o755);
                archive::add_directory("/n", &dir)?;
                for name in ["nul\0name".to_string(), "x".repeat(300), "ok".to_string()] {
                    let mut w =
                        archive::begin_stream(&format!("/n/{name}"), &Metadata::with_mode(0o644))?;
                    w.write_all(name.as_bytes())?;
                    w.finish()?;
                }
                Ok(BackupSummary {
                    files: 3,
                    ..Default::default()
                })
            }
            "log" => {
                cairn_sdk::log::warn(&config.message);
                Ok(BackupSummary {
                    files: 1,
                    ..Default::default()
                })
            }
            other => Err(Error::InvalidConfig(format!("unknown fault {other:?}"))),
        }
    }

    fn restore(config: serde_json::Value) -> Result<RestoreSummary, Error> {
        if config["fault"] == "loop" {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Ok(RestoreSummary::default())
    }

    fn verify(_: serde_json::Value) -> Result<VerifyReport, Error> {
        Ok(VerifyReport::default())
    }
}

fn unreachable_trap() -> ! {
    std::process::abort()
}

cairn_sdk::export_adapter!(Faulty);
