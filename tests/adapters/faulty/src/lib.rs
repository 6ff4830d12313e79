//! A test adapter that misbehaves on request, to prove the host contains it:
//! `{"fault": "trap" | "loop" | "oom" | "error" | "none" | "connect" |
//! "listen" | "orphan", "address": "ip:port"}`. Each fault comes after one entry was
//! emitted, so a snapshot would have content. `connect` opens a TCP
//! connection to `address` (through WASI sockets, which the host checks
//! against the job's grants) and says "hello" on it; `listen` tries to
//! listen on `address` and fails either way, saying whether the host
//! allowed it; `orphan` starts a
//! granted `sleep 30` and returns success without waiting for it.

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
            other => Err(Error::InvalidConfig(format!("unknown fault {other:?}"))),
        }
    }

    fn restore(_: serde_json::Value) -> Result<RestoreSummary, Error> {
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
