//! What the agent publishes about the WAL archive: its archiver's backlog and failures
//! (every loop; cheap), and on the leader what a periodic `archive check` found missing
//! (an archive directory: in the loop, bounded; pgBackRest's repository: in a task of its
//! own, as it runs pgBackRest, whose answer the next loops publish).

use pgbaton_core::config::NodeConfig;
use pgbaton_core::model::ArchiveStatus;
use pgbaton_pg::sql;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// How often the leader checks the archive for holes.
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// A check that takes longer is given up (the archive is on slow or stuck storage).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// When the leader last checked, and what was missing (segments, history files).
type Checked = (Instant, Option<u64>, Vec<u32>);

#[derive(Default)]
struct RepoCheck {
    running: bool,
    last: Option<Checked>,
}

#[derive(Default)]
pub struct ArchiveWatch {
    last_check: Option<Checked>,
    /// The repository's check, filled in by its task.
    repo_check: Arc<Mutex<RepoCheck>>,
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
        let due = |c: &Option<Checked>| {
            c.as_ref()
                .is_none_or(|(at, _, _)| at.elapsed() >= CHECK_EVERY)
        };
        match (dir, pgbaton_pg::backrest::BackRest::of(cfg)) {
            (Some(dir), _) if leading_primary => {
                if due(&self.last_check) {
                    self.last_check = Some(check(dir).await);
                }
            }
            (None, Some(br)) if leading_primary => {
                self.last_check = self.check_repo(br, due);
            }
            _ => {
                self.last_check = None;
                if let Ok(mut r) = self.repo_check.lock() {
                    r.last = None;
                }
            }
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

impl ArchiveWatch {
    /// The repository's last check; a new one started in a task when due.
    fn check_repo(
        &self,
        br: pgbaton_pg::backrest::BackRest,
        due: impl Fn(&Option<Checked>) -> bool,
    ) -> Option<Checked> {
        let Ok(mut state) = self.repo_check.lock() else {
            return None;
        };
        if state.running || !due(&state.last) {
            return state.last.clone();
        }
        state.running = true;
        let shared = self.repo_check.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(REPO_CHECK_TIMEOUT, br.archive_check(16 << 20)).await;
            let checked = match r {
                Ok(Ok(c)) => {
                    if !c.whole() {
                        warn!(
                            "the pgBackRest archive of stanza {} has holes: {} segment(s) missing, \
                             history of timeline(s) {:?} missing (pgbaton archive check --repo {} \
                             --stanza {})",
                            br.stanza,
                            c.missing(),
                            c.missing_history,
                            br.repo.display(),
                            br.stanza
                        );
                    }
                    (Instant::now(), Some(c.missing()), c.missing_history)
                }
                Ok(Err(e)) => {
                    warn!("checking the pgBackRest archive: {e:#}");
                    (Instant::now(), None, vec![])
                }
                Err(_) => {
                    warn!("checking the pgBackRest archive took over {REPO_CHECK_TIMEOUT:?}: given up");
                    (Instant::now(), None, vec![])
                }
            };
            if let Ok(mut s) = shared.lock() {
                *s = RepoCheck {
                    running: false,
                    last: Some(checked),
                };
            }
        });
        state.last.clone()
    }
}

/// The repository's check runs pgBackRest three times (info, repo-ls, repo-get).
const REPO_CHECK_TIMEOUT: Duration = Duration::from_secs(120);

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
