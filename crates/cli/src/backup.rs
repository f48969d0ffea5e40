//! `pgbaton backup` (asks a member's agent to take one: a streaming standby first, the
//! primary when no standby can) and `pgbaton backups` (the repository's backups).

use crate::cluster::open_store;
use crate::operate::{api_client, api_token};
use anyhow::{bail, Context, Result};
use pgbaton_core::config::{
    is_lsn, is_timestamp, BootstrapConfig, BootstrapMethod, ClientConfig, NodeConfig,
};
use pgbaton_core::model::{MemberState, MemberStatus};
use pgbaton_core::sync::SyncMode;
use pgbaton_pg::backrest::RepoInfo;
use pgbaton_store::read_view;
use std::path::Path;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `restore`'s source as a `[bootstrap]` table: `--from DIR` (a local cluster made with
/// `up --backup`: its repository DIR/backup and the stanza its members' configs name) or
/// `--repo` and `--stanza`; `to` a time or an LSN.
pub fn restore_source(
    from: Option<&Path>,
    repo: Option<std::path::PathBuf>,
    stanza: Option<String>,
    to: &str,
) -> Result<BootstrapConfig> {
    let (repo_path, stanza, bin) = match (from, repo, stanza) {
        (Some(dir), _, _) => {
            let node = dir.join("n1").join("node.toml");
            let text = std::fs::read_to_string(&node).with_context(|| {
                format!(
                    "read {} (--from names a cluster made by `pgbaton up --backup`)",
                    node.display()
                )
            })?;
            let cfg = NodeConfig::from_toml_str(&text, &node)?;
            let b = cfg.backup.as_ref().with_context(|| {
                format!(
                    "{} has no [backup]: that cluster keeps no backups to restore",
                    node.display()
                )
            })?;
            (
                b.repo_path.clone(),
                b.stanza_or(&cfg.cluster).to_string(),
                b.bin.clone(),
            )
        }
        (None, Some(repo), Some(stanza)) => (
            std::path::absolute(repo)?,
            stanza,
            "/usr/bin/pgbackrest".into(),
        ),
        _ => bail!("name the backup's source: --from DIR, or --repo PATH with --stanza NAME"),
    };
    let (target_time, target_lsn) = if is_lsn(to) {
        (None, Some(to.to_string()))
    } else if is_timestamp(to) {
        (Some(to.to_string()), None)
    } else {
        bail!(
            "--to {to:?}: expected a time (YYYY-MM-DD HH:MM:SS, optionally with fractions and a zone \
             such as +00) or an LSN (0/3000060)"
        );
    };
    Ok(BootstrapConfig {
        method: BootstrapMethod::PgBackRest,
        repo_path,
        stanza,
        target_time,
        target_lsn,
        bin,
    })
}

/// `backup`, `backups` and `restore` (flattened into the top-level commands).
#[derive(clap::Subcommand)]
pub enum BackupCmd {
    /// Point-in-time recovery: a new local cluster in DIR whose first member restores a
    /// pgBackRest backup and replays the archive up to just before TIME or LSN (the other
    /// members clone from it). The cluster it comes from is never touched: its repository
    /// is only read, and the new cluster does not archive into it.
    Restore {
        /// Where the backup comes from: a local cluster made with `up --backup` (its
        /// DIR/backup repository and stanza) ...
        #[arg(long, value_name = "DIR", required_unless_present = "repo", conflicts_with_all = ["repo", "stanza"])]
        from: Option<PathBuf>,
        /// ... or a pgBackRest repository (with --stanza).
        #[arg(long, value_name = "PATH", requires = "stanza")]
        repo: Option<PathBuf>,
        #[arg(long)]
        stanza: Option<String>,
        /// Stop just before this time (`2026-12-03 10:00:00+00`) or LSN (`0/3000060`).
        #[arg(long, value_name = "TIME|LSN")]
        to: String,
        /// Directory for the new cluster. Created; must not hold a cluster.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        nodes: u16,
        #[arg(long, default_value_t = 15432)]
        port_base: u16,
        /// The new cluster's name.
        #[arg(long, default_value = "restored")]
        cluster: String,
        /// Backups and WAL archive of its own for the new cluster, in DIR/backup.
        #[arg(long)]
        backup: bool,
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Take a pgBackRest backup ([backup] in the members' configs): on a streaming standby
    /// whose host has the primary's files (a local cluster), else on the primary.
    Backup {
        /// full, diff or incr (pgBackRest's default: incr, and full when there is none yet).
        #[arg(long = "type", default_value = "incr", value_parser = ["full", "diff", "incr"])]
        kind: String,
        /// The member to take it on (default: a streaming standby, else the primary).
        #[arg(long)]
        member: Option<String>,
        /// File holding the API token (default: api.token beside a local cluster's store).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Return once the backup started instead of following it to its end.
        #[arg(long)]
        no_wait: bool,
    },
    /// The backups in the pgBackRest repository, with sizes and WAL ranges.
    Backups {
        #[arg(long)]
        json: bool,
    },
}

/// Run one of them; `client_config` reads the cluster's client config when needed.
pub fn run(cmd: BackupCmd, client_config: impl FnOnce() -> Result<ClientConfig>) -> Result<()> {
    match cmd {
        BackupCmd::Restore {
            from,
            repo,
            stanza,
            to,
            dir,
            nodes,
            port_base,
            cluster,
            backup,
            timeout,
        } => {
            let source = restore_source(from.as_deref(), repo, stanza, &to)?;
            let opts = crate::local::UpOptions {
                dir,
                nodes,
                port_base,
                cluster,
                databases: vec![],
                archive: false,
                backup,
                restore: Some(source),
                synchronous: SyncMode::Off,
                synchronous_node_count: 1,
                timeout_s: timeout,
                orphan_slot_grace_s: 300,
                etcd: vec![],
                etcd_access: Default::default(),
                tls: true,
            };
            crate::runtime()?.block_on(crate::local::up(opts))?;
            Ok(())
        }
        BackupCmd::Backup {
            kind,
            member,
            token_file,
            no_wait,
        } => {
            let cfg = client_config()?;
            crate::runtime()?.block_on(backup(
                &cfg,
                &kind,
                member.as_deref(),
                token_file.as_deref(),
                !no_wait,
            ))?;
            Ok(())
        }
        BackupCmd::Backups { json } => {
            let cfg = client_config()?;
            crate::runtime()?.block_on(backups(&cfg, json))?;
            Ok(())
        }
    }
}

/// How long `backup` follows a backup before it stops waiting (the backup goes on).
const FOLLOW_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// The members to ask, in order: `member`, or the streaming standbys and then the primary.
fn candidates(
    members: &[MemberState],
    leader: Option<&str>,
    member: Option<&str>,
) -> Vec<MemberState> {
    if let Some(m) = member {
        return members.iter().filter(|x| x.name == m).cloned().collect();
    }
    let mut out: Vec<MemberState> = members
        .iter()
        .filter(|m| m.state == MemberStatus::Streaming)
        .cloned()
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(
        members
            .iter()
            .filter(|m| Some(m.name.as_str()) == leader)
            .cloned(),
    );
    out
}

pub async fn backup(
    cfg: &ClientConfig,
    kind: &str,
    member: Option<&str>,
    token_file: Option<&Path>,
    wait: bool,
) -> Result<()> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    let leader = view.leader.as_ref().map(|l| l.member.as_str());
    let cands = candidates(&view.members, leader, member);
    if cands.is_empty() {
        bail!(
            "{}",
            match member {
                Some(m) => format!("no member named {m}"),
                None => "no streaming standby and no primary to take the backup".into(),
            }
        );
    }
    let token = api_token(cfg, token_file)?;
    for m in &cands {
        let base = m.api_url.trim_end_matches('/').to_string();
        let url = format!("{base}/backup");
        let client = api_client(cfg, &url)?;
        let resp = client
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "type": kind }))
            .send()
            .await
            .with_context(|| format!("reach {}'s agent at {url}", m.name))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let why = body["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_string();
        match status {
            reqwest::StatusCode::ACCEPTED => {
                let from = body["started"]["from"].as_str().unwrap_or("?");
                let started = body["started"]["started_ms"].as_u64().unwrap_or(0);
                eprintln!(
                    "{kind} backup started on {} (files from the {from})",
                    m.name
                );
                if !wait {
                    return Ok(());
                }
                return follow(cfg, &m.name, &base, started).await;
            }
            reqwest::StatusCode::PRECONDITION_FAILED if member.is_none() => {
                eprintln!("  not on {}: {why}", m.name);
            }
            _ => bail!("{}'s agent answered {status}: {why}", m.name),
        }
    }
    bail!("no member could take the backup (see above)")
}

/// Poll the agent until the backup it started at `started` ends; print its progress.
async fn follow(cfg: &ClientConfig, name: &str, base: &str, started: u64) -> Result<()> {
    let url = format!("{base}/backup");
    let client = api_client(cfg, &url)?;
    let t0 = Instant::now();
    let mut last_pct = None;
    let (mut unanswered, mut unknown) = (0, 0);
    while t0.elapsed() < FOLLOW_LIMIT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let got = match client.get(&url).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let Some(v) = got else {
            unanswered += 1;
            if unanswered >= 60 {
                bail!("{name}'s agent has not answered for a minute: the backup's outcome is unknown; see `pgbaton backups` and its log");
            }
            continue;
        };
        unanswered = 0;
        let r = &v["running"];
        if r["started_ms"].as_u64() == Some(started) {
            if let (Some(d), Some(t @ 1..)) = (r["bytes_done"].as_u64(), r["bytes_total"].as_u64())
            {
                let pct = (d * 100).checked_div(t).unwrap_or(0);
                if last_pct != Some(pct) {
                    eprintln!("  {pct}% ({} of {} MB)", d >> 20, t >> 20);
                    last_pct = Some(pct);
                }
            }
            continue;
        }
        let l = &v["last"];
        if l["started_ms"].as_u64() != Some(started) {
            // Neither running nor finished: the agent restarted and forgot it.
            unknown += 1;
            if unknown >= 5 {
                bail!("{name}'s agent no longer knows the backup it started (it restarted?): see `pgbaton backups` and its log");
            }
            continue;
        }
        let msg = l["message"].as_str().unwrap_or("");
        if l["ok"].as_bool() == Some(true) {
            println!(
                "backup {msg} done on {name} in {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        bail!("the backup on {name} failed: {msg}");
    }
    bail!(
        "the backup on {name} still runs after {} h; this command stops following it, the \
         agent carries on (up to backup.timeout_hours): see `pgbaton backups`",
        FOLLOW_LIMIT.as_secs() / 3600
    )
}

pub async fn backups(cfg: &ClientConfig, json: bool) -> Result<()> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    let leader = view.leader.as_ref().map(|l| l.member.as_str());
    // The primary first: any member reads the same repository.
    let mut order: Vec<&MemberState> = view.members.iter().collect();
    order.sort_by_key(|m| (Some(m.name.as_str()) != leader, m.name.clone()));
    let mut errors = vec![];
    for m in order {
        let url = format!("{}/backups", m.api_url.trim_end_matches('/'));
        let got = async {
            let resp = api_client(cfg, &url)?.get(&url).send().await?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await?;
            if !status.is_success() {
                bail!(
                    "{status}: {}",
                    v["error"].as_str().unwrap_or("no reason given")
                );
            }
            Ok::<_, anyhow::Error>(serde_json::from_value::<RepoInfo>(v)?)
        }
        .await;
        match got {
            Ok(info) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&info)?);
                } else {
                    print!("{}", table(&info));
                }
                return Ok(());
            }
            Err(e) => errors.push(format!("{}: {e:#}", m.name)),
        }
    }
    bail!("no member could list the backups: {}", errors.join("; "))
}

fn table(info: &RepoInfo) -> String {
    use std::fmt::Write;
    let mut s = format!(
        "stanza {} ({}); WAL archived {} .. {}\n",
        info.stanza,
        info.status,
        info.archive_min.as_deref().unwrap_or("-"),
        info.archive_max.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        s,
        "{:<26} {:<5} {:<20} {:>7} {:>10} {:>10}  WAL",
        "label", "type", "started (UTC)", "took", "size", "in repo"
    );
    for b in &info.backups {
        let _ = writeln!(
            s,
            "{:<26} {:<5} {:<20} {:>6}s {:>10} {:>10}  {} .. {}{}",
            b.label,
            b.kind,
            utc(b.start),
            b.stop.saturating_sub(b.start),
            mb(b.size),
            mb(b.repo_size),
            b.wal_start,
            b.wal_stop,
            if b.error { "  (has errors)" } else { "" }
        );
    }
    if info.backups.is_empty() {
        s.push_str("(no backup yet: `pgbaton backup` takes one)\n");
    }
    s
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

fn utc(secs: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs as i64) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => secs.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_292_303), "2026-12-03 10:05:03");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    }
}
