//! The operator's commands: promote, rejoin, remove, reinit, switchover, and history.
//!
//! Each one checks the request against the cluster (`pgbaton_core::ops::check`: refusals
//! name the reason), posts it to the store (one operation at a time), and follows it until
//! the agents report it done or failed, showing each step and then the cluster.

use crate::cluster::open_store;
use crate::members::{report, table};
use anyhow::{bail, Context, Result};
use pgbaton_core::config::ClientConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{HistoryEntry, OpKind, OpPhase, Operation};
use pgbaton_core::ops::{self, STALE_MS};
use pgbaton_store::{now_ms, read_view, Store};
use serde::Serialize;
use std::time::{Duration, Instant};

pub struct OpOptions {
    pub json: bool,
    pub timeout_s: u64,
    pub force: bool,
    /// promote: while the lease is still held by a primary that reported running, wait for
    /// it to run out (a host that just vanished) instead of refusing.
    pub wait: bool,
}

#[derive(Serialize)]
struct OpResult<'a> {
    operation: &'a Operation,
    cluster: crate::members::ClusterReport,
}

fn new_id(kind: &OpKind) -> String {
    format!("{}-{}", kind.name(), now_ms())
}

/// Check, post, and follow an operation to its end. Exit status: Ok for done, Err for failed.
/// The cluster as it is once `kind` may be posted; refused otherwise. With `--wait`, a
/// promote refused only because a primary still holds the lease waits (up to the timeout) for
/// that lease to run out, as it does within a TTL when its host is gone.
async fn checked_view(store: &dyn Store, kind: &OpKind, o: &OpOptions) -> Result<ClusterView> {
    let deadline = Instant::now() + Duration::from_secs(o.timeout_s);
    let mut waited_for: Option<String> = None;
    loop {
        let view = read_view(store).await?;
        let (verdict, holder, left) = {
            let check = ops::Snapshot::at(&view, now_ms());
            let holder = check.healthy_primary().map(|p| p.name.clone());
            (
                ops::check(kind, &check, o.force),
                holder,
                check.lease_left_ms(),
            )
        };
        let reason = match verdict {
            Ok(()) => return Ok(view),
            Err(r) => r,
        };
        let waitable = o.wait && matches!(kind, OpKind::Promote { .. }) && holder.is_some();
        // Another member took the lease meanwhile (automatic failover): nothing to wait for.
        let same = waited_for.is_none() || waited_for == holder;
        if !waitable || !same || Instant::now() >= deadline {
            bail!("{} refused: {reason}", kind.name());
        }
        if waited_for.is_none() && !o.json {
            eprintln!(
                "{}: waiting for {}'s leader lease to run out ({:.1} s left unless renewed)",
                kind.name(),
                holder.as_deref().unwrap_or("?"),
                left.unwrap_or(0) as f64 / 1000.0
            );
        }
        waited_for = holder;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(cfg: &ClientConfig, kind: OpKind, o: &OpOptions) -> Result<()> {
    let store = open_store(cfg)?;
    let (view, op) = post(store.as_ref(), &kind, o).await?;
    if let OpKind::Remove { member, purge } = &kind {
        remove_without_agent(cfg, store.as_ref(), &view, &op, member, *purge).await?;
    }
    let last = follow(store.as_ref(), &op, o).await?;
    if let (OpKind::Remove { member, purge }, OpPhase::Done) = (&kind, last.phase) {
        retire_local_member(cfg, member, *purge)?;
    }
    if last.phase == OpPhase::Done {
        settle(store.as_ref(), o).await?;
    }
    let view = read_view(store.as_ref()).await?;
    let r = report(&cfg.cluster, &view);
    if o.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&OpResult {
                operation: &last,
                cluster: r
            })?
        );
    } else {
        println!("{}", table(&r));
    }
    match last.phase {
        OpPhase::Done => {
            if !o.json {
                println!("{} done: {}", kind.name(), last.message.unwrap_or_default());
            }
            Ok(())
        }
        _ => bail!(
            "{} failed: {}",
            kind.name(),
            last.message.unwrap_or_else(|| "no reason given".into())
        ),
    }
}

/// After an operation: wait (bounded) until the primary runs and every other member
/// streams, so that what is shown last is the cluster as it settled.
async fn settle(store: &dyn Store, o: &OpOptions) -> Result<()> {
    let limit = Duration::from_secs(60.min(o.timeout_s));
    if !settled_within(store, limit, false).await? && !o.json {
        eprintln!("  (not every member streams yet: see the table)");
    }
    Ok(())
}

/// Wait up to `limit` until the primary runs and every other member streams through its
/// slot. `all_members`: count members whose agent stopped reporting too (a rolling restart
/// must not take a second member down while one is).
pub(crate) async fn settled_within(
    store: &dyn Store,
    limit: Duration,
    all_members: bool,
) -> Result<bool> {
    use pgbaton_core::model::MemberStatus;
    let deadline = Instant::now() + limit;
    loop {
        let view = read_view(store).await?;
        let settled = view.leader_member().is_some_and(|l| {
            l.state == MemberStatus::Running
                && view
                    .members
                    .iter()
                    .filter(|m| {
                        m.name != l.name
                            && (all_members || now_ms().saturating_sub(m.seen()) <= STALE_MS)
                    })
                    .all(|m| {
                        m.state == MemberStatus::Streaming
                            && now_ms().saturating_sub(m.seen()) <= STALE_MS
                            && l.slots.iter().any(|s| s.name == m.slot_name && s.active)
                    })
        });
        if settled || Instant::now() >= deadline {
            return Ok(settled);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Check `kind` against the cluster and post it: the view it was checked on, and the
/// operation as posted.
async fn post(store: &dyn Store, kind: &OpKind, o: &OpOptions) -> Result<(ClusterView, Operation)> {
    let view = checked_view(store, kind, o).await?;
    let op = Operation::new(new_id(kind), kind.clone(), now_ms());
    if !store.op_post(&op).await? {
        bail!(
            "{} refused: another operation was posted just now; try again once it finishes",
            kind.name()
        );
    }
    if !o.json {
        eprintln!(
            "{} {}: requested ({})",
            kind.name(),
            kind.members().join(" -> "),
            op.id
        );
    }
    Ok((view, op))
}

/// Check, post and follow one operation to its end, without printing the cluster: a step
/// of a longer command (`restart --rolling`). Err unless it is done.
pub(crate) async fn step(store: &dyn Store, kind: OpKind, o: &OpOptions) -> Result<Operation> {
    let (_, op) = post(store, &kind, o).await?;
    let last = follow(store, &op, o).await?;
    if last.phase != OpPhase::Done {
        bail!(
            "{} failed: {}",
            kind.name(),
            last.message.unwrap_or_else(|| "no reason given".into())
        );
    }
    Ok(last)
}

/// The client for a member's API at `url`: no redirects (a redirect would carry the token
/// to wherever it points: audit finding); with the client config's `[api] ca_file`, https
/// only and the member checked against that CA (and a client certificate when given).
pub(crate) fn api_client(cfg: &ClientConfig, url: &str) -> Result<reqwest::Client> {
    let b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none());
    let b = match &cfg.api.ca_file {
        Some(ca) => {
            let id = cfg
                .api
                .cert_file
                .as_deref()
                .zip(cfg.api.key_file.as_deref());
            pgbaton_agent::api::tls::with_tls(b, ca, id, "the client config's [api]")?
        }
        None if url.starts_with("https://") => bail!(
            "the agent's API is at {url} (TLS): set [api] ca_file in the client config to the \
             CA that signed its certificate"
        ),
        None => b,
    };
    Ok(b.build()?)
}

/// The token the agents' API asks of mutating requests: from `token_file`, or from the
/// local cluster directory's api.token.
pub(crate) fn api_token(
    cfg: &ClientConfig,
    token_file: Option<&std::path::Path>,
) -> Result<String> {
    let token_path = match token_file {
        Some(p) => p.to_path_buf(),
        None => match &cfg.store {
            pgbaton_core::config::StoreConfig::Local { path } => path.with_file_name("api.token"),
            _ => bail!("--token-file is needed: the agent's API asks for a token"),
        },
    };
    Ok(std::fs::read_to_string(&token_path)
        .with_context(|| format!("read the API token {}", token_path.display()))?
        .trim()
        .to_string())
}

/// Ask `member`'s agent, through its API, to act (restart, reload); then follow the
/// operation it posts like any other. The token comes from `token_file`, or from the local
/// cluster directory's api.token.
pub async fn via_agent(
    cfg: &ClientConfig,
    member: &str,
    action: &str,
    token_file: Option<&std::path::Path>,
    o: &OpOptions,
) -> Result<()> {
    let store = open_store(cfg)?;
    let m = store
        .member_get(member)
        .await?
        .with_context(|| format!("no member named {member}"))?;
    let token = api_token(cfg, token_file)?;
    let url = format!("{}/{action}", m.api_url.trim_end_matches('/'));
    let resp = api_client(cfg, &url)?
        .post(&url)
        .bearer_auth(&token)
        .send()
        .await
        .map_err(|e| {
            let text = format!("{:#}", anyhow::Error::from(e));
            let hint = pgbaton_agent::api::tls::ca_hint(
                &text,
                cfg.api.ca_file.as_deref(),
                "[api] ca_file",
            );
            anyhow::anyhow!("reach {member}'s agent at {url}: {text}{hint}")
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status != reqwest::StatusCode::ACCEPTED {
        bail!(
            "{member}'s agent answered {status}: {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    let op: Operation = serde_json::from_value(body["operation"].clone())
        .context("the agent's answer holds no operation")?;
    if !o.json {
        eprintln!("{action} {member}: requested through its agent ({})", op.id);
    }
    let last = follow(store.as_ref(), &op, o).await?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&last)?);
    }
    match last.phase {
        OpPhase::Done => {
            if !o.json {
                println!("{action} done: {}", last.message.unwrap_or_default());
            }
            Ok(())
        }
        _ => bail!(
            "{action} failed: {}",
            last.message.unwrap_or_else(|| "no reason given".into())
        ),
    }
}

/// Poll the operation until it finishes, printing each new step and progress.
async fn follow(store: &dyn Store, op: &Operation, o: &OpOptions) -> Result<Operation> {
    let deadline = Instant::now() + Duration::from_secs(o.timeout_s);
    let mut last_line = String::new();
    loop {
        let cur = store
            .op_get()
            .await?
            .context("the operation disappeared from the store")?;
        if cur.id != op.id {
            bail!(
                "the operation was replaced by {} before it finished",
                cur.id
            );
        }
        let mut line = format!("{:?}", cur.phase).to_lowercase();
        if let Some(m) = &cur.message {
            line = format!("{line}: {m}");
        }
        // What the members involved are doing (a clone's progress, what they wait for).
        for name in cur.kind.members() {
            if let Some(m) = store.member_get(&name).await? {
                let mut s = format!(" | {name}: {}", m.state);
                if let Some(p) = m.progress.filter(|p| p.total_kb > 0) {
                    s.push_str(&format!(
                        " {}% ({}/{} kB)",
                        p.done_kb * 100 / p.total_kb,
                        p.done_kb,
                        p.total_kb
                    ));
                } else if let Some(msg) = &m.message {
                    s.push_str(&format!(" ({msg})"));
                }
                line.push_str(&s);
            }
        }
        if line != last_line && !o.json {
            eprintln!("  {line}");
            last_line = line;
        }
        if cur.phase.finished() {
            return Ok(cur);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not finished after {} s (now: {:?}); the agents keep working on it: follow it with `pgbaton list`",
                op.kind.name(),
                o.timeout_s,
                cur.phase
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A member whose agent no longer reports cannot remove itself: deregister it here and let
/// the primary drop its slot. On a local cluster (made by `up`) its PostgreSQL is stopped too.
async fn remove_without_agent(
    cfg: &ClientConfig,
    store: &dyn Store,
    view: &ClusterView,
    op: &Operation,
    member: &str,
    purge: bool,
) -> Result<()> {
    let Some(m) = view.member(member) else {
        return Ok(());
    };
    // Seen, not reported: an idle member writes its report once a minute and keeps its
    // liveness in between (review finding: its report's age called a live agent dead, and
    // its PostgreSQL was stopped and its data deleted under it).
    let alive = now_ms().saturating_sub(m.seen()) <= STALE_MS
        && m.state != pgbaton_core::model::MemberStatus::Stopped;
    if alive {
        return Ok(());
    }
    eprintln!("  {member}'s agent is not running: deregistering it here");
    if let Some(node) = local_node_config(cfg, member) {
        if pgbaton_pg::server::postmaster_pid(&node.data_dir).is_some() {
            crate::local::stop_orphan_postgres(&node)?;
            eprintln!("  stopped {member}'s PostgreSQL");
        }
        if purge && node.data_dir.exists() {
            #[expect(
                clippy::disallowed_methods,
                reason = "`pgbaton remove --purge` of a member whose agent is not running"
            )]
            std::fs::remove_dir_all(&node.data_dir)
                .with_context(|| format!("delete {}", node.data_dir.display()))?;
            eprintln!("  deleted {}", node.data_dir.display());
        }
    } else if purge {
        eprintln!(
            "  its data directory is on another machine: delete it there (--purge could not)"
        );
    }
    store.member_delete(member).await?;
    let msg = format!("{member} deregistered (its agent was not running)");
    store
        .op_update(
            &op.id,
            op.phase,
            &op.at(OpPhase::Deregistered, Some(msg), now_ms()),
        )
        .await?;
    Ok(())
}

/// The node config of `member` when the client config sits in a local cluster directory.
fn local_node_config(cfg: &ClientConfig, member: &str) -> Option<pgbaton_core::config::NodeConfig> {
    let pgbaton_core::config::StoreConfig::Local { path } = &cfg.store else {
        return None;
    };
    let p = path.parent()?.join(member).join("node.toml");
    crate::cluster::load_node_config(&p).ok()
}

/// After removing a member of a local cluster: `up` must not start it again.
fn retire_local_member(cfg: &ClientConfig, member: &str, purge: bool) -> Result<()> {
    let pgbaton_core::config::StoreConfig::Local { path } = &cfg.store else {
        return Ok(());
    };
    let Some(dir) = path.parent().map(|d| d.join(member)) else {
        return Ok(());
    };
    let node = dir.join("node.toml");
    if !node.exists() {
        return Ok(());
    }
    if purge {
        #[expect(
            clippy::disallowed_methods,
            reason = "`pgbaton remove --purge`: the retired member's local directory"
        )]
        std::fs::remove_dir_all(&dir).with_context(|| format!("delete {}", dir.display()))?;
    } else {
        std::fs::rename(&node, dir.join("node.toml.removed"))
            .with_context(|| format!("retire {}", node.display()))?;
        let _ = std::fs::remove_file(dir.join("agent.pid"));
    }
    Ok(())
}

/// The switchover request: from the current primary to `to`, or to the most advanced
/// streaming standby when none is named.
pub async fn switchover_kind(cfg: &ClientConfig, to: Option<String>) -> Result<OpKind> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    let check = ops::Snapshot::at(&view, now_ms());
    let from = check.healthy_primary().map(|m| m.name.clone());
    let Some(from) = from else {
        bail!("switchover refused: no healthy primary to switch over from")
    };
    let to = match to {
        Some(t) => t,
        None => {
            ops::pick_candidate(&check).map_err(|e| anyhow::anyhow!("switchover refused: {e}"))?
        }
    };
    Ok(OpKind::Switchover { from, to })
}

/// `pgbaton pause` / `resume`: set the flag, record it in the history.
pub async fn set_paused(cfg: &ClientConfig, paused: bool) -> Result<()> {
    let store = open_store(cfg)?;
    let was = pgbaton_store::pause_and_record(store.as_ref(), paused, "asked with the CLI").await?;
    println!(
        "{}",
        match (was, paused) {
            (true, true) => "the cluster was already paused",
            (false, true) => "paused: the agents take no automatic action until `pgbaton resume`",
            (true, false) => "resumed: the agents act again",
            (false, false) => "the cluster was not paused",
        }
    );
    Ok(())
}

/// `pgbaton history`
pub async fn history(cfg: &ClientConfig, json: bool, limit: usize) -> Result<()> {
    let store = open_store(cfg)?;
    let entries: Vec<HistoryEntry> = store.history(limit).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "Time (UTC)",
        "Operation",
        "Members",
        "Result",
        "TL",
        "LSN",
        "Message",
    ]);
    for e in &entries {
        t.add_row([
            utc(e.time_ms),
            e.operation.clone(),
            e.members.join(" -> "),
            e.result.clone(),
            e.timeline.map(|t| t.to_string()).unwrap_or_default(),
            e.lsn.map(|l| l.to_string()).unwrap_or_default(),
            e.message.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    if entries.is_empty() {
        println!("No operations yet.");
    }
    Ok(())
}

pub use pgbaton_core::report::utc;
