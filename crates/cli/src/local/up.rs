//! `up`: check everything, then create DIR and start the agents (the first bootstraps, the
//! others clone from it); or start the stopped members of an existing cluster.

use super::agents::{running_agent, spawn_agent, Spawned};
use super::layout::{write_owned, Layout};
use super::wait::{settled_or_waiting, wait_healthy, wait_until};
use crate::cluster::open_store;
use crate::members::{report, table};
use anyhow::{bail, Context, Result};
use pgbaton_agent::process::{blocked_for, create_owned_dir, resolve_user};
use pgbaton_core::config::{
    ApiConfig, ApiTlsConfig, BackupConfig, BackupEngine, BootstrapConfig, ClientApi, ClientConfig,
    EtcdAccess, NodeConfig, PgTlsConfig, PostgresqlConfig, ReplicationConfig, StoreConfig,
    TimingConfig,
};
use pgbaton_core::model::MemberStatus;
use pgbaton_core::sync::SyncMode;
use pgbaton_store::read_view;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

pub struct UpOptions {
    pub dir: PathBuf,
    pub nodes: u16,
    pub port_base: u16,
    pub cluster: String,
    pub databases: Vec<String>,
    pub archive: bool,
    /// pgBackRest backups and WAL archive in DIR/backup.
    pub backup: bool,
    /// `pgbaton restore`: the first member restores this backup instead of initdb.
    pub restore: Option<BootstrapConfig>,
    pub synchronous: SyncMode,
    pub synchronous_node_count: u32,
    pub timeout_s: u64,
    pub orphan_slot_grace_s: u64,
    /// etcd endpoints; empty: the embedded store in DIR/store.db.
    pub etcd: Vec<String>,
    /// TLS and the user for etcd, as given (files of the user running `up`).
    pub etcd_access: EtcdAccess,
    /// TLS on every PostgreSQL network connection (certificates in DIR/tls).
    pub tls: bool,
}

impl UpOptions {
    /// The store of the client config (`pgbaton.toml`: etcd's files as given) or, with
    /// `agents`, of the members' configs (the copies in DIR/etcd their OS user owns).
    fn store(&self, l: &Layout, agents: bool) -> StoreConfig {
        if self.etcd.is_empty() {
            return StoreConfig::Local {
                path: l.dir.join("store.db"),
            };
        }
        let access = if agents {
            agent_access(&self.etcd_access, l)
        } else {
            self.etcd_access.clone()
        };
        StoreConfig::Etcd {
            endpoints: self.etcd.clone(),
            access,
        }
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
            tls: o.tls.then(|| PgTlsConfig {
                cert_file: l.tls_dir().join(format!("{name}.crt")),
                key_file: l.tls_dir().join(format!("{name}.key")),
                ca_file: l.tls_dir().join("ca.crt"),
                verify: Default::default(),
            }),
            ..Default::default()
        },
        replication: ReplicationConfig {
            password_file: Some(l.dir.join("replication.password")),
            synchronous: o.synchronous,
            synchronous_node_count: o.synchronous_node_count,
            ..Default::default()
        },
        api: ApiConfig {
            listen: format!("127.0.0.1:{}", o.port_base as u32 + 1000 + i as u32 - 1),
            auth_token_file: Some(l.dir.join("api.token")),
            // The member's certificate serves its API too (it names 127.0.0.1).
            tls: o.tls.then(|| ApiTlsConfig {
                cert_file: l.tls_dir().join(format!("{name}.crt")),
                key_file: l.tls_dir().join(format!("{name}.key")),
                ca_file: l.tls_dir().join("ca.crt"),
                verify_client: false,
            }),
            ..Default::default()
        },
        store: o.store(l, true),
        timing: TimingConfig {
            orphan_slot_grace_ms: o.orphan_slot_grace_s * 1000,
            ..TimingConfig::default()
        },
        tags: Default::default(),
        failover: Default::default(),
        backup: o.backup.then(|| BackupConfig {
            engine: BackupEngine::PgBackRest,
            repo_path: l.dir.join("backup"),
            stanza: None,
            bin: PathBuf::from("/usr/bin/pgbackrest"),
            retention_full: 2,
            full_every_hours: 0,
            incr_every_hours: 0,
            restore_replicas: true,
            timeout_hours: 6,
            // One host: a standby backs up with the primary's files at hand.
            server: None,
        }),
        // Only the first member restores: the others clone from it, and a member that
        // lost its disk later must never restore the old point in time again.
        bootstrap: o.restore.clone().filter(|_| i == 1),
    }
}

/// The files etcd's access names, as the agents find them: copies in DIR/etcd (the agents
/// run as the OS user, and a secret must be its reader's own).
fn agent_access(a: &EtcdAccess, l: &Layout) -> EtcdAccess {
    let dir = l.dir.join("etcd");
    EtcdAccess {
        ca_file: a.ca_file.as_ref().map(|_| dir.join("ca.crt")),
        cert_file: a.cert_file.as_ref().map(|_| dir.join("client.crt")),
        key_file: a.key_file.as_ref().map(|_| dir.join("client.key")),
        username: a.username.clone(),
        password_file: a.password_file.as_ref().map(|_| dir.join("password")),
    }
}

/// The etcd files `up` was given, read now (before anything is created), with where the
/// agents' copies go (see `agent_access`) and their mode: the key and the password are read
/// as secrets (this user's own, 0600) and stay 0600.
fn read_etcd_files(a: &EtcdAccess, l: &Layout) -> Result<Vec<(PathBuf, String, u32)>> {
    let to = agent_access(a, l);
    let pairs = [
        (&a.ca_file, &to.ca_file, false),
        (&a.cert_file, &to.cert_file, false),
        (&a.key_file, &to.key_file, true),
        (&a.password_file, &to.password_file, true),
    ];
    let mut out = vec![];
    for (from, to, secret) in pairs {
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        let text = if secret {
            pgbaton_pg::files::read_secret_file(from, "an etcd secret given to up")?
        } else {
            std::fs::read_to_string(from).with_context(|| format!("read {}", from.display()))?
        };
        out.push((to.clone(), text, if secret { 0o600 } else { 0o644 }));
    }
    Ok(out)
}

/// Write the agents' copies of the etcd files into DIR/etcd, owned by the OS user.
fn write_etcd_files(
    user: &nix::unistd::User,
    l: &Layout,
    files: &[(PathBuf, String, u32)],
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    create_owned_dir(user, &l.dir.join("etcd"))?;
    for (to, text, mode) in files {
        write_owned(user, to, text, *mode)?;
    }
    Ok(())
}

/// etcd answers with these settings (TLS, the user): checked before anything is created,
/// so that a wrong CA or password is an error that names it, not a half-made cluster.
async fn check_etcd(o: &UpOptions, l: &Layout) -> Result<()> {
    if o.etcd.is_empty() {
        if o.etcd_access != EtcdAccess::default() {
            bail!("--etcd-ca-file, --etcd-cert-file, --etcd-key-file, --etcd-user and --etcd-password-file go with --etcd URL");
        }
        return Ok(());
    }
    let cfg = o.store(l, false);
    let store = pgbaton_store::open(&cfg, &o.cluster)?;
    tokio::time::timeout(std::time::Duration::from_secs(15), store.initialize_get())
        .await
        .map_err(|_| anyhow::anyhow!("{} did not answer within 15 s", store.describe()))?
        .with_context(|| format!("reach {}", store.describe()))?;
    Ok(())
}

/// `--synchronous-node-count` must be reachable: at most the cluster's standbys.
fn check_synchronous(o: &UpOptions) -> Result<()> {
    let standbys = u32::from(o.nodes.saturating_sub(1));
    if o.synchronous != SyncMode::Off && o.synchronous_node_count > standbys {
        bail!(
            "--synchronous-node-count {} is more than the {standbys} standby(s) a {}-member \
             cluster has: commits could never be acknowledged. Use --nodes {} or a smaller count",
            o.synchronous_node_count,
            o.nodes,
            o.synchronous_node_count + 1
        );
    }
    if o.synchronous_node_count == 0 {
        bail!("--synchronous-node-count must be at least 1");
    }
    Ok(())
}

pub async fn up(o: UpOptions) -> Result<()> {
    check_synchronous(&o)?;
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
    if let Some(b) = configs.first().and_then(|c| c.backup.as_ref()) {
        if !b.bin.is_file() {
            bail!(
                "--backup needs pgBackRest, and {} is missing: install Debian's package (apt-get install pgbackrest)",
                b.bin.display()
            );
        }
    }
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
    let etcd_files = read_etcd_files(&o.etcd_access, &l)?;
    check_etcd(&o, &l).await?;
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
    write_owned(
        &user,
        &l.marker(),
        "made by `pgbaton up`: `pgbaton down --purge` deletes what up made here, and only that\n",
        0o644,
    )?;
    if o.archive || o.backup {
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
    if o.backup {
        create_owned_dir(&user, &l.dir.join("backup"))?;
    }
    if o.tls {
        make_certs(&user, &l, &o.cluster, &configs)?;
    }
    write_etcd_files(&user, &l, &etcd_files)?;
    for c in &configs {
        create_owned_dir(&user, &l.node_dir(&c.name))?;
        write_owned(&user, &l.node_config(&c.name), &c.to_toml_string(), 0o644)?;
    }
    let client = ClientConfig {
        cluster: o.cluster.clone(),
        store: o.store(&l, false),
        // With --tls the APIs serve https: the CLI checks them against the cluster's CA.
        api: ClientApi {
            ca_file: o.tls.then(|| l.tls_dir().join("ca.crt")),
            ..Default::default()
        },
    };
    write_owned(&user, &l.client_config(), &client.to_toml_string(), 0o644)?;
    std::fs::set_permissions(&l.dir, std::fs::Permissions::from_mode(0o755))?;

    // The first member bootstraps; the others clone from it once it runs.
    let mut spawned = Spawned::new();
    spawn_agent(&l, &configs[0].name, &mut spawned)?;
    wait_until(&l, &client, &configs, &mut spawned, o.timeout_s, |view| {
        view.leader_member()
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

/// A CA and a certificate per member in DIR/tls, naming the loopback addresses the
/// members reach each other by; each member's key is owned by the OS user (0600), the CA's
/// key stays with the user who ran `up`.
fn make_certs(
    user: &nix::unistd::User,
    l: &Layout,
    cluster: &str,
    configs: &[NodeConfig],
) -> Result<()> {
    let dir = l.tls_dir();
    crate::certs::ensure_ca(&dir, cluster)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    for c in configs {
        let f = crate::certs::member_cert(&dir, &c.name, &hosts)?;
        for p in [&f.cert, &f.key] {
            nix::unistd::chown(p, Some(user.uid), Some(user.gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
    }
    println!(
        "TLS: a CA and a certificate per member in {}",
        dir.display()
    );
    Ok(())
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
    wait_until(l, &client, &configs, &mut spawned, timeout_s, |view| {
        settled_or_waiting(view, &configs, started)
    })
    .await?;
    for m in read_view(open_store(&client)?.as_ref()).await?.members {
        if let Some(msg) = m.message.as_deref().filter(|msg| msg.contains("`pgbaton ")) {
            println!("{} needs the operator: {msg}", m.name);
        }
    }
    finish(l, &client).await
}

async fn finish(l: &Layout, client: &ClientConfig) -> Result<()> {
    let store = open_store(client)?;
    let view = read_view(store.as_ref()).await?;
    println!("{}", table(&report(&client.cluster, &view)));
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
