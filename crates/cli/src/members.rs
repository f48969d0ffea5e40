//! `list`, `psql` and `dsn`: looking at the members and reaching their databases.

use crate::cluster::open_store;
use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, ContentArrangement, Table};
use pgbaton_core::config::ClientConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{Identity, MemberState, MemberStatus};
use pgbaton_core::render::conninfo;
pub use pgbaton_core::report::ClusterReport;
use pgbaton_store::{now_ms, read_view};

/// The cluster as `list` shows it.
pub fn report(cluster: &str, view: &ClusterView) -> ClusterReport {
    pgbaton_core::report::of_view(cluster, view, now_ms())
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
        let role = match (m.leader, m.sync) {
            (true, _) => format!("{} (leader)", m.role),
            (false, Some(s)) => format!("{} ({s})", m.role),
            (false, None) => m.role.to_string(),
        };
        let mut note = m.message.clone().unwrap_or_default();
        if let Some(a) = m.archive.as_ref().and_then(|a| a.note()) {
            note = if note.is_empty() {
                a
            } else {
                format!("{note}; {a}")
            };
        }
        if !m.pending_restart.is_empty() {
            let p = format!("pending restart ({})", m.pending_restart.join(", "));
            note = if note.is_empty() {
                p
            } else {
                format!("{note}; {p}")
            };
        }
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
    let view = read_view(store.as_ref()).await?;
    let r = report(&cfg.cluster, &view);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("Cluster {} ({})", r.cluster, store.describe());
        println!("{}", table(&r));
        if r.leader.is_none() {
            println!("No member holds the leader lease.");
        }
        if let Some(s) = &r.synchronous {
            println!("{}", s.line());
        }
        if let Some(op) = &r.scheduled {
            println!(
                "Scheduled: {} {} at {} UTC ({}; `pgbaton cancel` withdraws it).",
                op.kind.name(),
                op.kind.members().join(" -> "),
                pgbaton_core::report::utc(op.not_before_ms.unwrap_or(0)),
                op.id
            );
        }
        if r.paused {
            println!("The cluster is PAUSED: agents take no automatic action (`pgbaton resume` ends it).");
        }
        if let Some(Identity::Malformed(text)) = &view.initialize {
            println!(
                "Warning: the store's initialize key holds {text:?}, which is neither a system \
                 identifier nor a claim: no member acts on a cluster whose identity it cannot \
                 read. Put the cluster's system identifier back in the key."
            );
        }
        for u in &r.unreadable {
            println!("Warning: {}", u.why);
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
fn pick(view: &ClusterView, name: Option<&str>) -> Result<MemberState> {
    match name {
        Some(n) => view.member(n).cloned().with_context(|| {
            let known: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
            format!("no member named {n} (members: {})", known.join(", "))
        }),
        None => view
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
    let m = pick(&read_view(store.as_ref()).await?, member)?;
    println!("{}", local_dsn(&m));
    Ok(())
}

/// Run psql on the member as the database superuser through its Unix socket. As root, psql
/// runs as the member's OS user (peer authentication maps it to the superuser).
pub async fn psql(cfg: &ClientConfig, member: Option<&str>, args: &[String]) -> Result<u8> {
    use std::os::unix::process::CommandExt;
    let store = open_store(cfg)?;
    let m = pick(&read_view(store.as_ref()).await?, member)?;
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
