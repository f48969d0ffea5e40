//! The cluster as operators and scripts see it: `pgbaton list --json` and the agents'
//! `/cluster` endpoint serve this same model.

use crate::decide::ClusterView;
use crate::model::{Leader, MemberState, MemberStatus, Role};
use crate::sync::{SyncMode, SyncRole};
use serde::Serialize;

/// A member as `list` shows it: its own report plus what the primary knows of its slot.
#[derive(Serialize, Debug)]
pub struct MemberRow {
    pub name: String,
    pub role: Role,
    pub state: MemberStatus,
    pub leader: bool,
    pub host: String,
    pub port: u16,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
    /// Standby: bytes of WAL it has yet to replay to reach the primary's current LSN.
    pub lag_bytes: Option<u64>,
    pub upstream: Option<String>,
    /// Its replication slot on the primary, if the primary has it.
    pub slot: Option<String>,
    pub slot_active: Option<bool>,
    /// WAL the primary retains for that slot.
    pub slot_retained_bytes: Option<u64>,
    pub system_id: Option<String>,
    pub api_url: String,
    /// Seconds since the member's agent last reported.
    pub last_seen_s: u64,
    pub message: Option<String>,
    /// Its archiver's backlog and failures; on the leader, what the archive check found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::model::ArchiveStatus>,
    /// Standby: `sync` or `quorum` when commits wait for it and the store's record lists
    /// it (so it may take over without loss); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncRole>,
    /// Parameters whose new value waits for a restart of this member's PostgreSQL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
}

/// Synchronous replication as the cluster runs it.
#[derive(Serialize, Debug)]
pub struct SyncSummary {
    /// The leader's `replication.synchronous`.
    pub mode: SyncMode,
    /// The leader's `synchronous_standby_names` as PostgreSQL runs with it.
    pub standby_names: String,
    /// The store's record: who may take over, and how many of them a candidate must see.
    pub members: Vec<String>,
    pub quorum: u32,
    /// Configured, but commits wait for no standby (none eligible, not strict).
    pub degraded: bool,
    /// The record proves somebody: automatic failover can happen without loss.
    pub failover_possible: bool,
}

impl SyncSummary {
    /// One line for `list`.
    pub fn line(&self) -> String {
        let names = if self.standby_names.is_empty() {
            "none".to_string()
        } else {
            self.standby_names.clone()
        };
        let mut l = format!("synchronous {}: commits wait for {names}", self.mode);
        if self.degraded {
            l += "; DEGRADED to asynchronous (no eligible standby)";
        }
        if self.failover_possible {
            l += &format!("; may take over: {}", self.members.join(", "));
        } else {
            l += "; no standby may take over automatically until one is synchronous";
        }
        l
    }
}

/// A slot on the primary that belongs to no member.
#[derive(Serialize, Debug)]
pub struct OrphanSlot {
    pub name: String,
    pub active: bool,
    pub retained_bytes: Option<u64>,
    /// Named by pgbaton (`pgbaton_*`): the primary drops it after the grace period.
    /// Otherwise someone else made it: reported, never dropped.
    pub pgbaton_named: bool,
}

#[derive(Serialize, Debug)]
pub struct ClusterReport {
    pub cluster: String,
    pub leader: Option<String>,
    pub members: Vec<MemberRow>,
    pub orphan_slots: Vec<OrphanSlot>,
    /// The cluster is paused: no automatic action (set by the caller, from the store).
    pub paused: bool,
    /// Synchronous replication (absent when it is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SyncSummary>,
    /// Member records in the store this version cannot read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<crate::model::UnreadableRecord>,
    /// An operation scheduled for later (`--at`), not acted on yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<crate::model::Operation>,
    /// The version of the cluster's config record (0: none).
    pub config_version: u64,
}

/// The report of a cluster from the store's view, at wall-clock `now` (ms).
pub fn of_view(cluster: &str, view: &ClusterView, now: u64) -> ClusterReport {
    let mut r = report(cluster, view.leader.as_ref(), &view.members, now);
    r.paused = view.paused;
    r.unreadable = view.unreadable.clone();
    r.scheduled = view.op.clone().filter(|o| o.scheduled(now));
    r.config_version = view
        .config_text
        .as_deref()
        .and_then(|t| crate::cluster_config::ClusterConfig::parse(t).ok())
        .map_or(0, |c| c.version);
    // An unreadable member's slot is kept: not an orphan.
    let kept = view.member_slot_names();
    r.orphan_slots.retain(|s| !kept.contains(&s.name));
    for m in &mut r.members {
        m.sync = crate::sync::role_of(view, &m.name);
    }
    let leader_sync = view.leader_member().and_then(|l| l.synchronous.as_ref());
    r.synchronous = match (leader_sync, view.sync.as_ref()) {
        (Some(s), record) if s.mode != SyncMode::Off || record.is_some() => Some(SyncSummary {
            mode: s.mode,
            standby_names: s.standby_names.clone(),
            members: record.map(|r| r.members.clone()).unwrap_or_default(),
            quorum: record.map_or(0, |r| r.quorum),
            degraded: s.degraded(),
            failover_possible: record.is_some_and(|r| !r.is_blocked()),
        }),
        _ => None,
    };
    r
}

/// The report of a cluster from its lease and members, at wall-clock `now` (ms).
pub fn report(
    cluster: &str,
    leader: Option<&Leader>,
    members: &[MemberState],
    now: u64,
) -> ClusterReport {
    let primary = leader.and_then(|l| members.iter().find(|m| m.name == l.member));
    let rows = members
        .iter()
        .map(|m| {
            let is_leader = leader.is_some_and(|l| l.member == m.name);
            let slot = primary
                .filter(|p| p.name != m.name)
                .and_then(|p| p.slots.iter().find(|s| s.name == m.slot_name));
            let lag_bytes = match (m.role, primary, m.lsn) {
                (Role::Standby, Some(p), Some(lsn)) => p.lsn.map(|plsn| lsn.bytes_until(plsn)),
                (Role::Primary, _, Some(_)) if is_leader => Some(0),
                _ => None,
            };
            MemberRow {
                name: m.name.clone(),
                role: m.role,
                // An agent that stopped reporting: its last word is not the truth any more.
                state: if now.saturating_sub(m.seen()) > crate::ops::STALE_MS
                    && !matches!(m.state, MemberStatus::Stopped | MemberStatus::Failed)
                {
                    MemberStatus::Unreachable
                } else {
                    m.state
                },
                leader: is_leader,
                host: m.host.clone(),
                port: m.port,
                timeline: m.timeline,
                lsn: m.lsn.map(|l| l.to_string()),
                lag_bytes,
                upstream: m.upstream.clone(),
                slot: slot.map(|s| s.name.clone()),
                slot_active: slot.map(|s| s.active),
                slot_retained_bytes: slot.and_then(|s| s.retained_bytes),
                system_id: m.system_id.clone(),
                api_url: m.api_url.clone(),
                last_seen_s: now.saturating_sub(m.seen()) / 1000,
                message: m.message.clone(),
                archive: m.archive.clone(),
                pending_restart: m.pending_restart.clone(),
                sync: None,
            }
        })
        .collect();
    let orphan_slots = match primary {
        Some(p) => {
            let wanted: Vec<String> = members
                .iter()
                .map(|m| crate::model::slot_name_for(&m.name))
                .collect();
            let (ours, foreign) = crate::decide::orphan_slots(&wanted, &p.slots);
            p.slots
                .iter()
                .filter(|s| ours.contains(&s.name) || foreign.contains(&s.name))
                .map(|s| OrphanSlot {
                    name: s.name.clone(),
                    active: s.active,
                    retained_bytes: s.retained_bytes,
                    pgbaton_named: ours.contains(&s.name),
                })
                .collect()
        }
        None => vec![],
    };
    ClusterReport {
        paused: false,
        synchronous: None,
        unreadable: vec![],
        scheduled: None,
        config_version: 0,
        orphan_slots,
        cluster: cluster.to_string(),
        leader: leader.map(|l| l.member.clone()),
        members: rows,
    }
}

/// `2026-11-22 02:15:30` from ms since the epoch (UTC, no time-zone database needed).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod utc_tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_313_730_000), "2026-11-22 02:15:30");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
    }
}
