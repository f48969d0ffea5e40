//! Synchronous replication: which standbys a commit waits for, and how that set is kept
//! safe across failover.
//!
//! Two things describe it:
//! - **PostgreSQL's list** ([`SyncNames`], `synchronous_standby_names` on the primary):
//!   `FIRST n (a, b)` (mode `on`) or `ANY n (a, b, c)` (mode `quorum`). A commit is
//!   acknowledged once `n` of the listed standbys have flushed it.
//! - **The store's record** ([`SyncRecord`]): `members` and `quorum`. A standby may take a
//!   free lease only when it is in `members`, it sees fresh reports from `quorum` of them
//!   (itself included), and it is the most advanced of those. The record *covers* a list
//!   when every `quorum` members of the record overlap every `n` listed standbys, so the
//!   most advanced of them has every commit the list acknowledged: `quorum > |members| - n`
//!   when the list is within the members. A record whose `quorum` exceeds its members is
//!   *blocked*: it proves nobody (the primary runs asynchronously, or a new leader has not
//!   set its list up yet); only the former primary itself may then take the lease back.
//!
//! The leader moves from one list to another in steps ([`plan`]), each keeping the rule
//! "the record covers every commit ever acknowledged":
//! 1. a new leader first writes a blocked record of its own (before it promotes);
//! 2. the record is made stricter first, to cover the new list as well as the old;
//! 3. PostgreSQL's list is changed, reloaded, and confirmed loaded by every WAL sender;
//! 4. a *barrier* commit is acknowledged under the new list (so every earlier commit is on
//!    `n` of its members too), and only then is the record relaxed to the new list alone.
//!
//! A member enters the record before PostgreSQL waits on it (2 before 3) and leaves
//! PostgreSQL's list before it leaves the record (3 before 4), as the design requires.
//! Every record write is a compare-and-set guarded by the leader lease.

use crate::model::{Lsn, MemberState};
use serde::{Deserialize, Serialize};
use std::fmt;

/// `[replication] synchronous`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication: a failover may lose the last acknowledged commits.
    #[default]
    Off,
    /// `FIRST n (...)`: each commit waits for `n` named standbys; any of them may take over.
    On,
    /// `ANY n (...)`: each commit waits for any `n` of the eligible standbys; the most
    /// advanced of enough of them takes over.
    Quorum,
}

impl SyncMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SyncMode::Off => "off",
            SyncMode::On => "on",
            SyncMode::Quorum => "quorum",
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The synchronous replication settings the leader applies (from `[replication]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncSettings {
    pub mode: SyncMode,
    /// `synchronous_node_count`: how many standbys acknowledge each commit.
    pub node_count: u32,
    /// `synchronous_strict`: with too few eligible standbys, commits wait (true) or the
    /// primary runs asynchronously and says so (false).
    pub strict: bool,
    /// `max_lag_on_syncnode_bytes`: a standby further behind is not synchronous.
    pub max_lag_bytes: Option<u64>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            mode: SyncMode::Off,
            node_count: 1,
            strict: false,
            max_lag_bytes: None,
        }
    }
}

/// `synchronous_standby_names` as pgbaton writes (and reads back) it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SyncNames {
    /// Empty: asynchronous.
    #[default]
    Off,
    /// `FIRST num (names)`; `names == ["*"]`: any standby.
    First { num: u32, names: Vec<String> },
    /// `ANY num (names)`.
    Any { num: u32, names: Vec<String> },
    /// A value pgbaton did not write: who acknowledges is unknown.
    Other(String),
}

/// The name PostgreSQL matches against any standby.
pub const ANY_STANDBY: &str = "*";

impl SyncNames {
    /// Parse what `SHOW synchronous_standby_names` says (only pgbaton's own forms; anything
    /// else is [`SyncNames::Other`]).
    pub fn parse(text: &str) -> SyncNames {
        let t = text.trim();
        if t.is_empty() {
            return SyncNames::Off;
        }
        let parsed = (|| {
            let (kind, rest) = t.split_once(' ')?;
            let (num, rest) = rest.trim_start().split_once(' ')?;
            let num: u32 = num.parse().ok()?;
            let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
            let names: Option<Vec<String>> = inner
                .split(',')
                .map(|n| {
                    let n = n.trim();
                    if n == ANY_STANDBY {
                        return Some(n.to_string());
                    }
                    let n = n.strip_prefix('"')?.strip_suffix('"')?;
                    (!n.is_empty() && !n.contains('"')).then(|| n.to_string())
                })
                .collect();
            let names = names?;
            match kind {
                "FIRST" => Some(SyncNames::First { num, names }),
                "ANY" => Some(SyncNames::Any { num, names }),
                _ => None,
            }
        })();
        parsed.unwrap_or_else(|| SyncNames::Other(t.to_string()))
    }

    /// The standbys named (empty for `Off`, `Other` and the wildcard).
    pub fn names(&self) -> &[String] {
        match self {
            SyncNames::First { names, .. } | SyncNames::Any { names, .. }
                if !names.iter().any(|n| n == ANY_STANDBY) =>
            {
                names
            }
            _ => &[],
        }
    }

    /// How many of [`Self::names`] hold each commit acknowledged under this list (0 when
    /// commits are acknowledged without a named standby: asynchronous, wildcard, unknown).
    pub fn acks(&self) -> u32 {
        match self {
            SyncNames::First { num, .. } | SyncNames::Any { num, .. }
                if !self.names().is_empty() =>
            {
                *num
            }
            _ => 0,
        }
    }

    /// The priority PostgreSQL gives the WAL sender of `standby` under this list
    /// (`pg_stat_replication.sync_priority`): how the leader confirms every WAL sender
    /// loaded the list.
    pub fn priority_of(&self, standby: &str) -> u32 {
        let (names, first) = match self {
            SyncNames::First { names, .. } => (names, true),
            SyncNames::Any { names, .. } => (names, false),
            _ => return 0,
        };
        match names
            .iter()
            .position(|n| n == ANY_STANDBY || n.eq_ignore_ascii_case(standby))
        {
            Some(i) if first => i as u32 + 1,
            Some(_) => 1,
            None => 0,
        }
    }
}

impl fmt::Display for SyncNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, num, names) = match self {
            SyncNames::Off => return Ok(()),
            SyncNames::Other(t) => return f.write_str(t),
            SyncNames::First { num, names } => ("FIRST", num, names),
            SyncNames::Any { num, names } => ("ANY", num, names),
        };
        let list: Vec<String> = names
            .iter()
            .map(|n| {
                if n == ANY_STANDBY {
                    n.clone()
                } else {
                    format!("\"{n}\"")
                }
            })
            .collect();
        write!(f, "{kind} {num} ({})", list.join(", "))
    }
}

/// The store's record of the synchronous set (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The leader that wrote it.
    pub leader: String,
    /// Standbys that may hold acknowledged commits the others lack.
    pub members: Vec<String>,
    /// How many of `members` a candidate must see (itself included) and be the most
    /// advanced of. More than `members.len()`: blocked, nobody is proven.
    pub quorum: u32,
}

impl SyncRecord {
    /// A record that proves nobody, written by `leader`.
    pub fn blocked(leader: &str) -> SyncRecord {
        SyncRecord {
            leader: leader.to_string(),
            members: vec![],
            quorum: 1,
        }
    }

    /// The record that covers exactly `names` (blocked when the list names nobody).
    pub fn for_names(leader: &str, names: &SyncNames) -> SyncRecord {
        let members = names.names().to_vec();
        let acks = names.acks() as usize;
        if acks == 0 || members.len() < acks {
            return SyncRecord {
                leader: leader.to_string(),
                quorum: members.len() as u32 + 1,
                members,
            };
        }
        SyncRecord {
            leader: leader.to_string(),
            quorum: (members.len() - acks + 1) as u32,
            members,
        }
    }

    /// Proves nobody (or was damaged: a quorum of 0 is never written).
    pub fn is_blocked(&self) -> bool {
        self.quorum == 0 || self.quorum as usize > self.members.len()
    }

    pub fn has(&self, name: &str) -> bool {
        self.members.iter().any(|m| m.eq_ignore_ascii_case(name))
    }

    /// Every `quorum` of `members` overlaps every set of standbys that acknowledged a
    /// commit under `names`: the most advanced of them has it.
    pub fn covers(&self, names: &SyncNames) -> bool {
        if self.is_blocked() {
            return true;
        }
        let acks = names.acks() as usize;
        if acks == 0 {
            return false;
        }
        let outside = names.names().iter().filter(|n| !self.has(n)).count();
        let inside_at_least = acks.saturating_sub(outside);
        self.quorum as usize + inside_at_least > self.members.len()
    }

    /// Covers at least everything `self` covers, and `names` too: the record to write
    /// before PostgreSQL switches to `names`.
    pub fn widened_for(&self, leader: &str, names: &SyncNames) -> SyncRecord {
        let mut members = self.members.clone();
        for n in names.names() {
            if !members.iter().any(|m| m.eq_ignore_ascii_case(n)) {
                members.push(n.clone());
            }
        }
        let added = members.len() - self.members.len();
        let blocked_q = members.len() as u32 + 1;
        let quorum = if self.is_blocked() || names.acks() == 0 {
            blocked_q
        } else {
            let keep = self.quorum as usize + added;
            let new = members.len() + 1 - names.acks() as usize;
            (keep.max(new) as u32).min(blocked_q)
        };
        SyncRecord {
            leader: leader.to_string(),
            members,
            quorum,
        }
    }

    /// One line for `list` and the history.
    pub fn describe(&self) -> String {
        if self.is_blocked() {
            return "none proven (no standby may take over automatically)".into();
        }
        format!(
            "{} (a candidate must be the most advanced of {} of them)",
            self.members.join(", "),
            self.quorum
        )
    }
}

/// A standby's part in synchronous replication, as health checks and `list` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncRole {
    /// Mode `on`: named in the leader's `FIRST n` list and in the store's record.
    Sync,
    /// Mode `quorum`: in the leader's `ANY n` list and in the store's record.
    Quorum,
}

impl fmt::Display for SyncRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncRole::Sync => "sync",
            SyncRole::Quorum => "quorum",
        })
    }
}

/// The role of `member` in the view: in both the leader's running list and the record
/// (which must prove someone), or none.
pub fn role_of(view: &crate::decide::ClusterView, member: &str) -> Option<SyncRole> {
    let record = view.sync.as_ref().filter(|r| !r.is_blocked())?;
    let leader = view.leader_member()?;
    let report = leader.synchronous.as_ref()?;
    let names = SyncNames::parse(&report.standby_names);
    if leader.name == member || names.priority_of(member) == 0 || !record.has(member) {
        return None;
    }
    match names {
        SyncNames::First { .. } => Some(SyncRole::Sync),
        SyncNames::Any { .. } => Some(SyncRole::Quorum),
        _ => None,
    }
}

/// A WAL sender on the primary, as `pg_stat_replication` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSender {
    /// `application_name`: the member's name.
    pub name: String,
    /// `state = 'streaming'` (caught up, not catching up).
    pub streaming: bool,
    pub flush: Option<Lsn>,
    /// `sync_priority`.
    pub priority: u32,
}

/// One step of the leader toward the list its settings ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// Write the record (compare-and-set, lease-guarded). `barrier`: first have a commit
    /// acknowledged under PostgreSQL's current list (the record is relaxed).
    Record { record: SyncRecord, barrier: bool },
    /// Set `synchronous_standby_names`, reload, wait until every WAL sender loaded it.
    Names(SyncNames),
    /// Synchronous mode is off: delete the record (PostgreSQL's list is emptied after).
    Clear,
}

/// What the leader sees for [`plan`].
pub struct SyncInputs<'a> {
    pub me: &'a str,
    pub settings: &'a SyncSettings,
    /// The store's record, if any.
    pub record: Option<&'a SyncRecord>,
    /// PostgreSQL's current list.
    pub names: &'a SyncNames,
    pub senders: &'a [WalSender],
    pub members: &'a [MemberState],
    /// The primary's current position.
    pub lsn: Option<Lsn>,
    /// Wall-clock now, and how fresh a standby's report must be to keep a listed standby
    /// whose WAL sender is gone for a moment (the lease TTL).
    pub now_ms: u64,
    pub fresh_ms: u64,
}

/// Standbys that may be synchronous now: streaming, registered, not tagged `nosync`,
/// within `max_lag_on_syncnode_bytes`; those already in the list first (no churn), then
/// the most advanced. A listed standby whose WAL sender is gone for a moment (the primary
/// restarted, the connection dropped) stays while its own report, fresh within
/// `fresh_ms`, says it runs and follows this primary: commits wait for its return rather
/// than degrading to asynchronous on every reconnection (found by `pgbaton-bench chaos`).
pub fn eligible_standbys(i: &SyncInputs) -> Vec<String> {
    let listed = |n: &str| i.names.names().iter().any(|x| x.eq_ignore_ascii_case(n));
    let member = |n: &str| i.members.iter().find(|m| m.name == n && m.name != i.me);
    let streaming = i
        .senders
        .iter()
        .filter(|s| s.streaming && s.flush.is_some())
        .filter(|s| member(&s.name).is_some_and(|m| !m.nosync))
        .map(|s| (s.name.as_str(), s.flush));
    let reconnecting = i
        .members
        .iter()
        .filter(|m| m.name != i.me && !m.nosync && listed(&m.name))
        .filter(|m| !i.senders.iter().any(|s| s.name == m.name && s.streaming))
        .filter(|m| {
            m.role == crate::model::Role::Standby
                && matches!(
                    m.state,
                    crate::model::MemberStatus::Streaming | crate::model::MemberStatus::Replaying
                )
                && m.upstream.as_deref() == Some(i.me)
                && i.now_ms.saturating_sub(m.seen()) <= i.fresh_ms
        })
        .map(|m| (m.name.as_str(), m.receive_lsn.max(m.lsn)));
    let mut out: Vec<(&str, Option<Lsn>, bool)> = streaming
        .chain(reconnecting)
        .filter(
            |(_, flush)| match (i.settings.max_lag_bytes, i.lsn, flush) {
                (Some(max), Some(me), Some(f)) => f.bytes_until(me) <= max,
                _ => true,
            },
        )
        .map(|(n, f)| (n, f, listed(n)))
        .collect();
    out.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(b.0)));
    out.dedup_by(|a, b| a.0 == b.0);
    out.into_iter().map(|(n, _, _)| n.to_string()).collect()
}

/// The list the settings ask for, given who is eligible now.
pub fn target_names(i: &SyncInputs) -> SyncNames {
    let s = i.settings;
    let k = s.node_count.max(1);
    let mut eligible = eligible_standbys(i);
    if eligible.is_empty() {
        if !s.strict {
            return SyncNames::Off;
        }
        // Strict: commits wait. Keep waiting on the standbys named so far, or on any.
        return match i.names {
            SyncNames::First { names, .. } | SyncNames::Any { names, .. } if !names.is_empty() => {
                i.names.clone()
            }
            _ => SyncNames::First {
                num: k,
                names: vec![ANY_STANDBY.into()],
            },
        };
    }
    let num = if s.strict {
        k
    } else {
        k.min(eligible.len() as u32)
    };
    match s.mode {
        SyncMode::On => {
            eligible.truncate(k as usize);
            eligible.sort();
            SyncNames::First {
                num,
                names: eligible,
            }
        }
        _ => {
            eligible.sort();
            SyncNames::Any {
                num,
                names: eligible,
            }
        }
    }
}

/// The leader's next step toward the list its settings ask for, or `None` when list and
/// record already agree. Each step keeps the record covering every acknowledged commit
/// (see the module documentation).
pub fn plan(i: &SyncInputs) -> Option<SyncStep> {
    if i.settings.mode == SyncMode::Off {
        if i.record.is_some() {
            return Some(SyncStep::Clear);
        }
        return (*i.names != SyncNames::Off).then_some(SyncStep::Names(SyncNames::Off));
    }
    let Some(record) = i.record.filter(|r| r.leader == i.me) else {
        // A new leader (or synchronous mode just turned on): block first.
        return Some(SyncStep::Record {
            record: SyncRecord::blocked(i.me),
            barrier: false,
        });
    };
    let target = target_names(i);
    if *i.names != target {
        let widened = record.widened_for(i.me, &target);
        if widened != *record {
            return Some(SyncStep::Record {
                record: widened,
                barrier: false,
            });
        }
        return Some(SyncStep::Names(target));
    }
    let exact = SyncRecord::for_names(i.me, &target);
    (exact != *record).then_some(SyncStep::Record {
        record: exact,
        barrier: true,
    })
}

/// Why the record does not let `me` take the free lease, if it does not.
///
/// `positions`: members of the record whose reports were made after the lease was seen
/// gone (so after the old primary's fence), with how much WAL each has; `mine`: this
/// member's own.
pub fn proof_refused(
    record: &SyncRecord,
    me: &str,
    mine: Lsn,
    fresh: &[(String, Lsn)],
) -> Option<String> {
    // The member that wrote the record has every commit acknowledged under it: they were
    // its own (or it never promoted, and the record before proved it). It may take the
    // lease back (pinned simulator test `the_synchronous_record_s_leader_may_take_the_lease_back`).
    if record.leader == me {
        return None;
    }
    if record.is_blocked() {
        return Some(format!(
            "the synchronous set proves no standby has every acknowledged commit ({} ran \
             asynchronously or had not set its synchronous standbys up): waiting for it to \
             come back (pgbaton promote --force accepts the loss)",
            record.leader
        ));
    }
    if !record.has(me) {
        return Some(format!(
            "not in the synchronous set ({}): it may lack acknowledged commits",
            record.members.join(", ")
        ));
    }
    let seen: Vec<&(String, Lsn)> = fresh
        .iter()
        .filter(|(n, _)| n != me && record.has(n))
        .collect();
    let have = seen.len() + 1;
    if have < record.quorum as usize {
        return Some(format!(
            "sees {have} of the {} members of the synchronous set it needs ({}) to be sure it \
             has every acknowledged commit: waiting for their reports",
            record.quorum,
            record.members.join(", ")
        ));
    }
    if let Some((n, l)) = seen.iter().find(|(_, l)| *l > mine) {
        return Some(format!(
            "{n} of the synchronous set has more WAL ({l} against {mine})"
        ));
    }
    None
}

#[cfg(test)]
mod tests;
