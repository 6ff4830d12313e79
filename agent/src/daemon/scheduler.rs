//! Firing the config's schedules: each target's next time, recomputed on
//! every reload, until the agent stops.

use super::Agent;
use crate::util::lock;
use chrono::{DateTime, Utc};
use std::sync::Arc;

impl Agent {
    /// Fire schedules until the agent stops; a reload recomputes them.
    pub async fn schedule(self: Arc<Self>) {
        let mut stopping = self.stopping.subscribe();
        self.scheduler_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
        loop {
            let loaded = self.loaded();
            let items = loaded.schedules();
            let mut next: Vec<Option<DateTime<Utc>>> = items
                .iter()
                .map(|(t, s)| s.next_after(Utc::now(), &t.describe()))
                .collect();
            loop {
                {
                    let mut nr = lock(&self.next_runs);
                    nr.clear();
                    for ((t, _), n) in items.iter().zip(&next) {
                        if let Some(n) = n {
                            nr.insert(t.describe(), *n);
                        }
                    }
                }
                let soonest = next
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (i, n)))
                    .min_by_key(|(_, n)| *n);
                let wait = async {
                    match soonest {
                        Some((_, at)) => {
                            let d = (at - Utc::now()).to_std().unwrap_or_default();
                            tokio::time::sleep(d).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = wait => {
                        let (i, at) = soonest.expect("a schedule fired");
                        let (target, sched) = &items[i];
                        let _ = self.trigger(target.clone(), "schedule");
                        next[i] = sched.next_after(at.max(Utc::now()), &target.describe());
                    }
                    _ = self.reloaded.notified() => break,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        }
    }
}
