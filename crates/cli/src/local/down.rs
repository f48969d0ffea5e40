//! `down`: stop the agents (standbys first, the leader last) and any PostgreSQL left
//! without its agent; with `--purge`, delete DIR.

use super::agents::{running_agent, stop_orphan_postgres};
use super::layout::Layout;
use crate::cluster::open_store;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

pub async fn down(dir: &Path, purge: bool) -> Result<()> {
    let l = Layout::new(dir)?;
    if !l.client_config().exists() {
        bail!(
            "{} holds no pgbaton cluster (no pgbaton.toml)",
            l.dir.display()
        );
    }
    if purge && !l.marker().exists() {
        bail!(
            "{} was not made by `pgbaton up` (no {} marker): --purge deletes nothing here. \
             Stop it without --purge, and delete what you no longer need yourself",
            l.dir.display(),
            super::layout::MARKER
        );
    }
    let mut configs = l.nodes()?;
    // Standbys first, the leader last, so nothing streams from a stopped primary meanwhile.
    let client = crate::cluster::load_client_config(&l.client_config())?;
    let leader = match open_store(&client) {
        Ok(s) => s.leader_get().await.ok().flatten().map(|l| l.member),
        Err(_) => None,
    };
    configs.sort_by_key(|c| Some(&c.name) == leader.as_ref());
    for c in &configs {
        if let Some(pid) = running_agent(&l, &c.name) {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .with_context(|| format!("signal the agent of {} (pid {pid})", c.name))?;
            let deadline = Instant::now() + Duration::from_secs(120);
            while running_agent(&l, &c.name).is_some() {
                if Instant::now() >= deadline {
                    bail!(
                        "the agent of {} (pid {pid}) did not stop within 120 s; see {}",
                        c.name,
                        l.agent_log(&c.name).display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("stopped {} (agent and PostgreSQL)", c.name);
        }
        // A PostgreSQL whose agent was gone already: stop it as its OS user.
        if pgbaton_pg::server::postmaster_pid(&c.data_dir).is_some() {
            stop_orphan_postgres(c)?;
            println!(
                "stopped {}'s PostgreSQL (its agent was not running)",
                c.name
            );
        }
        let _ = std::fs::remove_file(l.agent_pid(&c.name));
    }
    if purge {
        let members: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
        purge_made_by_up(&l, &members)?;
    } else {
        println!(
            "cluster stopped; data kept in {} (`pgbaton up --dir {}` starts it again)",
            l.dir.display(),
            l.dir.display()
        );
    }
    Ok(())
}

/// Delete what `up` made in DIR, then the marker; DIR goes too when nothing else is
/// left in it. Anything else found there is kept and named.
fn purge_made_by_up(l: &Layout, members: &[String]) -> Result<()> {
    for p in l.made_by_up(members) {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        #[expect(
            clippy::disallowed_methods,
            reason = "`pgbaton down --purge`: the operator asked for it, and `up` made this"
        )]
        let r = if meta.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("delete {}", p.display()))?;
    }
    std::fs::remove_file(l.marker()).with_context(|| format!("delete {}", l.marker().display()))?;
    let others: Vec<String> = std::fs::read_dir(&l.dir)
        .with_context(|| format!("read {}", l.dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if others.is_empty() {
        std::fs::remove_dir(&l.dir).with_context(|| format!("delete {}", l.dir.display()))?;
        println!("deleted {} and all its data", l.dir.display());
    } else {
        println!(
            "deleted the cluster's data in {}; kept what `pgbaton up` did not make there: {}",
            l.dir.display(),
            others.join(", ")
        );
    }
    Ok(())
}
