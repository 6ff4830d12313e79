//! Pumping a file into the pipeline natively: its bytes are read here,
//! cut into chunks and queued for hashing, never copied through the
//! adapter's memory. Runs on a blocking thread: a read may stall (a hung
//! mount), and the pipeline's queue pushes back when the workers are busy.

use super::chunker::Chunker;
use super::{DataSender, PendingId};
use crate::repo::RepoError;
use std::io::Read;

/// Bytes read from a file per step.
const PUMP_BLOCK: usize = 1024 * 1024;

/// Why a pump stopped before the end of the file.
#[derive(Debug)]
pub enum PumpError {
    /// Reading the file failed: the entry cannot be stored whole.
    Read(std::io::Error),
    /// The pipeline stopped (a later stage failed): the backup cannot go on.
    Stopped(RepoError),
}

/// Read `file` to its end, after `head` (bytes already read from it), and
/// queue its chunks; each chunk's pending id is added to `pending`. Returns
/// the bytes read. Blocking.
pub fn pump(
    mut file: std::fs::File,
    head: Vec<u8>,
    chunker: &mut Chunker,
    sender: &DataSender,
    pending: &mut Vec<PendingId>,
) -> Result<u64, PumpError> {
    let mut total = 0u64;
    let mut buf = vec![0u8; PUMP_BLOCK];
    let mut first = Some(head);
    loop {
        let n = match first.take() {
            Some(head) if !head.is_empty() => {
                buf[..head.len()].copy_from_slice(&head);
                head.len()
            }
            _ => match file.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PumpError::Read(e)),
            },
        };
        total += n as u64;
        for chunk in chunker.push(&buf[..n]) {
            pending.push(sender.add_blocking(chunk).map_err(PumpError::Stopped)?);
        }
    }
}

/// Read from `file` into `buf` until the end or until `buf` holds `limit`
/// bytes; `true` at the end. A read that would block (a file that is not
/// ordinary content, like `/proc/kmsg`) is an error, never a wait.
pub fn read_head(
    file: &mut std::fs::File,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    while buf.len() < limit {
        let want = chunk.len().min(limit - buf.len());
        match file.read(&mut chunk[..want]) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::chunker::ChunkerParams;
    use crate::pipeline::{Pipeline, PipelineOptions};
    use crate::repo::pack::BlobType;
    use crate::testing::{memory_repo, noise, runtime};

    /// A file holding `data`, read from its start.
    fn file_with(data: &[u8]) -> std::fs::File {
        use std::io::{Seek, Write};
        let mut f = tempfile::tempfile().expect("a temporary file");
        f.write_all(data).expect("write it");
        f.rewind().expect("rewind it");
        f
    }

    #[test]
    fn a_pumped_file_reads_back_as_its_bytes_head_included() {
        runtime().block_on(async {
            let (_, repo) = memory_repo("pump").await;
            // Longer than a maximal chunk, so it is cut at least once
            // whatever the repository's (random) chunker key: 3 MiB went
            // uncut about once in 70 runs.
            let data = noise(21, crate::pipeline::chunker::MAX_SIZE + (1 << 20));
            let mut f = file_with(&data);
            let mut head = Vec::new();
            assert!(
                !read_head(&mut f, &mut head, 1000).unwrap(),
                "not at the end"
            );
            assert_eq!(head, data[..1000]);
            let pipeline = Pipeline::start(repo.clone(), PipelineOptions::default());
            let sender = pipeline.data_sender();
            let params = ChunkerParams::new(repo.config().chunker_polynomial.0);
            let (total, pending) = tokio::task::spawn_blocking(move || {
                let mut chunker = Chunker::new(params);
                let mut pending = Vec::new();
                let total = pump(f, head, &mut chunker, &sender, &mut pending).unwrap();
                if let Some(last) = chunker.finish() {
                    pending.push(sender.add_blocking(last).unwrap());
                }
                (total, pending)
            })
            .await
            .unwrap();
            assert_eq!(total, data.len() as u64);
            assert!(pending.len() > 1, "9 MiB is more than one chunk");
            let mut ids = Vec::new();
            for p in pending {
                ids.push(p.get().await.unwrap());
            }
            pipeline.finish().await.unwrap();
            repo.load_index().await.unwrap();
            let mut back = Vec::new();
            for id in ids {
                back.extend(repo.load_blob(&id, BlobType::Data).await.unwrap());
            }
            assert!(back == data, "the stored chunks are not the file");
        });
    }

    #[test]
    fn a_short_file_is_read_whole_by_its_head() {
        let mut f = file_with(b"small");
        let mut head = Vec::new();
        assert!(read_head(&mut f, &mut head, 1000).unwrap());
        assert_eq!(head, b"small");
    }
}
