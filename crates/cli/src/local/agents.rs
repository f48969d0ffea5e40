//! The agent processes of a local cluster: starting one (its own process group, its log in
//! DIR/nI/agent.log), finding a live one from its pid file, and stopping a PostgreSQL whose
//! agent is gone.

use super::layout::Layout;
use anyhow::{bail, Context, Result};
use pgbaton_agent::process::resolve_user;
use pgbaton_core::config::NodeConfig;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Is the process `pid` a live pgbaton agent for `node_config`?
fn agent_alive(pid: i32, node_config: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let ours =
        args.iter().any(|a| a == "agent") && args.iter().any(|a| Path::new(a) == node_config);
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true);
    ours && !zombie
}

pub(super) fn running_agent(l: &Layout, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(l.agent_pid(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    agent_alive(pid, &l.node_config(name)).then_some(pid)
}

/// Agents this `up` started, watched through their handles (reliable from the first
/// instant, and it reaps them), not through /proc.
pub(super) type Spawned = Vec<(String, std::process::Child)>;

pub(super) fn spawn_agent(l: &Layout, name: &str, spawned: &mut Spawned) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.agent_log(name))
        .with_context(|| format!("open {}", l.agent_log(name).display()))?;
    let exe = std::env::current_exe().context("find the pgbaton executable")?;
    let child = std::process::Command::new(exe)
        .arg("agent")
        .arg("-c")
        .arg(l.node_config(name))
        .env_remove("PGBATON_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(&l.dir)
        // Its own process group: a Ctrl-C at the terminal that ran `up` does not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("start the agent of {name}"))?;
    std::fs::write(l.agent_pid(name), format!("{}\n", child.id()))?;
    spawned.push((name.to_string(), child));
    Ok(())
}

pub(super) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn stop_orphan_postgres(c: &NodeConfig) -> Result<()> {
    let bins = pgbaton_pg::Binaries::find(c.postgresql.bin_dir.as_deref())?;
    let user = resolve_user(c.os_user.as_deref())?;
    let mut cmd = std::process::Command::new(bins.path("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(&c.data_dir)
        .args(["-m", "fast", "-w", "-t", "60", "-s"])
        .current_dir("/");
    if nix::unistd::Uid::effective().is_root() {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    let st = cmd.status().context("run pg_ctl stop")?;
    if !st.success() {
        bail!("pg_ctl stop -D {} failed ({st})", c.data_dir.display());
    }
    Ok(())
}
