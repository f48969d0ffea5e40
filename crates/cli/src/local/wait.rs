//! Following the members of a local cluster until a condition holds (healthy: a running
//! primary and streaming standbys), showing what each does (progress bars on a terminal,
//! one line per change otherwise), and failing early when an agent this `up` started stops.

use super::agents::{log_tail, Spawned};
use super::layout::Layout;
use crate::cluster::open_store;
use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pgbaton_core::config::{ClientConfig, NodeConfig, StoreConfig};
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::{MemberState, MemberStatus, Role};
use pgbaton_store::read_view;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A running primary holding the lease, every other member streaming, and the primary
/// reporting each standby's slot as active (so what `up` prints last is current).
fn healthy(view: &ClusterView, configs: &[NodeConfig]) -> bool {
    let Some(leader) = view.leader_member() else {
        return false;
    };
    leader.state == MemberStatus::Running
        && configs.iter().filter(|c| c.name != leader.name).all(|c| {
            let streaming = view.members.iter().any(|m| {
                m.name == c.name && m.role == Role::Standby && m.state == MemberStatus::Streaming
            });
            let slot = pgbaton_core::model::slot_name_for(&c.name);
            streaming && leader.slots.iter().any(|s| s.name == slot && s.active)
        })
}

/// Healthy, except members that say (seen alive since `since_ms`) they wait for an operator.
pub(super) fn settled_or_waiting(
    view: &ClusterView,
    configs: &[NodeConfig],
    since_ms: u64,
) -> bool {
    let waiting: Vec<&str> = view
        .members
        .iter()
        .filter(|m| {
            m.seen() >= since_ms
                && m.message
                    .as_deref()
                    .is_some_and(|msg| msg.contains("`pgbaton "))
        })
        .map(|m| m.name.as_str())
        .collect();
    let rest: Vec<NodeConfig> = configs
        .iter()
        .filter(|c| !waiting.contains(&c.name.as_str()))
        .cloned()
        .collect();
    healthy(view, &rest)
}

pub(super) async fn wait_healthy(
    l: &Layout,
    client: &ClientConfig,
    configs: &[NodeConfig],
    spawned: &mut Spawned,
    timeout_s: u64,
) -> Result<()> {
    wait_until(l, client, configs, spawned, timeout_s, |view| {
        healthy(view, configs)
    })
    .await
    .context("waiting for every member to be healthy (a running primary, streaming standbys)")
}

/// What one member is doing, in a line.
fn describe(m: Option<&MemberState>) -> (String, Option<(u64, u64)>) {
    match m {
        None => ("starting its agent".into(), None),
        Some(m) => {
            let mut s = format!("{} ({})", m.state, m.role);
            if let Some(msg) = &m.message {
                s.push_str(": ");
                s.push_str(msg);
            }
            (s, m.progress.map(|p| (p.done_kb, p.total_kb)))
        }
    }
}

pub(super) async fn wait_until(
    l: &Layout,
    client: &ClientConfig,
    configs: &[NodeConfig],
    spawned: &mut Spawned,
    timeout_s: u64,
    done: impl Fn(&ClusterView) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let bars: BTreeMap<String, ProgressBar> = configs
        .iter()
        .map(|c| {
            let pb = multi.add(ProgressBar::new(0));
            pb.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>4} {msg}").expect("template"),
            );
            pb.set_prefix(c.name.clone());
            (c.name.clone(), pb)
        })
        .collect();
    if !tty {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line: BTreeMap<String, String> = BTreeMap::new();
    let mut store = None;
    loop {
        if store.is_none()
            && match &client.store {
                StoreConfig::Local { path } => path.exists(),
                StoreConfig::Etcd { .. } => true,
            }
        {
            store = open_store(client).ok();
        }
        if let Some(st) = &store {
            let view = read_view(st.as_ref()).await?;
            for c in configs {
                let m = view.member(&c.name);
                let (line, progress) = describe(m);
                let pb = &bars[&c.name];
                match progress {
                    Some((done_kb, total_kb))
                        if m.is_some_and(|m| m.state == MemberStatus::Cloning) =>
                    {
                        pb.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {prefix:>4} cloning [{bar:30}] {pos}/{len} kB {msg}",
                            )
                            .expect("template")
                            .progress_chars("=> "),
                        );
                        pb.set_length(total_kb);
                        pb.set_position(done_kb);
                    }
                    _ => pb.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:>4} {msg}")
                            .expect("template"),
                    ),
                }
                pb.set_message(line.clone());
                pb.tick();
                if !tty {
                    let plain = match progress {
                        Some((d, t)) if t > 0 => format!("{line} {}% ({d}/{t} kB)", d * 100 / t),
                        _ => line,
                    };
                    if last_line.get(&c.name) != Some(&plain) {
                        eprintln!("  {}: {plain}", c.name);
                        last_line.insert(c.name.clone(), plain);
                    }
                }
            }
            if done(&view) {
                for pb in bars.values() {
                    pb.finish();
                }
                return Ok(());
            }
        }
        for (name, child) in spawned.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                multi.clear().ok();
                bail!(
                    "the agent of {name} stopped ({status}). The end of its log ({}):\n{}",
                    l.agent_log(name).display(),
                    log_tail(&l.agent_log(name), 15)
                );
            }
        }
        if Instant::now() >= deadline {
            multi.clear().ok();
            bail!("not done after {timeout_s} s; the agents keep trying: see `pgbaton -c {} list` and the logs in {}", l.client_config().display(), l.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
