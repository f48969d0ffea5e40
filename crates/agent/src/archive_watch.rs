//! What the agent publishes about the WAL archive: its archiver's backlog and failures
//! (every loop; cheap), and on the leader what a periodic `archive check` found missing.

use pgbaton_core::config::NodeConfig;
use pgbaton_core::model::ArchiveStatus;
use pgbaton_pg::sql;
use std::time::{Duration, Instant};
use tracing::warn;

/// How often the leader checks the archive for holes.
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// A check that takes longer is given up (the archive is on slow or stuck storage).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ArchiveWatch {
    /// When the leader last checked, and what was missing (segments, history files).
    last_check: Option<(Instant, Option<u64>, Vec<u32>)>,
    pub status: Option<ArchiveStatus>,
}

impl ArchiveWatch {
    pub async fn refresh(
        &mut self,
        cfg: &NodeConfig,
        client: Option<&tokio_postgres::Client>,
        leading_primary: bool,
    ) {
        // With pgBackRest the archiver's backlog and failures are reported the same way;
        // the hole check reads an archive directory (pgBackRest's repository is its own).
        let dir = cfg.postgresql.archive_dir.clone();
        if dir.is_none() && cfg.backup.is_none() {
            self.status = None;
            return;
        }
        let (waiting, oldest_waiting_s) = pgbaton_pg::archive::waiting(&cfg.data_dir);
        let stats = match client {
            Some(c) => sql::archiver_stats(c).await.ok(),
            None => None,
        };
        match dir {
            Some(dir) if leading_primary => {
                let due = self
                    .last_check
                    .as_ref()
                    .is_none_or(|(at, _, _)| at.elapsed() >= CHECK_EVERY);
                if due {
                    self.last_check = Some(check(dir).await);
                }
            }
            _ => self.last_check = None,
        }
        let (failed_count, last_failed_wal, last_failed_age_s) = stats.unwrap_or_default();
        let (missing_segments, missing_history) = match &self.last_check {
            Some((_, m, h)) => (*m, h.clone()),
            None => (None, vec![]),
        };
        self.status = Some(ArchiveStatus {
            waiting,
            oldest_waiting_s,
            failed_count,
            last_failed_wal,
            last_failed_age_s,
            missing_segments,
            missing_history,
        });
    }
}

async fn check(dir: std::path::PathBuf) -> (Instant, Option<u64>, Vec<u32>) {
    let shown = dir.display().to_string();
    let run = tokio::task::spawn_blocking(move || pgbaton_pg::archive::check(&dir, None));
    match tokio::time::timeout(CHECK_TIMEOUT, run).await {
        Ok(Ok(Ok(c))) => {
            if !c.whole() {
                warn!(
                    "the WAL archive {shown} has holes: {} segment(s) missing, history of \
                     timeline(s) {:?} missing (pgbaton archive check --dir {shown})",
                    c.missing(),
                    c.missing_history
                );
            }
            (Instant::now(), Some(c.missing()), c.missing_history)
        }
        Ok(Ok(Err(e))) => {
            warn!("checking the WAL archive: {e:#}");
            (Instant::now(), None, vec![])
        }
        _ => {
            warn!("checking the WAL archive {shown} took over {CHECK_TIMEOUT:?}: given up");
            (Instant::now(), None, vec![])
        }
    }
}
