//! A restore's files are written in the background, several at once;
//! here they are collected, and a failed one is removed so that nothing
//! looks restored that is not.

use super::*;

impl RestoreJob {
    /// Collect background writes that have finished.
    pub(super) async fn reap_writes(&mut self) {
        let done: Vec<String> = self
            .writes
            .iter()
            .filter(|(_, w)| w.handle.is_finished())
            .map(|(p, _)| p.clone())
            .collect();
        for path in done {
            if let Some(w) = self.writes.remove(&path) {
                self.settle(path, w).await;
            }
        }
    }

    pub(super) async fn settle(&mut self, path: String, w: PendingWrite) {
        drop(w.meta);
        let unfinished = w.unfinished;
        let result = match w.handle.await {
            Ok(r) => r,
            Err(e) => Err(WriteFailure::Entry(AdapterError::Other(format!(
                "{path}: the write task failed: {e}"
            )))),
        };
        match result {
            Ok(()) => {}
            Err(WriteFailure::Entry(e)) => self.failed_writes.push((path, Some(e), unfinished)),
            Err(WriteFailure::Fault(f)) => {
                // The file is incomplete: removed with the failed ones.
                self.failed_writes.push((path, None, unfinished));
                self.fault.get_or_insert(f);
            }
        }
    }
}

impl HostState {
    /// Wait for the background write of `path`, if any.
    pub(super) async fn settle_write(&mut self, path: &str) -> wasmtime::Result<()> {
        if let Job::Restore(job) = &mut self.job
            && let Some(w) = job.writes.remove(path)
        {
            job.settle(path.to_string(), w).await;
        }
        Ok(())
    }

    /// Finish every background write of a restore. Failed files are removed
    /// and their errors recorded as damage, so the job fails.
    pub(crate) async fn finish_writes(&mut self) {
        let Job::Restore(job) = &mut self.job else {
            return;
        };
        let paths: Vec<String> = job.writes.keys().cloned().collect();
        for path in paths {
            if let Some(w) = job.writes.remove(&path) {
                job.settle(path, w).await;
            }
        }
        let failed = std::mem::take(&mut job.failed_writes);
        for (_, err, unfinished) in failed {
            // Nothing may look restored that is not.
            write::remove_unfinished(unfinished);
            if let Job::Restore(job) = &mut self.job {
                match err {
                    Some(err) => job.damaged.push(meta::describe_error(&err)),
                    None => job.interrupted += 1,
                }
            }
        }
    }
}
