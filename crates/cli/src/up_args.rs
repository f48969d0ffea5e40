//! `pgbaton up`'s flags, and the options they make for `local::up`.

use crate::local;
use anyhow::Result;
use pgbaton_core::sync::SyncMode;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Directory for the whole cluster (data, logs, configs). Created if missing.
    #[arg(long)]
    dir: PathBuf,
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// PostgreSQL port of the first member; member i uses PORT_BASE+i-1, and its agent's
    /// API listens on PORT_BASE+1000+i-1.
    #[arg(long, default_value_t = 15432)]
    port_base: u16,
    /// Cluster name.
    #[arg(long, default_value = "pgbaton")]
    cluster: String,
    /// Database to create at bootstrap (repeat for several).
    #[arg(long = "database")]
    databases: Vec<String>,
    /// Archive WAL into DIR/archive (archive_mode on).
    #[arg(long, conflicts_with = "backup")]
    archive: bool,
    /// pgBackRest backups and WAL archive in the repository DIR/backup (Debian's
    /// `pgbackrest` package): the stanza is made at bootstrap, `pgbaton backup` takes one.
    #[arg(long)]
    backup: bool,
    /// Synchronous replication: off (the default, as on a lab machine a lost commit
    /// costs nothing), on (FIRST n: each commit waits for n named standbys) or quorum
    /// (ANY n of the standbys). Production clusters want on or quorum.
    #[arg(long, value_name = "MODE", default_value = "off", value_parser = crate::parse_sync_mode)]
    synchronous: SyncMode,
    /// With --synchronous: how many standbys acknowledge each commit.
    #[arg(long, default_value_t = 1)]
    synchronous_node_count: u32,
    /// Give up waiting for a healthy cluster after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// How long the primary keeps a pgbaton slot that belongs to no member.
    #[arg(long, default_value_t = 300)]
    orphan_slot_grace: u64,
    /// Keep the cluster's state in this etcd (v3) endpoint instead of DIR/store.db, like
    /// members on several machines do (repeat for an etcd cluster).
    #[arg(long = "etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// With https:// --etcd endpoints: the CA (PEM) that signed etcd's certificates.
    #[arg(long, value_name = "FILE")]
    etcd_ca_file: Option<PathBuf>,
    /// A client certificate for etcd (its --client-cert-auth), with --etcd-key-file.
    #[arg(long, value_name = "FILE")]
    etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (0600).
    #[arg(long, value_name = "FILE")]
    etcd_key_file: Option<PathBuf>,
    /// An etcd user (etcd with `auth enable`), with --etcd-password-file.
    #[arg(long, value_name = "NAME")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (0600).
    #[arg(long, value_name = "FILE")]
    etcd_password_file: Option<PathBuf>,
    /// TLS everywhere (the default): a CA and a certificate per member in DIR/tls;
    /// PostgreSQL with `hostssl` lines only, members verifying each other
    /// (sslmode=verify-full); the agents' APIs over https. Kept for scripts that say it.
    #[arg(long, conflicts_with = "no_tls")]
    tls: bool,
    /// No TLS: PostgreSQL and the APIs in the clear (a lab on one machine, a benchmark
    /// whose clients do not speak TLS).
    #[arg(long)]
    no_tls: bool,
}

impl UpArgs {
    pub fn options(self) -> Result<local::UpOptions> {
        // --tls is the default: the flag is kept for scripts that say it.
        let _ = self.tls;
        // Absolute: pgbaton.toml names them, and it is read from anywhere.
        let absolute = |p: Option<PathBuf>| p.map(std::path::absolute).transpose();
        Ok(local::UpOptions {
            etcd_access: pgbaton_core::config::EtcdAccess {
                ca_file: absolute(self.etcd_ca_file)?,
                cert_file: absolute(self.etcd_cert_file)?,
                key_file: absolute(self.etcd_key_file)?,
                username: self.etcd_user,
                password_file: absolute(self.etcd_password_file)?,
            },
            dir: self.dir,
            nodes: self.nodes,
            port_base: self.port_base,
            cluster: self.cluster,
            databases: self.databases,
            archive: self.archive,
            backup: self.backup,
            restore: None,
            synchronous: self.synchronous,
            synchronous_node_count: self.synchronous_node_count,
            timeout_s: self.timeout,
            orphan_slot_grace_s: self.orphan_slot_grace,
            etcd: self.etcd,
            tls: !self.no_tls,
        })
    }
}
