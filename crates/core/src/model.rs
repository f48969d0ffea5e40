//! The cluster model: what a member publishes about itself, the leader lease, LSNs.
//!
//! These are plain data. They are (de)serialized as JSON in the store and in `list --json`,
//! so field names are part of the public interface.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A WAL position, as PostgreSQL prints it (`16/B374D848`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `self` forward to `ahead` (0 when `ahead` is not ahead).
    pub fn bytes_until(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an LSN: {0:?} (expected two hexadecimal numbers separated by '/', like 0/3000148)")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a member's PostgreSQL is, as far as replication goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Standby,
    /// Not known: PostgreSQL is down and the data directory has not said yet, or there is none.
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        })
    }
}

/// Where a member is in its life. `running` (primary) and `streaming` (standby) are healthy.
///
/// ```text
///  (empty dir) ── bootstrapping ──> starting ──> running            (first member)
///  (empty dir) ── waiting_for_primary ──> cloning ──> starting ──> streaming
///  running|streaming ── postgres dies ──> crashed ──> starting ──> ...
///  any ── fatal condition (foreign data dir, ...) ──> failed   (agent keeps reporting, acts no more)
///  any ── SIGTERM ──> stopping ──> stopped
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    Bootstrapping,
    WaitingForPrimary,
    Cloning,
    Starting,
    /// A primary that accepts connections.
    Running,
    /// A standby whose WAL receiver streams from the primary.
    Streaming,
    /// A standby that runs but does not stream (yet).
    Replaying,
    Crashed,
    Stopping,
    Stopped,
    Failed,
    /// Shown by the CLI, never published: the member's agent has not reported for a while,
    /// so its last report is not to be believed.
    Unreachable,
}

impl MemberStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberStatus::Bootstrapping => "bootstrapping",
            MemberStatus::WaitingForPrimary => "waiting_for_primary",
            MemberStatus::Cloning => "cloning",
            MemberStatus::Starting => "starting",
            MemberStatus::Running => "running",
            MemberStatus::Streaming => "streaming",
            MemberStatus::Replaying => "replaying",
            MemberStatus::Crashed => "crashed",
            MemberStatus::Stopping => "stopping",
            MemberStatus::Stopped => "stopped",
            MemberStatus::Failed => "failed",
            MemberStatus::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A physical replication slot as the primary reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub name: String,
    pub active: bool,
    pub restart_lsn: Option<Lsn>,
    /// WAL the slot holds back: current LSN - restart_lsn.
    pub retained_bytes: Option<u64>,
}

/// Agent capabilities a member's report lists (`MemberState::capabilities`).
pub const CAP_CLUSTER_CONFIG: &str = "cluster-config";
pub const CAP_SCHEDULED_OPERATIONS: &str = "scheduled-operations";
/// Everything this version's agent understands.
pub const CAPABILITIES: &[&str] = &[CAP_CLUSTER_CONFIG, CAP_SCHEDULED_OPERATIONS];

/// What a member's agent publishes to the store (see `updated_ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    pub name: String,
    pub role: Role,
    pub state: MemberStatus,
    /// Address other members and clients use to reach this member's PostgreSQL.
    pub host: String,
    pub port: u16,
    /// Unix socket directory of this member's PostgreSQL (for local admin access).
    pub socket_dir: String,
    /// OS user PostgreSQL runs as.
    pub os_user: String,
    /// Database superuser name.
    pub superuser: String,
    /// Base URL of the agent's HTTP API.
    pub api_url: String,
    pub timeline: Option<u32>,
    /// Primary: pg_current_wal_lsn(); standby: pg_last_wal_replay_lsn().
    pub lsn: Option<Lsn>,
    /// Standby: pg_last_wal_receive_lsn().
    pub receive_lsn: Option<Lsn>,
    /// pg_control's database system identifier, as a decimal string.
    pub system_id: Option<String>,
    /// Standby: the member it streams from.
    pub upstream: Option<String>,
    /// Name of the physical slot this member uses on its upstream.
    pub slot_name: String,
    /// Primary: its physical replication slots.
    #[serde(default)]
    pub slots: Vec<SlotInfo>,
    pub pg_version: Option<String>,
    /// A human note: what it waits for, the last error.
    pub message: Option<String>,
    /// Progress of a long operation (a base backup), as pg_basebackup reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// PID of the agent process.
    pub agent_pid: u32,
    /// Wall-clock time of this report, ms since the Unix epoch. An agent writes its report
    /// when it changes (every loop while the cluster has no leader or runs an operation),
    /// and at least every `report::HEARTBEAT_MS`.
    pub updated_ms: u64,
    /// When this member was last known alive, ms since the Unix epoch: filled in when the
    /// view is read, never stored in the record (the store keeps liveness without writes:
    /// an etcd lease kept alive, a row; the lease holder is alive by its lease; the agent
    /// reading the view knows about itself). 0 = not known. See [`MemberState::seen`].
    #[serde(skip)]
    pub seen_ms: u64,
    /// The member's `tags.nofailover`: never promoted automatically.
    #[serde(default)]
    pub nofailover: bool,
    /// The member's `tags.failover_priority` (higher first among equally advanced
    /// candidates; 0 = never promoted automatically).
    #[serde(default = "default_priority")]
    pub failover_priority: u32,
    /// The member's `tags.nosync`: never a synchronous standby (so never promoted while
    /// synchronous replication is on).
    #[serde(default)]
    pub nosync: bool,
    /// A former primary whose PostgreSQL did not come back within
    /// `timing.primary_restart_timeout_ms`: it gave the lease up for a standby to take.
    #[serde(default)]
    pub handed_over: bool,
    /// A primary's synchronous replication: its mode and `synchronous_standby_names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SyncReport>,
    /// The WAL archive as this member sees it (only when it archives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,
    /// Its pgBackRest TLS server (`[backup.server]`), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_server: Option<BackupServerInfo>,
    /// Parameters whose new value PostgreSQL applies only at a restart
    /// (`pg_settings.pending_restart`): `pgbaton restart --pending` restarts such members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// What this member's agent understands that earlier versions did not
    /// ([`CAPABILITIES`]): the CLI refuses what one member would get wrong (an older agent
    /// acts on a scheduled operation at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// Where a member's pgBackRest TLS server is: a standby on another host backs up through
/// it while that member is the primary (pgBackRest reads the primary's control files and
/// calls pg_backup_start there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupServerInfo {
    /// A DNS name its certificate lists.
    pub host: String,
    pub port: u16,
    /// The member's data directory, as pgBackRest on that host reads it.
    pub data_dir: String,
    /// The server's config file on that host: the pgBackRest it runs for a client reads it
    /// (its lock and log directories), not the packaged default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

/// What a primary publishes of its synchronous replication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// `replication.synchronous` in its config.
    pub mode: crate::sync::SyncMode,
    /// `synchronous_standby_names` as PostgreSQL runs with it.
    pub standby_names: String,
    #[serde(default)]
    pub strict: bool,
}

impl SyncReport {
    /// Synchronous replication is configured but commits do not wait for any standby.
    pub fn degraded(&self) -> bool {
        self.mode != crate::sync::SyncMode::Off && self.standby_names.trim().is_empty()
    }
}

/// How far a member's archiver is behind, and (on the leader) what the last archive check
/// found missing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchiveStatus {
    /// WAL files waiting for the archiver (`.ready` in pg_wal/archive_status): each is held
    /// in pg_wal until archived, whatever `max_slot_wal_keep_size` says.
    pub waiting: u64,
    /// Age of the oldest of them, seconds.
    pub oldest_waiting_s: Option<u64>,
    /// pg_stat_archiver: failures since its statistics were reset, the file of the last
    /// one and how long ago it was.
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_age_s: Option<u64>,
    /// Leader: segments and history files the last `archive check` found missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_segments: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_history: Vec<u32>,
}

impl ArchiveStatus {
    /// Past this, a waiting file means the archiver is stuck or far behind (it archives a
    /// segment in milliseconds when healthy).
    pub const STUCK_AFTER_S: u64 = 120;

    /// The archiver is stuck: a file has waited past [`Self::STUCK_AFTER_S`], or it failed
    /// within that time with files waiting. pg_wal grows until that is fixed.
    pub fn stuck(&self) -> bool {
        self.oldest_waiting_s
            .is_some_and(|a| a >= Self::STUCK_AFTER_S)
            || (self.waiting > 0
                && self
                    .last_failed_age_s
                    .is_some_and(|a| a < Self::STUCK_AFTER_S))
    }

    /// A note for `list`, when there is something to say.
    pub fn note(&self) -> Option<String> {
        let mut parts = vec![];
        if self.stuck() {
            let mut p = format!(
                "archiver stuck: {} WAL file{} waiting",
                self.waiting,
                if self.waiting == 1 { "" } else { "s" }
            );
            if let Some(a) = self.oldest_waiting_s {
                p += &format!(", oldest {a} s");
            }
            if let (Some(w), Some(a)) = (&self.last_failed_wal, self.last_failed_age_s) {
                p += &format!("; failed on {w} {a} s ago (see PostgreSQL's log)");
            }
            parts.push(p);
        }
        if let Some(n) = self.missing_segments.filter(|n| *n > 0) {
            parts.push(format!(
                "archive hole: {n} segment{} missing (pgbaton archive check)",
                if n == 1 { "" } else { "s" }
            ));
        }
        if !self.missing_history.is_empty() {
            let t: Vec<String> = self.missing_history.iter().map(|t| t.to_string()).collect();
            parts.push(format!(
                "archive: history of timeline {} missing",
                t.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

fn default_priority() -> u32 {
    1
}

impl MemberState {
    /// A member at 127.0.0.1:5432 with this name, role and state and nothing else known,
    /// reported at `updated_ms`: a starting point for tests and examples, to be adjusted
    /// with struct update syntax.
    pub fn sample(name: &str, role: Role, state: MemberStatus, updated_ms: u64) -> MemberState {
        MemberState {
            name: name.to_string(),
            role,
            state,
            host: "127.0.0.1".into(),
            port: 5432,
            socket_dir: "/tmp".into(),
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            api_url: "http://127.0.0.1:8008".into(),
            timeline: Some(1),
            lsn: None,
            receive_lsn: None,
            system_id: None,
            upstream: None,
            slot_name: slot_name_for(name),
            slots: vec![],
            pg_version: None,
            message: None,
            progress: None,
            agent_pid: 1,
            updated_ms,
            seen_ms: 0,
            nofailover: false,
            failover_priority: 1,
            nosync: false,
            handed_over: false,
            synchronous: None,
            archive: None,
            backup_server: None,
            pending_restart: vec![],
            capabilities: vec![],
        }
    }

    /// When this member last showed it is alive: its last report, or later when the store
    /// knows its agent is alive. An agent writes its report when it changes, so a live
    /// agent's last report is its state (the positions up to a loop behind: rules about
    /// positions after an instant read `updated_ms`).
    pub fn seen(&self) -> u64 {
        self.updated_ms.max(self.seen_ms)
    }

    /// The report with what changes without a change of state blanked out (its time, the
    /// archive's ages): two reports that compare equal this way say the same thing.
    pub fn content(&self) -> MemberState {
        MemberState {
            updated_ms: 0,
            seen_ms: 0,
            archive: self.archive.clone().map(|a| ArchiveStatus {
                oldest_waiting_s: None,
                last_failed_age_s: None,
                ..a
            }),
            ..self.clone()
        }
    }
}

/// Progress of a long operation, in kB as pg_basebackup counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done_kb: u64,
    pub total_kb: u64,
}

/// The leader lease: whoever holds it may run the writable primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub member: String,
    /// Wall-clock expiry, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// The cluster's identity, as the store's `initialize` key holds it.
///
/// The store keeps it as text: `claimed:<member>` while that member bootstraps the cluster,
/// then the database system identifier. [`Identity::parse`] reads that text and `Display`
/// writes it back exactly as it was read, so the stored format does not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `claimed:<member>`: the member claimed the key and is bootstrapping the cluster.
    Claimed { by: String },
    /// The database system identifier (decimal digits), published once bootstrap is done.
    SystemId(String),
    /// Neither (not written by pgbaton, or damaged). The decision treats it as a system
    /// identifier that no data directory has: every member refuses to act, and says why.
    Malformed(String),
}

impl Identity {
    const CLAIM_PREFIX: &'static str = "claimed:";

    /// The identity the text of an `initialize` key stands for. Never fails: text that is
    /// neither a claim nor a system identifier is [`Identity::Malformed`].
    pub fn parse(text: &str) -> Identity {
        match text.strip_prefix(Self::CLAIM_PREFIX) {
            Some(by) if !by.is_empty() => Identity::Claimed { by: by.to_string() },
            None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                Identity::SystemId(text.to_string())
            }
            _ => Identity::Malformed(text.to_string()),
        }
    }

    /// The claim `member` writes when it bootstraps the cluster.
    pub fn claim(member: &str) -> Identity {
        Identity::Claimed {
            by: member.to_string(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Claimed { by } => write!(f, "{}{by}", Self::CLAIM_PREFIX),
            Identity::SystemId(text) | Identity::Malformed(text) => f.write_str(text),
        }
    }
}

impl From<&str> for Identity {
    fn from(text: &str) -> Identity {
        Identity::parse(text)
    }
}

/// The name of the physical replication slot that `member` uses on its upstream.
/// PostgreSQL slot names allow `[a-z0-9_]` up to 63 bytes; other characters become `_`.
/// Another registered member whose name maps to the same replication slot as `me`'s
/// (names that differ only in case, '-', '.' or '_'): they would share one slot, and one
/// member's position would release WAL the other still needs.
pub fn slot_collision<'a>(me: &str, others: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mine = slot_name_for(me);
    others
        .into_iter()
        .find(|o| *o != me && slot_name_for(o) == mine)
        .map(str::to_string)
}

pub fn slot_name_for(member: &str) -> String {
    let mut s = String::from("pgbaton_");
    for c in member.chars() {
        let c = c.to_ascii_lowercase();
        s.push(
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            },
        );
    }
    s.truncate(63);
    s
}

/// Prefix of every slot pgbaton creates; slots without it are never dropped by pgbaton.
pub const SLOT_PREFIX: &str = "pgbaton_";

/// What ensuring a replication slot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotEnsured {
    Existed,
    Created,
    /// It existed but was invalidated (`wal_status = 'lost'`: its standby fell more than
    /// `max_slot_wal_keep_size` behind): such a slot can never stream again, so it was
    /// dropped and created anew, reserving WAL from now on.
    Recreated,
}

/// What pg_rewind did to a former primary's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewind {
    /// The data directory had not diverged: it can stream as it is.
    NotNeeded,
    /// It had diverged at `diverged_at` and was rewound.
    Rewound { diverged_at: String },
    /// pg_rewind could not connect to the source (it is down or unreachable): nothing was
    /// changed, and the rejoin is tried again on a later loop.
    SourceUnreachable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_reads_and_writes_the_stored_text_unchanged() {
        let cases = [
            ("claimed:n1", Identity::claim("n1")),
            (
                "7311870345698675340",
                Identity::SystemId("7311870345698675340".into()),
            ),
            // Neither a claim nor a system identifier: kept as read, never a panic.
            ("claimed:", Identity::Malformed("claimed:".into())),
            ("", Identity::Malformed("".into())),
            ("73118703x", Identity::Malformed("73118703x".into())),
            (" 42", Identity::Malformed(" 42".into())),
            ("ünïcode", Identity::Malformed("ünïcode".into())),
        ];
        for (text, identity) in cases {
            assert_eq!(Identity::parse(text), identity, "{text:?}");
            assert_eq!(identity.to_string(), text);
            assert_eq!(Identity::from(text), identity);
        }
    }

    #[test]
    fn lsn_round_trips() {
        for s in ["0/0", "0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            let l: Lsn = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap().0, 1 << 32);
        assert!("".parse::<Lsn>().is_err());
        assert!("0/".parse::<Lsn>().is_err());
        assert!("12345".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn lsn_distance() {
        assert_eq!(Lsn(100).bytes_until(Lsn(150)), 50);
        assert_eq!(Lsn(150).bytes_until(Lsn(100)), 0);
    }

    #[test]
    fn slot_names_are_valid() {
        assert_eq!(slot_name_for("n1"), "pgbaton_n1");
        assert_eq!(slot_name_for("DB-West.2"), "pgbaton_db_west_2");
        assert!(slot_name_for(&"x".repeat(100)).len() <= 63);
    }

    #[test]
    fn names_that_share_a_slot_collide() {
        assert_eq!(slot_collision("db-1", ["db_1", "db2"]), Some("db_1".into()));
        assert_eq!(slot_collision("DB.1", ["db-1"]), Some("db-1".into()));
        assert_eq!(slot_collision("db-1", ["db-1", "db2"]), None, "itself");
        assert_eq!(slot_collision("db1", ["db-1"]), None);
    }

    #[test]
    fn member_state_json_names() {
        let m = MemberStatus::WaitingForPrimary;
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            "\"waiting_for_primary\""
        );
        assert_eq!(
            serde_json::to_string(&Role::Primary).unwrap(),
            "\"primary\""
        );
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An operation an operator asked for. One is in flight per cluster at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum OpKind {
    /// Promote a standby while the primary is down or gone. `force`: the operator accepted
    /// a member behind the failover bar (`--force`); otherwise the bar is checked again when
    /// the request is carried out, since the member may have fallen behind meanwhile.
    Promote {
        member: String,
        #[serde(default, skip_serializing_if = "is_false")]
        force: bool,
    },
    /// Turn a former primary into a standby of the current primary (pg_rewind when it diverged).
    Rejoin { member: String },
    /// Stop a member, deregister it, drop its slot; with `purge` delete its data directory.
    Remove { member: String, purge: bool },
    /// Re-clone a standby from the primary.
    Reinit { member: String },
    /// Planned change of primary from `from` to `to`.
    Switchover { from: String, to: String },
    /// Restart a member's PostgreSQL (fast stop, start in its role).
    Restart { member: String },
    /// Make a member's PostgreSQL re-read its configuration files.
    Reload { member: String },
}

impl OpKind {
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Promote { .. } => "promote",
            OpKind::Rejoin { .. } => "rejoin",
            OpKind::Remove { .. } => "remove",
            OpKind::Reinit { .. } => "reinit",
            OpKind::Switchover { .. } => "switchover",
            OpKind::Restart { .. } => "restart",
            OpKind::Reload { .. } => "reload",
        }
    }

    /// The members the operation is about.
    pub fn members(&self) -> Vec<String> {
        match self {
            OpKind::Promote { member, .. }
            | OpKind::Rejoin { member }
            | OpKind::Remove { member, .. }
            | OpKind::Reinit { member }
            | OpKind::Restart { member }
            | OpKind::Reload { member } => vec![member.clone()],
            OpKind::Switchover { from, to } => vec![from.clone(), to.clone()],
        }
    }
}

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpPhase {
    /// Posted; nobody has acted yet.
    Requested,
    /// Switchover: the old primary stopped cleanly; `checkpoint_lsn` is its shutdown checkpoint.
    Demoted,
    /// Switchover: the candidate was promoted; the old primary is to rejoin.
    Promoted,
    /// Remove: the member stopped and deregistered; its slot is to be dropped.
    Deregistered,
    Done,
    Failed,
}

impl OpPhase {
    pub fn finished(self) -> bool {
        matches!(self, OpPhase::Done | OpPhase::Failed)
    }
}

/// An operation request, as kept in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    #[serde(flatten)]
    pub kind: OpKind,
    pub phase: OpPhase,
    /// What happened last (shown by the CLI), or why it failed.
    pub message: Option<String>,
    /// Switchover: the old primary's shutdown checkpoint, which the candidate must reach.
    pub checkpoint_lsn: Option<Lsn>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// A scheduled operation (`--at`): nobody acts on it before this wall-clock ms. Until
    /// then it holds the cluster's one operation slot (`pgbaton cancel` frees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
}

impl Operation {
    pub fn new(id: String, kind: OpKind, now_ms: u64) -> Operation {
        Operation {
            id,
            kind,
            phase: OpPhase::Requested,
            message: None,
            checkpoint_lsn: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            not_before_ms: None,
        }
    }

    /// Posted, not finished, and due at `now_ms`: the agents act on it. A scheduled one
    /// waits for its time.
    pub fn in_flight(&self, now_ms: u64) -> bool {
        !self.phase.finished() && !self.scheduled(now_ms)
    }

    /// Scheduled for later than `now_ms`, and not acted on yet.
    pub fn scheduled(&self, now_ms: u64) -> bool {
        self.phase == OpPhase::Requested && self.not_before_ms.is_some_and(|t| t > now_ms)
    }

    /// When its current phase began: its last update, or its scheduled time when later.
    pub fn since_ms(&self) -> u64 {
        self.updated_ms.max(self.not_before_ms.unwrap_or(0))
    }

    /// This operation, moved to `phase` with `message` at `now_ms`.
    pub fn at(&self, phase: OpPhase, message: Option<String>, now_ms: u64) -> Operation {
        Operation {
            phase,
            message,
            updated_ms: now_ms,
            ..self.clone()
        }
    }
}

/// A record in the store that this version cannot read (not JSON, or a value from a newer
/// version): a member's, or the operation's. It is left out of the decisions, never fatal
/// to them (audit finding: one such record stopped every agent), and reported in `list`,
/// the logs and the metrics. A member's replication slot is kept; an unreadable operation
/// blocks new ones (posting one reads it and fails).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableRecord {
    /// The record's key in the cluster (`members/n2`, `op`).
    pub key: String,
    /// Why it could not be read.
    pub why: String,
}

impl UnreadableRecord {
    /// The member a `members/<name>` record belongs to.
    pub fn member(&self) -> Option<&str> {
        self.key.strip_prefix("members/")
    }
}

/// One line of the cluster's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub time_ms: u64,
    pub operation: String,
    pub members: Vec<String>,
    /// `done` or `failed`.
    pub result: String,
    pub timeline: Option<u32>,
    pub lsn: Option<Lsn>,
    pub message: Option<String>,
}

#[cfg(test)]
mod archive_status_tests {
    use super::*;

    #[test]
    fn an_archiver_is_stuck_when_a_file_waits_long_or_it_keeps_failing() {
        let ok = ArchiveStatus {
            waiting: 1,
            oldest_waiting_s: Some(2),
            ..Default::default()
        };
        assert!(!ok.stuck());
        assert_eq!(ok.note(), None);
        let old = ArchiveStatus {
            waiting: 40,
            oldest_waiting_s: Some(600),
            failed_count: 90,
            last_failed_wal: Some("000000010000000000000006".into()),
            last_failed_age_s: Some(3),
            ..Default::default()
        };
        assert!(old.stuck());
        let n = old.note().unwrap();
        assert!(
            n.contains("40 WAL files waiting") && n.contains("000000010000000000000006"),
            "{n}"
        );
        let failing = ArchiveStatus {
            waiting: 2,
            oldest_waiting_s: Some(5),
            last_failed_age_s: Some(1),
            ..Default::default()
        };
        assert!(failing.stuck());
        // An old failure with nothing waiting is history, not a problem.
        let healed = ArchiveStatus {
            last_failed_age_s: Some(10),
            failed_count: 3,
            ..Default::default()
        };
        assert!(!healed.stuck());
        let hole = ArchiveStatus {
            missing_segments: Some(2),
            missing_history: vec![3],
            ..Default::default()
        };
        let n = hole.note().unwrap();
        assert!(
            n.contains("2 segments missing") && n.contains("timeline 3"),
            "{n}"
        );
    }
}
