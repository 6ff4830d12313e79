//! Adds index files listing BLOBS made-up data blobs to an existing local
//! repository, so `benches/compare.sh` can measure what an index of
//! millions of blobs costs in memory, for Cairn and for restic, without
//! backing up millions of chunks first. The packs named do not exist: the
//! repository is for loading the index (a backup of a small file loads it
//! whole), not for restoring or checking.
//!
//!   CAIRN_PASSWORD=… cargo run --release --example synthetic_index -- REPO BLOBS

use cairn::repo::index::{IndexBlob, IndexPack};
use cairn::repo::pack::BlobType;
use cairn::repo::{Id, Repository};
use cairn::storage::local::LocalBackend;
use rand::RngCore;
use std::sync::Arc;

/// Blobs per made-up pack: 16 MiB packs of 32 KiB chunks.
const BLOBS_PER_PACK: usize = 512;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(repo), Some(blobs)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: synthetic_index REPO BLOBS");
    };
    let blobs: usize = blobs.parse()?;
    let password = std::env::var("CAIRN_PASSWORD")?;
    let repo = Repository::open(Arc::new(LocalBackend::new(repo)), &password).await?;
    let mut rng = rand::thread_rng();
    let mut id = || {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Id(b)
    };
    let mut packs = Vec::new();
    let mut left = blobs;
    while left > 0 {
        let n = left.min(BLOBS_PER_PACK);
        left -= n;
        let pack = id();
        let entries = (0..n)
            .map(|i| IndexBlob {
                id: id(),
                kind: BlobType::Data,
                offset: (i * 32 * 1024) as u32,
                length: 20 * 1024,
                uncompressed_length: Some(32 * 1024),
            })
            .collect();
        packs.push(IndexPack {
            id: pack,
            blobs: entries,
        });
    }
    let files = repo.save_index(packs).await?;
    println!("{blobs} blobs in {files} index files");
    Ok(())
}
