//! `list`, `psql` and `dsn`: looking at the members and reaching their databases.

use crate::cluster::{open_store, Snapshot};
use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, ContentArrangement, Table};
use pgbaton_core::config::ClientConfig;
use pgbaton_core::model::{MemberState, MemberStatus, Role};
use pgbaton_core::render::conninfo;
use pgbaton_store::now_ms;
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
}

pub fn report(cluster: &str, snap: &Snapshot) -> ClusterReport {
    let primary = snap.leader_member();
    let now = now_ms();
    let members = snap
        .members
        .iter()
        .map(|m| {
            let is_leader = snap.leader.as_ref().is_some_and(|l| l.member == m.name);
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
                state: if now.saturating_sub(m.updated_ms) > pgbaton_core::ops::STALE_MS
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
                last_seen_s: now.saturating_sub(m.updated_ms) / 1000,
                message: m.message.clone(),
            }
        })
        .collect();
    let orphan_slots = match primary {
        Some(p) => {
            let (ours, foreign) = pgbaton_core::decide::orphan_slots(&snap.members, &p.slots);
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
        orphan_slots,
        cluster: cluster.to_string(),
        leader: snap.leader.as_ref().map(|l| l.member.clone()),
        members,
    }
}

/// Bytes in the largest unit that keeps the number readable.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn table(r: &ClusterReport) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header([
        "Member",
        "Host:Port",
        "Role",
        "State",
        "TL",
        "LSN",
        "Lag",
        "Slot on primary",
        "Retained WAL",
        "Note",
    ]);
    for m in &r.members {
        let role = if m.leader {
            format!("{} (leader)", m.role)
        } else {
            m.role.to_string()
        };
        let mut note = m.message.clone().unwrap_or_default();
        if m.state == MemberStatus::Unreachable {
            note = format!("no report for {} s {note}", m.last_seen_s);
        }
        let slot = match (&m.slot, m.slot_active) {
            (Some(s), Some(true)) => format!("{s} (active)"),
            (Some(s), _) => format!("{s} (inactive)"),
            (None, _) => String::new(),
        };
        t.add_row([
            Cell::new(&m.name),
            Cell::new(format!("{}:{}", m.host, m.port)),
            Cell::new(role),
            Cell::new(m.state),
            Cell::new(m.timeline.map(|t| t.to_string()).unwrap_or_default()),
            Cell::new(m.lsn.clone().unwrap_or_default()),
            Cell::new(m.lag_bytes.map(human_bytes).unwrap_or_default()),
            Cell::new(slot),
            Cell::new(m.slot_retained_bytes.map(human_bytes).unwrap_or_default()),
            Cell::new(note),
        ]);
    }
    t
}

pub async fn list(cfg: &ClientConfig, json: bool) -> Result<()> {
    let store = open_store(cfg)?;
    let snap = Snapshot::read(store.as_ref()).await?;
    let r = report(&cfg.cluster, &snap);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("Cluster {} ({})", r.cluster, store.describe());
        println!("{}", table(&r));
        if r.leader.is_none() {
            println!("No member holds the leader lease.");
        }
        for o in &r.orphan_slots {
            let retained = o
                .retained_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "?".into());
            if o.pgbaton_named {
                println!(
                    "Warning: slot {} on the primary belongs to no member and retains {retained} of WAL: \
                     the primary drops it after the grace period (timing.orphan_slot_grace_ms).",
                    o.name
                );
            } else {
                println!(
                    "Warning: slot {} on the primary was not made by pgbaton and retains {retained} of WAL{}: \
                     pgbaton never drops it; drop it with pg_drop_replication_slot() if it is unused.",
                    o.name,
                    if o.active { " (active)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

/// The member named, or the leader's when none is.
fn pick(snap: &Snapshot, name: Option<&str>) -> Result<MemberState> {
    match name {
        Some(n) => snap
            .members
            .iter()
            .find(|m| m.name == n)
            .cloned()
            .with_context(|| {
                let known: Vec<_> = snap.members.iter().map(|m| m.name.as_str()).collect();
                format!("no member named {n} (members: {})", known.join(", "))
            }),
        None => snap
            .leader_member()
            .cloned()
            .context("no member holds the leader lease: name a member"),
    }
}

fn local_dsn(m: &MemberState) -> String {
    let port = m.port.to_string();
    conninfo(&[
        ("host", &m.socket_dir),
        ("port", &port),
        ("user", &m.superuser),
        ("dbname", "postgres"),
    ])
}

pub async fn dsn(cfg: &ClientConfig, member: Option<&str>) -> Result<()> {
    let store = open_store(cfg)?;
    let m = pick(&Snapshot::read(store.as_ref()).await?, member)?;
    println!("{}", local_dsn(&m));
    Ok(())
}

/// Run psql on the member as the database superuser through its Unix socket. As root, psql
/// runs as the member's OS user (peer authentication maps it to the superuser).
pub async fn psql(cfg: &ClientConfig, member: Option<&str>, args: &[String]) -> Result<u8> {
    use std::os::unix::process::CommandExt;
    let store = open_store(cfg)?;
    let m = pick(&Snapshot::read(store.as_ref()).await?, member)?;
    let bins = pgbaton_pg::Binaries::find(None)?;
    let mut cmd = std::process::Command::new(bins.path("psql"));
    // The member's address goes in the environment, so that psql flags given after `--`
    // (say `-d app`) change only what they name. No password is involved: peer auth.
    cmd.env("PGHOST", &m.socket_dir)
        .env("PGPORT", m.port.to_string())
        .env("PGUSER", &m.superuser)
        .env("PGDATABASE", "postgres")
        .args(args);
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())?.context("who am I?")?;
    if me.uid.is_root() {
        let u = nix::unistd::User::from_name(&m.os_user)?.with_context(|| {
            format!(
                "member {} runs as OS user {}, which does not exist here",
                m.name, m.os_user
            )
        })?;
        cmd.uid(u.uid.as_raw())
            .gid(u.gid.as_raw())
            .env("HOME", &u.dir)
            .env("USER", &u.name);
        let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
        if pgbaton_agent::process::blocked_for(&u, &cwd).is_some() {
            cmd.current_dir("/");
        }
    } else if me.name != m.os_user {
        bail!(
            "member {} accepts the superuser locally only from OS user {} (peer authentication): \
             run this as {} or as root",
            m.name,
            m.os_user,
            m.os_user
        );
    }
    let status = cmd
        .status()
        .with_context(|| format!("run {}", bins.path("psql").display()))?;
    Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
}
