//! The leader's backup schedule (`backup.full_every_hours`, `backup.incr_every_hours`):
//! once a minute, in a task of its own, it makes a missing stanza and starts a due backup,
//! on a streaming standby when one takes it, else on the primary.

use crate::backup::{Jobs, Refused};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{MemberState, MemberStatus, Role};
use pgbaton_pg::backrest::{BackRest, BackupType};
use pgbaton_store::now_ms;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// How often the leader looks at the repository (stanza there, a scheduled backup due).
const LOOK_EVERY: Duration = Duration::from_secs(60);
/// A due backup that could not start looks again after this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// After a failed backup, the schedule waits this long before it tries again (each try
/// forces a checkpoint and a WAL switch).
const BACKOFF: Duration = Duration::from_secs(3600);

/// The leader's look at the repository, once a minute, in a task of its own (a slow
/// repository must never hold up the loop that renews the lease): the stanza is made when
/// it is missing (`[backup]` added to a running cluster), and a scheduled backup
/// (`backup.full_every_hours`, `backup.incr_every_hours`) is started when due. A scheduled
/// backup is asked of a streaming standby's agent first (`POST /backup`: only that agent
/// knows whether it reaches the primary's files), as CloudNativePG's `prefer-standby`; the
/// leader's agent takes it from the primary when none can. A backup asked of a standby is
/// followed through that agent's `GET /backup`: while it runs the schedule waits; when it
/// ended and the backup is still due (it failed, or the standby is gone), the primary takes
/// it. Expiry is pgBackRest's, after each backup (`repo1-retention-full`).
#[derive(Default)]
pub struct Schedule {
    /// When the next look is due; `None`: now.
    next: Arc<Mutex<Option<std::time::Instant>>>,
    looking: Arc<std::sync::atomic::AtomicBool>,
    asked: Arc<Mutex<Asked>>,
}

/// What the schedule remembers of its asking standbys (forgotten once nothing is due).
#[derive(Default)]
struct Asked {
    /// The standby that accepted the due backup: its name and API URL.
    standby: Option<(String, String)>,
    /// Since when the due backup waits for a standby on its way to streaming.
    waiting_since: Option<std::time::Instant>,
}

/// How long a due backup waits for a standby that is on its way to streaming (a cluster
/// just made, a standby restarting) before the primary takes it.
const WAIT_FOR_STANDBY: Duration = Duration::from_secs(600);

/// How the leader's agent asks another member's agent (`POST /backup`).
#[derive(Clone)]
pub struct Peers {
    pub http: reqwest::Client,
    pub auth: crate::api::Auth,
}

impl Schedule {
    pub fn tick(
        &self,
        cfg: &Arc<NodeConfig>,
        jobs: &Jobs,
        me: Option<MemberState>,
        view: &ClusterView,
        peers: Peers,
    ) {
        use std::sync::atomic::Ordering;
        if cfg.backup.is_none() || jobs.state().running.is_some() {
            return;
        }
        let now = std::time::Instant::now();
        if self
            .next
            .lock()
            .ok()
            .and_then(|n| *n)
            .is_some_and(|t| now < t)
            || self.looking.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (cfg, jobs, view) = (cfg.clone(), jobs.clone(), view.clone());
        let (next, looking) = (self.next.clone(), self.looking.clone());
        let asked = self.asked.clone();
        tokio::spawn(async move {
            let again = look(&cfg, &jobs, me.as_ref(), &view, (&peers, &asked)).await;
            if let Ok(mut n) = next.lock() {
                *n = Some(std::time::Instant::now() + again);
            }
            looking.store(false, Ordering::Release);
        });
    }
}

/// One look; when the next is due.
async fn look(
    cfg: &NodeConfig,
    jobs: &Jobs,
    me: Option<&MemberState>,
    view: &ClusterView,
    (peers, asked): (&Peers, &Mutex<Asked>),
) -> Duration {
    let (Some(br), Some(b)) = (BackRest::of(cfg), &cfg.backup) else {
        return LOOK_EVERY;
    };
    let info = match br.info().await {
        Ok(i) => i,
        Err(e) => {
            warn!("cannot read the pgBackRest repository: {e:#}");
            return LOOK_EVERY;
        }
    };
    // 1: missing stanza path, 3: missing stanza data (pgBackRest's info codes).
    if matches!(info.status_code, 1 | 3) {
        match br.stanza_create(&cfg.cluster).await {
            Ok(()) => info!(
                "pgBackRest stanza {} made in {}",
                br.stanza,
                br.repo.display()
            ),
            Err(e) => warn!("cannot make the pgBackRest stanza: {e:#}"),
        }
        return RETRY_AFTER;
    }
    if let Some(f) = jobs.state().last.filter(|f| !f.ok) {
        if now_ms().saturating_sub(f.finished_ms) < BACKOFF.as_millis() as u64 {
            return LOOK_EVERY;
        }
    }
    let Some(kind) = due(
        &info.backups,
        b.full_every_hours,
        b.incr_every_hours,
        now_ms() / 1000,
    ) else {
        if let Ok(mut a) = asked.lock() {
            *a = Asked::default();
        }
        return LOOK_EVERY;
    };
    let Ok(mut memory) = asked.lock().map(|mut a| std::mem::take(&mut *a)) else {
        return LOOK_EVERY;
    };
    let again = prefer_a_standby(cfg, view, peers, kind, &mut memory).await;
    if let Ok(mut a) = asked.lock() {
        *a = memory;
    }
    if let Some(again) = again {
        return again;
    }
    match jobs.start(cfg, me, Some(view), kind).await {
        Ok(_) | Err(Refused::Busy(_) | Refused::Locked(_)) => LOOK_EVERY,
        Err(Refused::NotHere(why)) => {
            // What this agent last published may be a loop old (a primary that just
            // started): look again soon.
            warn!("scheduled backup not started yet: {why}");
            RETRY_AFTER
        }
    }
}

/// A due backup on a standby: `Some(when to look again)` when one started it, or when the
/// schedule waits (the standby asked still runs it, another backup runs, a standby is on
/// its way to streaming: for at most `WAIT_FOR_STANDBY`); `None`: the primary takes it.
async fn prefer_a_standby(
    cfg: &NodeConfig,
    view: &ClusterView,
    peers: &Peers,
    kind: BackupType,
    memory: &mut Asked,
) -> Option<Duration> {
    if let Some((name, url)) = memory.standby.take() {
        if runs_a_backup(peers, &url).await {
            memory.standby = Some((name, url));
            return Some(LOOK_EVERY);
        }
        // It ended, and the backup is still due: it failed there (its agent's log and
        // `GET /backup` say why), or the standby is gone.
        warn!(
            "the scheduled {} backup asked of the standby {name} did not make it: taking it \
             from the primary",
            kind.as_str()
        );
        return None;
    }
    if memory.waiting_since.is_none() {
        info!("a scheduled {} backup is due", kind.as_str());
    }
    match ask_a_standby(cfg, view, peers, kind).await {
        Outcome::Started(name, url) => {
            info!(
                "scheduled {} backup started on the standby {name}",
                kind.as_str()
            );
            *memory = Asked {
                standby: Some((name, url)),
                waiting_since: None,
            };
            return Some(LOOK_EVERY);
        }
        Outcome::Busy => return Some(LOOK_EVERY),
        Outcome::Nobody => {}
    }
    let now = now_ms();
    let coming = view.members.iter().find(|m| {
        m.name != cfg.name
            && m.role != Role::Primary
            && !matches!(
                m.state,
                MemberStatus::Streaming | MemberStatus::Stopped | MemberStatus::Failed
            )
            && now.saturating_sub(m.seen()) <= pgbaton_core::ops::STALE_MS
    });
    let since = *memory
        .waiting_since
        .get_or_insert_with(std::time::Instant::now);
    match coming {
        Some(m) if since.elapsed() < WAIT_FOR_STANDBY => {
            if since.elapsed() < RETRY_AFTER {
                info!(
                    "scheduled backup: waiting up to {} s for {} ({}) to stream, to take it there",
                    WAIT_FOR_STANDBY.as_secs(),
                    m.name,
                    m.state
                );
            }
            Some(RETRY_AFTER)
        }
        _ => {
            memory.waiting_since = None;
            None
        }
    }
}

/// What asking the standbys came to.
enum Outcome {
    /// This one started it (name, API URL).
    Started(String, String),
    /// A backup of the stanza runs already (409).
    Busy,
    Nobody,
}

/// Whether the agent at `url` runs a backup now (`GET /backup`); `false` when it does not
/// answer.
async fn runs_a_backup(peers: &Peers, url: &str) -> bool {
    let r = peers
        .http
        .get(format!("{url}/backup"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    match r {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v["running"].is_object()),
        _ => false,
    }
}

/// Ask the streaming standbys' agents, one after the other, to take a backup. A refusal
/// (its host cannot reach the primary's files) or no answer moves on to the next; an
/// answer that a backup runs already ends the asking.
async fn ask_a_standby(
    cfg: &NodeConfig,
    view: &ClusterView,
    peers: &Peers,
    kind: BackupType,
) -> Outcome {
    let now = now_ms();
    let standbys = view.members.iter().filter(|m| {
        m.name != cfg.name
            && m.role == Role::Standby
            && m.state == MemberStatus::Streaming
            && now.saturating_sub(m.seen()) <= pgbaton_core::ops::STALE_MS
    });
    for m in standbys {
        let url = m.api_url.trim_end_matches('/').to_string();
        let mut req = peers
            .http
            .post(format!("{url}/backup"))
            .timeout(Duration::from_secs(10))
            .json(&serde_json::json!({ "type": kind.as_str() }));
        if let Some(t) = &peers.auth.token {
            req = req.bearer_auth(t);
        } else if let Some((u, p)) = &peers.auth.basic {
            req = req.basic_auth(u, Some(p));
        }
        match req.send().await {
            Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                return Outcome::Started(m.name.clone(), url)
            }
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => {
                info!("scheduled backup: a backup runs already ({} says)", m.name);
                return Outcome::Busy;
            }
            Ok(r) => {
                let status = r.status();
                let why = r.text().await.unwrap_or_default();
                info!("scheduled backup: not on {} ({status}: {why})", m.name);
            }
            Err(e) => info!("scheduled backup: not on {}: {e}", m.name),
        }
    }
    Outcome::Nobody
}

/// The backup the schedule asks for now, if any: a full one when there is none or the
/// newest full one is `full_h` hours old; else an incremental one when the newest backup
/// of any kind is `incr_h` hours old (0: never).
pub fn due(
    backups: &[pgbaton_pg::backrest::Backup],
    full_h: u32,
    incr_h: u32,
    now_s: u64,
) -> Option<BackupType> {
    let ok = || backups.iter().filter(|b| !b.error);
    let age = |stop: Option<u64>| stop.map(|s| now_s.saturating_sub(s));
    let full_age = age(ok().filter(|b| b.kind == "full").map(|b| b.stop).max());
    let any_age = age(ok().map(|b| b.stop).max());
    let older = |a: Option<u64>, h: u32| h > 0 && a.is_none_or(|a| a >= u64::from(h) * 3600);
    if older(full_age, full_h) {
        Some(BackupType::Full)
    } else if older(any_age, incr_h) {
        // pgBackRest takes a full one when there is none yet.
        Some(BackupType::Incr)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbaton_pg::backrest::Backup;

    fn b(kind: &str, stop: u64) -> Backup {
        Backup {
            label: String::new(),
            kind: kind.into(),
            start: stop,
            stop,
            size: 0,
            repo_size: 0,
            wal_start: String::new(),
            wal_stop: String::new(),
            lsn_start: String::new(),
            lsn_stop: String::new(),
            prior: None,
            error: false,
        }
    }

    #[test]
    fn what_the_schedule_asks_for() {
        let h = 3600;
        assert_eq!(due(&[], 24, 0, 100 * h), Some(BackupType::Full));
        assert_eq!(due(&[], 0, 1, 100 * h), Some(BackupType::Incr));
        assert_eq!(due(&[], 0, 0, 100 * h), None);
        let list = [b("full", 90 * h), b("incr", 99 * h)];
        assert_eq!(due(&list, 24, 1, 100 * h), Some(BackupType::Incr));
        assert_eq!(due(&list, 10, 1, 100 * h), Some(BackupType::Full));
        assert_eq!(due(&list, 24, 2, 100 * h), None);
        let mut failed = b("full", 99 * h);
        failed.error = true;
        assert_eq!(due(&[failed], 24, 0, 100 * h), Some(BackupType::Full));
    }
}
