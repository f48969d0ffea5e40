//! `up` and `down`: a whole cluster on this machine, on the embedded store.
//!
//! Layout of DIR:
//! ```text
//! DIR/pgbaton.toml           client config: every other command takes it with -c
//! DIR/store.db               the embedded store (SQLite), shared by the agents
//! DIR/replication.password   the replication user's password (0600)
//! DIR/api.token              the token for the agents' mutating API requests (0600)
//! DIR/archive/               WAL archive (with --archive)
//! DIR/nI/node.toml           member I's node config
//! DIR/nI/data/               its data directory (0700)
//! DIR/nI/run/                its Unix socket directory
//! DIR/nI/pgpass              its passfile (0600)
//! DIR/nI/agent.log, postgres.log, agent.pid
//! ```
//! Every check runs before anything is created, so a refused `up` leaves nothing behind.

use crate::cluster::{load_node_config, open_store, Snapshot};
use crate::members::{report, table};
use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use nix::unistd::User;
use pgbaton_agent::process::{blocked_for, create_owned_dir, resolve_user};
use pgbaton_core::config::{
    ApiConfig, ClientConfig, NodeConfig, PostgresqlConfig, ReplicationConfig, StoreConfig,
    TimingConfig,
};
use pgbaton_core::model::{MemberState, MemberStatus, Role};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct UpOptions {
    pub dir: PathBuf,
    pub nodes: u16,
    pub port_base: u16,
    pub cluster: String,
    pub databases: Vec<String>,
    pub archive: bool,
    pub timeout_s: u64,
    pub orphan_slot_grace_s: u64,
    /// etcd endpoints; empty: the embedded store in DIR/store.db.
    pub etcd: Vec<String>,
}

impl UpOptions {
    fn store(&self, l: &Layout) -> StoreConfig {
        if self.etcd.is_empty() {
            StoreConfig::Local {
                path: l.dir.join("store.db"),
            }
        } else {
            StoreConfig::Etcd {
                endpoints: self.etcd.clone(),
            }
        }
    }
}

struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Result<Layout> {
        let dir = std::path::absolute(dir).with_context(|| format!("resolve {}", dir.display()))?;
        Ok(Layout { dir })
    }
    fn client_config(&self) -> PathBuf {
        self.dir.join("pgbaton.toml")
    }
    fn node_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn node_config(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("node.toml")
    }
    fn agent_log(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("agent.log")
    }
    fn agent_pid(&self, name: &str) -> PathBuf {
        self.node_dir(name).join("agent.pid")
    }

    /// The members of an existing cluster directory, in order (n1, n2, ...).
    fn nodes(&self) -> Result<Vec<NodeConfig>> {
        let mut found: Vec<(u32, NodeConfig)> = Vec::new();
        for e in
            std::fs::read_dir(&self.dir).with_context(|| format!("read {}", self.dir.display()))?
        {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(num) = name.strip_prefix('n').and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let cfg_path = self.node_config(&name);
            if cfg_path.exists() {
                found.push((num, load_node_config(&cfg_path)?));
            }
        }
        found.sort_by_key(|(n, _)| *n);
        Ok(found.into_iter().map(|(_, c)| c).collect())
    }
}

fn node_config(o: &UpOptions, l: &Layout, i: u16) -> NodeConfig {
    let name = format!("n{i}");
    let nd = l.node_dir(&name);
    NodeConfig {
        cluster: o.cluster.clone(),
        name: name.clone(),
        data_dir: nd.join("data"),
        os_user: None,
        postgresql: PostgresqlConfig {
            port: o.port_base + i - 1,
            databases: o.databases.clone(),
            archive_dir: o.archive.then(|| l.dir.join("archive")),
            ..Default::default()
        },
        replication: ReplicationConfig {
            password_file: Some(l.dir.join("replication.password")),
            ..Default::default()
        },
        api: ApiConfig {
            listen: format!("127.0.0.1:{}", o.port_base as u32 + 1000 + i as u32 - 1),
            auth_token_file: Some(l.dir.join("api.token")),
            ..Default::default()
        },
        store: o.store(l),
        timing: TimingConfig {
            orphan_slot_grace_ms: o.orphan_slot_grace_s * 1000,
            ..TimingConfig::default()
        },
        tags: Default::default(),
        failover: Default::default(),
    }
}

fn chown_to(user: &User, path: &Path) -> Result<()> {
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {}", path.display()))
}

fn write_owned(user: &User, path: &Path, contents: &str, mode: u32) -> Result<()> {
    pgbaton_pg::files::write_if_changed(path, contents, mode)?;
    chown_to(user, path)
}

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

fn running_agent(l: &Layout, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(l.agent_pid(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    agent_alive(pid, &l.node_config(name)).then_some(pid)
}

/// Agents this `up` started, watched through their handles (reliable from the first
/// instant, and it reaps them), not through /proc.
type Spawned = Vec<(String, std::process::Child)>;

fn spawn_agent(l: &Layout, name: &str, spawned: &mut Spawned) -> Result<()> {
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

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn up(o: UpOptions) -> Result<()> {
    let l = Layout::new(&o.dir)?;
    if l.client_config().exists() {
        return start_existing(&l, o.timeout_s).await;
    }
    // ---- checks: nothing is created until all of them pass -------------------------------
    if !(1..=16).contains(&o.nodes) {
        bail!("--nodes {}: expected 1 to 16 members", o.nodes);
    }
    if o.port_base == 0 || o.port_base as u32 + 1000 + o.nodes as u32 > 65535 {
        bail!(
            "--port-base {}: ports {}..{} must fit below 65536",
            o.port_base,
            o.port_base,
            o.port_base as u32 + 1000 + o.nodes as u32
        );
    }
    if let Ok(mut rd) = std::fs::read_dir(&l.dir) {
        if rd.next().is_some() {
            bail!(
                "{} is not empty and holds no pgbaton cluster (no pgbaton.toml): choose a new or empty directory",
                l.dir.display()
            );
        }
    } else if l.dir.exists() {
        bail!("{} exists and is not a directory", l.dir.display());
    }
    let mut configs: Vec<NodeConfig> = (1..=o.nodes).map(|i| node_config(&o, &l, i)).collect();
    for c in &configs {
        c.validate()
            .with_context(|| format!("the config of {}", c.name))?;
    }
    let user = resolve_user(None)?;
    if let Some(b) = blocked_for(&user, &l.dir) {
        bail!(
            "PostgreSQL runs as OS user {} and cannot enter {} on the way to {}: choose a directory \
             it can reach (for example under /var/lib/pgbaton or /tmp), or open up {}",
            user.name,
            b.display(),
            l.dir.display(),
            b.display()
        );
    }
    let bins = pgbaton_pg::Binaries::find(None)?;
    for c in &configs {
        let api_port: u16 = c
            .api
            .listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        for (what, port) in [("PostgreSQL", c.postgresql.port), ("agent API", api_port)] {
            if pgbaton_agent::port_taken("127.0.0.1", port) {
                bail!(
                    "port {port} (for {}'s {what}) is already in use: stop what uses it or choose another --port-base",
                    c.name
                );
            }
        }
    }
    // ---- create ----------------------------------------------------------------------------
    println!(
        "Creating cluster {} with {} member{} in {} (PostgreSQL {} from {}, running as OS user {})",
        o.cluster,
        o.nodes,
        if o.nodes == 1 { "" } else { "s" },
        l.dir.display(),
        bins.major_version()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "?".into()),
        bins.dir.display(),
        user.name
    );
    create_owned_dir(&user, &l.dir)?;
    if o.archive {
        let bin = archive_bin(&user, &l)?;
        for c in &mut configs {
            c.postgresql.pgbaton_bin = Some(bin.clone());
        }
    }
    let pw = pgbaton_pg::files::generate_password()?;
    write_owned(
        &user,
        &l.dir.join("replication.password"),
        &format!("{pw}\n"),
        0o600,
    )?;
    // The token the agents' API asks of mutating requests (the CLI reads it from here).
    let token = pgbaton_pg::files::generate_password()?;
    write_owned(
        &user,
        &l.dir.join("api.token"),
        &format!("{token}\n"),
        0o600,
    )?;
    if o.archive {
        create_owned_dir(&user, &l.dir.join("archive"))?;
    }
    for c in &configs {
        create_owned_dir(&user, &l.node_dir(&c.name))?;
        write_owned(&user, &l.node_config(&c.name), &c.to_toml_string(), 0o644)?;
    }
    let client = ClientConfig {
        cluster: o.cluster.clone(),
        store: o.store(&l),
    };
    write_owned(&user, &l.client_config(), &client.to_toml_string(), 0o644)?;
    std::fs::set_permissions(&l.dir, std::fs::Permissions::from_mode(0o755))?;

    // The first member bootstraps; the others clone from it once it runs.
    let mut spawned = Spawned::new();
    spawn_agent(&l, &configs[0].name, &mut spawned)?;
    wait_until(&l, &client, &configs, &mut spawned, o.timeout_s, |snap| {
        snap.leader_member()
            .is_some_and(|m| m.state == MemberStatus::Running)
    })
    .await
    .context("waiting for the first member to bootstrap")?;
    for c in &configs[1..] {
        spawn_agent(&l, &c.name, &mut spawned)?;
    }
    wait_healthy(&l, &client, &configs, &mut spawned, o.timeout_s).await?;
    finish(&l, &client).await
}

/// The pgbaton executable PostgreSQL runs to archive WAL: this one when the OS user can
/// reach it, else a copy in DIR/bin (a clone under /root, say), refreshed at every `up`.
fn archive_bin(user: &nix::unistd::User, l: &Layout) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find pgbaton's own executable")?;
    let copy = l.dir.join("bin").join("pgbaton");
    let reachable = exe.parent().is_some_and(|d| blocked_for(user, d).is_none());
    if reachable && !copy.exists() {
        return Ok(exe);
    }
    std::fs::create_dir_all(copy.parent().unwrap_or(&l.dir))?;
    let _ = std::fs::remove_file(&copy);
    if std::fs::hard_link(&exe, &copy).is_err() {
        std::fs::copy(&exe, &copy)
            .with_context(|| format!("copy {} to {}", exe.display(), copy.display()))?;
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
    if !reachable {
        println!(
            "OS user {} cannot reach {}: archiving runs the copy {}",
            user.name,
            exe.display(),
            copy.display()
        );
    }
    Ok(copy)
}

async fn start_existing(l: &Layout, timeout_s: u64) -> Result<()> {
    let configs = l.nodes()?;
    if l.dir.join("bin").join("pgbaton").exists() {
        let user = resolve_user(None)?;
        archive_bin(&user, l)?;
    }
    if configs.is_empty() {
        bail!(
            "{} has a pgbaton.toml but no member configs (nI/node.toml)",
            l.dir.display()
        );
    }
    let client = crate::cluster::load_client_config(&l.client_config())?;
    let stopped: Vec<&NodeConfig> = configs
        .iter()
        .filter(|c| running_agent(l, &c.name).is_none())
        .collect();
    if stopped.is_empty() {
        println!(
            "Cluster {} in {} is already running: nothing changed.",
            client.cluster,
            l.dir.display()
        );
        wait_healthy(l, &client, &configs, &mut Spawned::new(), timeout_s).await?;
        return finish(l, &client).await;
    }
    println!(
        "Starting cluster {} in {}: {} (existing data is kept; nothing is re-cloned)",
        client.cluster,
        l.dir.display(),
        stopped
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut spawned = Spawned::new();
    for c in stopped {
        spawn_agent(l, &c.name, &mut spawned)?;
    }
    // A member that waits for the operator (a former primary to rejoin, say) does not stream
    // by itself: `up` returns once the others are healthy and says what it waits for.
    let started = pgbaton_store::now_ms();
    wait_until(l, &client, &configs, &mut spawned, timeout_s, |snap| {
        settled_or_waiting(snap, &configs, started)
    })
    .await?;
    for m in Snapshot::read(open_store(&client)?.as_ref()).await?.members {
        if let Some(msg) = m.message.as_deref().filter(|msg| msg.contains("`pgbaton ")) {
            println!("{} needs the operator: {msg}", m.name);
        }
    }
    finish(l, &client).await
}

async fn finish(l: &Layout, client: &ClientConfig) -> Result<()> {
    let store = open_store(client)?;
    let snap = Snapshot::read(store.as_ref()).await?;
    println!("{}", table(&report(&client.cluster, &snap)));
    let cfg = l.client_config();
    println!("Cluster {} is up. Next:", client.cluster);
    println!(
        "  pgbaton -c {} list          # members, roles, lag, slots",
        cfg.display()
    );
    println!(
        "  pgbaton -c {} psql          # psql on the primary",
        cfg.display()
    );
    println!(
        "  pgbaton down --dir {}       # stop (add --purge to delete the data)",
        l.dir.display()
    );
    Ok(())
}

/// A running primary holding the lease, every other member streaming, and the primary
/// reporting each standby's slot as active (so what `up` prints last is current).
fn healthy(snap: &Snapshot, configs: &[NodeConfig]) -> bool {
    let Some(leader) = snap.leader_member() else {
        return false;
    };
    leader.state == MemberStatus::Running
        && configs.iter().filter(|c| c.name != leader.name).all(|c| {
            let streaming = snap.members.iter().any(|m| {
                m.name == c.name && m.role == Role::Standby && m.state == MemberStatus::Streaming
            });
            let slot = pgbaton_core::model::slot_name_for(&c.name);
            streaming && leader.slots.iter().any(|s| s.name == slot && s.active)
        })
}

/// Healthy, except members that reported (since `since_ms`) that they wait for an operator.
fn settled_or_waiting(snap: &Snapshot, configs: &[NodeConfig], since_ms: u64) -> bool {
    let waiting: Vec<&str> = snap
        .members
        .iter()
        .filter(|m| {
            m.updated_ms >= since_ms
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
    healthy(snap, &rest)
}

async fn wait_healthy(
    l: &Layout,
    client: &ClientConfig,
    configs: &[NodeConfig],
    spawned: &mut Spawned,
    timeout_s: u64,
) -> Result<()> {
    wait_until(l, client, configs, spawned, timeout_s, |snap| {
        healthy(snap, configs)
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

async fn wait_until(
    l: &Layout,
    client: &ClientConfig,
    configs: &[NodeConfig],
    spawned: &mut Spawned,
    timeout_s: u64,
    done: impl Fn(&Snapshot) -> bool,
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
            let snap = Snapshot::read(st.as_ref()).await?;
            for c in configs {
                let m = snap.members.iter().find(|m| m.name == c.name);
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
            if done(&snap) {
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

pub async fn down(dir: &Path, purge: bool) -> Result<()> {
    let l = Layout::new(dir)?;
    if !l.client_config().exists() {
        bail!(
            "{} holds no pgbaton cluster (no pgbaton.toml)",
            l.dir.display()
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
        #[expect(
            clippy::disallowed_methods,
            reason = "`pgbaton down --purge`: the operator asked for it"
        )]
        std::fs::remove_dir_all(&l.dir).with_context(|| format!("delete {}", l.dir.display()))?;
        println!("deleted {} and all its data", l.dir.display());
    } else {
        println!(
            "cluster stopped; data kept in {} (`pgbaton up --dir {}` starts it again)",
            l.dir.display(),
            l.dir.display()
        );
    }
    Ok(())
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
