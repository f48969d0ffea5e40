//! `pgbaton init-node`: a validated `node.toml` for one host from a few flags, so that no
//! operator writes one by hand. The config is checked by the parser the agent uses (what
//! `init-node` writes, the agent starts on), the secrets it names are made once (0600, owned
//! by PostgreSQL's OS user) and never overwritten, and an existing config is replaced only
//! with `--force`.

use anyhow::{bail, Context, Result};
use nix::unistd::User;
use pgbaton_core::config::{
    ApiConfig, EtcdAccess, NodeConfig, PostgresqlConfig, ReplicationConfig, StoreConfig,
};
use pgbaton_core::sync::SyncMode;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where a deployed host keeps its config and secrets (the systemd unit reads it there).
pub const CONFIG_DIR: &str = "/etc/pgbaton";

/// What the flags say.
#[derive(clap::Args)]
pub struct InitNode {
    /// Cluster name (the same on every member).
    #[arg(long)]
    pub cluster: String,
    /// This member's name, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// This host's address, which the other members and the clients connect to: an IP
    /// address, or a DNS name (a container's service name, say).
    #[arg(long)]
    pub address: String,
    /// The IP address PostgreSQL and the agent's API listen on [default: --address when it
    /// is an IP address, all addresses (0.0.0.0) when it is a name].
    #[arg(long, value_name = "IP")]
    pub listen: Option<std::net::IpAddr>,
    /// etcd client URL (repeat for each etcd member, or separate with commas).
    #[arg(long = "etcd", value_name = "URL", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// With https:// endpoints: the CA (PEM) that signed etcd's certificates.
    #[arg(long, value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// A network (CIDR) members and clients connect from (repeat for several).
    #[arg(long = "network", value_name = "CIDR")]
    pub networks: Vec<String>,
    /// PostgreSQL data directory [default: /var/lib/pgbaton/CLUSTER/data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL port.
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// The agent's API port.
    #[arg(long, default_value_t = 8008)]
    pub api_port: u16,
    /// The OS user PostgreSQL runs as.
    #[arg(long, default_value = "postgres")]
    pub os_user: String,
    /// Where the replication password and the API token are (made when missing).
    #[arg(long, default_value = CONFIG_DIR)]
    pub secrets_dir: PathBuf,
    /// Database to create at bootstrap (repeat for several).
    #[arg(long = "database")]
    pub databases: Vec<String>,
    /// Synchronous replication: off, on (FIRST 1) or quorum (ANY 1).
    #[arg(long, value_name = "MODE", default_value = "on", value_parser = crate::parse_sync_mode)]
    pub synchronous: SyncMode,
    /// The node config to write.
    #[arg(long, default_value = "/etc/pgbaton/node.toml")]
    pub out: PathBuf,
    /// Replace an existing config (the secrets and the data are never touched).
    #[arg(long)]
    pub force: bool,
}

/// `pgbaton init-secrets`: only the secrets every member shares, made when missing: for the
/// one host or container that makes them before the members start (docker-compose's
/// `secrets` service).
#[derive(clap::Args)]
pub struct InitSecrets {
    /// Where to make the replication password and the API token.
    #[arg(long, default_value = CONFIG_DIR)]
    pub secrets_dir: PathBuf,
    /// The OS user PostgreSQL runs as (owns them, when run as root).
    #[arg(long, default_value = "postgres")]
    pub os_user: String,
}

/// Make the shared secrets that are missing; say which.
pub fn run_secrets(o: &InitSecrets) -> Result<()> {
    let made = secrets(&o.secrets_dir, os_user(&o.os_user)?.as_ref())?;
    for f in &made {
        println!("generated {} (0600)", f.display());
    }
    if made.is_empty() {
        println!("the secrets in {} are there: kept", o.secrets_dir.display());
    }
    Ok(())
}

impl InitNode {
    /// The node config the flags describe (not yet checked).
    fn config(&self) -> NodeConfig {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/var/lib/pgbaton/{}/data", self.cluster)));
        // A name is advertised as it is (the others resolve it), and the member listens on
        // an IP address: the agent's API binds a socket address, not a name.
        let named = self.address.parse::<std::net::IpAddr>().is_err();
        let listen = match self.listen {
            Some(ip) => ip.to_string(),
            None if named => "0.0.0.0".to_string(),
            None => self.address.clone(),
        };
        let advertised = (listen != self.address).then(|| self.address.clone());
        NodeConfig {
            cluster: self.cluster.clone(),
            name: self.name.clone(),
            data_dir,
            os_user: Some(self.os_user.clone()),
            postgresql: PostgresqlConfig {
                listen_host: listen.clone(),
                connect_host: advertised.clone(),
                port: self.port,
                allowed_networks: self.networks.clone(),
                databases: self.databases.clone(),
                ..Default::default()
            },
            replication: ReplicationConfig {
                password_file: Some(self.secrets_dir.join("replication.password")),
                synchronous: self.synchronous,
                ..Default::default()
            },
            api: ApiConfig {
                listen: join_host_port(&listen, self.api_port),
                connect_url: advertised
                    .as_ref()
                    .map(|a| format!("http://{}", join_host_port(a, self.api_port))),
                auth_token_file: Some(self.secrets_dir.join("api.token")),
                ..Default::default()
            },
            store: StoreConfig::Etcd {
                endpoints: self.etcd.clone(),
                access: EtcdAccess {
                    ca_file: self.etcd_ca_file.clone(),
                    ..Default::default()
                },
            },
            timing: Default::default(),
            tags: Default::default(),
            failover: Default::default(),
            backup: None,
            bootstrap: None,
        }
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Write the config (and the secrets it names, when missing); print what to do next.
pub fn run(o: &InitNode) -> Result<()> {
    if o.etcd.is_empty() {
        bail!(
            "--etcd is required: the etcd endpoints every member shares (several hosts need \
             etcd; a cluster on one machine is `pgbaton up`)"
        );
    }
    if o.networks.is_empty() {
        bail!(
            "--network is required: the networks (CIDR, e.g. 10.0.0.0/24) the other members \
             and the clients connect from; repeat it for several"
        );
    }
    let text = o.config().to_toml_string();
    // The agent's own parser and checks: a config init-node writes is one the agent starts on.
    let cfg = NodeConfig::from_toml_str(&text, &o.out)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("these flags do not make a valid node config")?;
    if o.out.exists() && !o.force {
        bail!(
            "{} exists: not replaced (add --force to write it anew; the data directory and \
             the secrets are never touched)",
            o.out.display()
        );
    }
    let user = os_user(&o.os_user)?;
    let made = secrets(&o.secrets_dir, user.as_ref())?;
    base_dir(&cfg, user.as_ref())?;
    write_config(&o.out, &text)?;
    println!(
        "wrote {} (member {} of cluster {})",
        o.out.display(),
        o.name,
        o.cluster
    );
    for f in &made {
        println!("generated {} (0600)", f.display());
    }
    if !made.is_empty() {
        println!(
            "  copy {} to the same path on every other member's host before running \
             init-node there: every member uses the same secrets",
            made.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        );
    }
    println!("Next:");
    println!(
        "  systemctl enable --now pgbaton          # or: pgbaton agent -c {}",
        o.out.display()
    );
    println!("  pgbaton -c {} list", o.out.display());
    Ok(())
}

/// PostgreSQL's OS user, when init-node runs as root (it then owns what is made here);
/// `None` when not root (files are the caller's, who must be that user).
fn os_user(name: &str) -> Result<Option<User>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let user = User::from_name(name)
        .with_context(|| format!("look up OS user {name}"))?
        .with_context(|| {
            format!(
                "OS user {name} (--os-user) does not exist: install PostgreSQL's server \
                 package (it makes user postgres) or create the user"
            )
        })?;
    Ok(Some(user))
}

fn chown(user: Option<&User>, path: &Path) -> Result<()> {
    if let Some(u) = user {
        nix::unistd::chown(path, Some(u.uid), Some(u.gid))
            .with_context(|| format!("chown {} to {}", path.display(), u.name))?;
    }
    Ok(())
}

/// The replication password and the API token: made when missing (random, 0600, the OS
/// user's); an existing one is kept as it is. Returns those it made.
fn secrets(dir: &Path, user: Option<&User>) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut made = Vec::new();
    for name in ["replication.password", "api.token"] {
        let path = dir.join(name);
        if path.exists() {
            continue;
        }
        pgbaton_pg::files::read_or_generate_password_file(&path)?;
        chown(user, &path)?;
        made.push(path);
    }
    Ok(made)
}

/// The directory holding the data directory (and the passfile, the socket, the log): made
/// for the OS user, 0700, when missing. The data directory itself is left to the agent
/// (initdb or a clone).
fn base_dir(cfg: &NodeConfig, user: Option<&User>) -> Result<()> {
    let base = cfg.base_dir();
    if base.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700))?;
    chown(user, &base)
}

/// The config, readable by all (it holds no secret: those are in the files it names).
fn write_config(out: &Path, text: &str) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let header = "# Written by `pgbaton init-node`; every key is described in the README.\n";
    std::fs::write(out, format!("{header}{text}"))
        .with_context(|| format!("write {}", out.display()))?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(dir: &Path) -> InitNode {
        InitNode {
            cluster: "main".into(),
            name: "db1".into(),
            address: "10.0.0.11".into(),
            etcd: vec![
                "http://10.0.0.11:2379".into(),
                "http://10.0.0.12:2379".into(),
            ],
            etcd_ca_file: None,
            networks: vec!["10.0.0.0/24".into()],
            data_dir: Some(dir.join("pg/data")),
            port: 5432,
            api_port: 8008,
            os_user: "postgres".into(),
            secrets_dir: dir.join("secrets"),
            databases: vec!["app".into()],
            synchronous: SyncMode::On,
            out: dir.join("etc/node.toml"),
            force: false,
            listen: None,
        }
    }

    #[test]
    fn the_config_written_is_the_one_the_flags_say_and_parses() {
        let d = tempfile::tempdir().unwrap();
        let f = flags(d.path());
        run(&f).unwrap();
        let text = std::fs::read_to_string(&f.out).unwrap();
        let cfg = NodeConfig::from_toml_str(&text, &f.out).unwrap();
        assert_eq!(cfg.name, "db1");
        assert_eq!(cfg.postgresql.listen_host, "10.0.0.11");
        assert_eq!(cfg.api.listen, "10.0.0.11:8008");
        assert_eq!(cfg.postgresql.allowed_networks, vec!["10.0.0.0/24"]);
        assert_eq!(cfg.replication.synchronous, SyncMode::On);
        assert!(matches!(&cfg.store, StoreConfig::Etcd { endpoints, .. } if endpoints.len() == 2));
        for s in ["replication.password", "api.token"] {
            let p = f.secrets_dir.join(s);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{s}");
        }
        let base = std::fs::metadata(d.path().join("pg")).unwrap();
        assert_eq!(base.permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn existing_secrets_are_kept_and_a_config_is_replaced_only_with_force() {
        let d = tempfile::tempdir().unwrap();
        let mut f = flags(d.path());
        run(&f).unwrap();
        let pw = std::fs::read_to_string(f.secrets_dir.join("replication.password")).unwrap();
        let e = run(&f).unwrap_err().to_string();
        assert!(
            e.contains("exists: not replaced") && e.contains("--force"),
            "{e}"
        );
        f.force = true;
        f.port = 5433;
        run(&f).unwrap();
        let again = std::fs::read_to_string(f.secrets_dir.join("replication.password")).unwrap();
        assert_eq!(pw, again, "a second init-node keeps the secrets");
        assert!(std::fs::read_to_string(&f.out)
            .unwrap()
            .contains("port = 5433"));
    }

    #[test]
    fn bad_flags_name_what_is_wrong_and_write_nothing() {
        let d = tempfile::tempdir().unwrap();
        type Change = Box<dyn Fn(&mut InitNode)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|f| f.etcd.clear()), "--etcd is required"),
            (Box::new(|f| f.networks.clear()), "--network is required"),
            (
                Box::new(|f| f.networks = vec!["10.0.0.0/99".into()]),
                "10.0.0.0/99",
            ),
            (
                Box::new(|f| f.etcd = vec!["10.0.0.1:2379".into()]),
                "10.0.0.1:2379",
            ),
            (Box::new(|f| f.name = "bad name".into()), "bad name"),
            (
                Box::new(|f| f.data_dir = Some("relative/data".into())),
                "relative/data",
            ),
        ];
        for (change, says) in cases {
            let mut f = flags(d.path());
            change(&mut f);
            let e = format!("{:#}", run(&f).unwrap_err());
            assert!(e.contains(says), "expected {says:?} in: {e}");
            assert!(!f.out.exists(), "nothing written for {says:?}");
            assert!(!f.secrets_dir.exists(), "no secret made for {says:?}");
        }
    }

    #[test]
    fn a_name_as_address_is_advertised_and_the_member_listens_on_all_addresses() {
        let d = tempfile::tempdir().unwrap();
        let mut f = flags(d.path());
        f.address = "pg1".into();
        run(&f).unwrap();
        let cfg =
            NodeConfig::from_toml_str(&std::fs::read_to_string(&f.out).unwrap(), &f.out).unwrap();
        assert_eq!(cfg.postgresql.listen_host, "0.0.0.0");
        assert_eq!(cfg.postgresql.connect_host.as_deref(), Some("pg1"));
        assert_eq!(cfg.api.listen, "0.0.0.0:8008");
        assert_eq!(cfg.api_url(), "http://pg1:8008");
        // --listen narrows it to one address.
        f.listen = Some("10.0.0.11".parse().unwrap());
        f.force = true;
        run(&f).unwrap();
        let cfg =
            NodeConfig::from_toml_str(&std::fs::read_to_string(&f.out).unwrap(), &f.out).unwrap();
        assert_eq!(cfg.api.listen, "10.0.0.11:8008");
        assert_eq!(cfg.postgresql.connect_host.as_deref(), Some("pg1"));
    }

    #[test]
    fn init_secrets_makes_the_missing_ones_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("s");
        let o = InitSecrets {
            secrets_dir: dir.clone(),
            os_user: "postgres".into(),
        };
        run_secrets(&o).unwrap();
        let token = std::fs::read_to_string(dir.join("api.token")).unwrap();
        std::fs::remove_file(dir.join("replication.password")).unwrap();
        run_secrets(&o).unwrap();
        assert_eq!(
            token,
            std::fs::read_to_string(dir.join("api.token")).unwrap()
        );
        let mode = std::fs::metadata(dir.join("replication.password"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn ipv6_addresses_are_bracketed_in_the_api_listen_address() {
        assert_eq!(join_host_port("fd00::11", 8008), "[fd00::11]:8008");
        assert_eq!(join_host_port("10.0.0.1", 8008), "10.0.0.1:8008");
    }
}
