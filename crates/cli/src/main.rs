//! `pgbaton`: one binary for the agent, the local cluster (`up`/`down`) and the operator's
//! commands. Flags and config are parsed with no side effects first; `main` turns errors
//! into a message on stderr and a non-zero exit code.

mod archive;
mod backup;
mod certs;
mod cluster;
mod config_cmd;
mod init_node;
mod local;
mod members;
mod operate;
mod rolling;
mod schedule;
mod up_args;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pgbaton_core::sync::SyncMode;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pgbaton",
    version,
    about = "High availability for PostgreSQL streaming replication"
)]
struct Cli {
    /// Config file: a node config for `agent`; the cluster's client config (DIR/pgbaton.toml
    /// written by `up`) or any node config for the other commands.
    #[arg(short = 'c', long = "config", global = true, env = "PGBATON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent for one node (keeps its PostgreSQL running in its role).
    Agent,
    /// The agent's fence watchdog process (started by the agent itself; commands on stdin).
    #[command(hide = true, name = "fence-watchdog")]
    FenceWatchdog { data_dir: std::path::PathBuf },
    #[command(flatten)]
    Wal(archive::WalCmd),
    /// The WAL archive: `archive check --dir DIR` (or `--repo R --stanza S`, pgBackRest's)
    /// finds holes across timelines.
    Archive {
        #[command(subcommand)]
        cmd: ArchiveCmd,
    },
    /// Bring up a local cluster: a primary and N-1 streaming standbys on this machine.
    Up(up_args::UpArgs),
    /// Make TLS certificates: the cluster's CA in DIR (when missing) and one member's
    /// certificate naming its hosts. Copy the member's files to its host.
    Certs {
        /// Where the CA is kept and the files are written.
        #[arg(long)]
        dir: PathBuf,
        /// The cluster's name (in the CA's subject).
        #[arg(long, default_value = "pgbaton")]
        cluster: String,
        /// The member the certificate is for.
        #[arg(long)]
        member: String,
        /// A host name or IP address others use to reach it (repeat for several).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Write a validated node config for one host of a cluster on several hosts (etcd as
    /// the store), and the secrets it names when they are missing.
    #[command(name = "init-node")]
    InitNode(init_node::InitNode),
    /// Make the secrets every member shares (replication password, API token) when missing,
    /// and nothing else (for the host or container that makes them first).
    #[command(name = "init-secrets")]
    InitSecrets(init_node::InitSecrets),
    /// Stop a local cluster made by `up`.
    Down {
        #[arg(long)]
        dir: PathBuf,
        /// Also delete the cluster's directory: all data, logs and configs.
        #[arg(long)]
        purge: bool,
    },
    /// Show the members of the cluster.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Open psql on a member (the primary when none is named) as the database superuser.
    Psql {
        member: Option<String>,
        /// Arguments passed to psql, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Print a connection string for a member (the primary when none is named).
    Dsn { member: Option<String> },
    /// Promote a standby while the primary is down or gone (refused while it is healthy).
    Promote {
        member: String,
        /// Promote even though another standby has more WAL (what only it has is lost).
        #[arg(long)]
        force: bool,
        /// If the primary still holds the leader lease (its host just vanished), wait for the
        /// lease to run out instead of refusing (up to --timeout).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Make a former primary a standby of the current primary (pg_rewind when it diverged).
    Rejoin {
        member: String,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Stop a standby, deregister it and drop its replication slot.
    Remove {
        member: String,
        /// Also delete its data directory.
        #[arg(long)]
        purge: bool,
        /// With --purge: delete it even when it is the most advanced copy of the data.
        #[arg(long, requires = "purge")]
        force: bool,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Re-clone a standby from the primary (its data directory is replaced).
    Reinit {
        member: String,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Planned change of primary, with no data loss.
    Switchover {
        /// The new primary (default: the most advanced streaming standby).
        #[arg(long)]
        to: Option<String>,
        /// Schedule it: `+10m`, `YYYY-MM-DD HH:MM` (UTC) or RFC 3339. The agents carry it
        /// out then, checked again against the cluster as it is; `pgbaton cancel` withdraws it.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Restart a member's PostgreSQL through its agent's API; or, with --pending or
    /// --rolling, several members one at a time, standbys first, each streaming again before
    /// the next goes down.
    Restart {
        #[arg(required_unless_present_any = ["pending", "rolling"], conflicts_with_all = ["pending", "rolling"])]
        member: Option<String>,
        /// The members whose changed parameters wait for a restart (`pending restart` in
        /// `list`); the primary last, in place (with --rolling: through a switchover).
        #[arg(long)]
        pending: bool,
        /// Every member (with --pending, those waiting): standbys first, then a switchover
        /// to a caught-up standby, which restarts the former primary as a standby.
        #[arg(long)]
        rolling: bool,
        /// Schedule the member's restart: `+10m`, `YYYY-MM-DD HH:MM` (UTC) or RFC 3339.
        #[arg(long, value_name = "TIME", requires = "member")]
        at: Option<String>,
        /// File holding the API token (default: api.token beside a local cluster's store).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        common: OpArgs,
    },
    /// Make a member's PostgreSQL re-read its configuration, through its agent's API.
    Reload {
        member: String,
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        common: OpArgs,
    },
    #[command(flatten)]
    Backup(backup::BackupCmd),
    #[command(flatten)]
    Config(config_cmd::ConfigCmd),
    /// Withdraw the operation scheduled with --at, before its time.
    Cancel,
    /// Pause the cluster: the agents take no automatic action (operations still run).
    Pause,
    /// End a pause.
    Resume,
    /// The cluster's history of operations.
    History {
        #[arg(long)]
        json: bool,
        /// How many of the latest entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Check that the archive has every segment recovery needs, from its first to its newest
    /// timeline's last (exit 1 when not, naming what is missing): an archive directory
    /// (`--dir`), or a pgBackRest repository's stanza (`--repo --stanza`).
    Check {
        #[arg(long, required_unless_present = "repo", conflicts_with = "repo")]
        dir: Option<PathBuf>,
        /// A pgBackRest repository (backup.repo_path).
        #[arg(long, requires = "stanza")]
        repo: Option<PathBuf>,
        /// Its stanza (backup.stanza; default there: the cluster's name).
        #[arg(long)]
        stanza: Option<String>,
        /// The pgBackRest executable.
        #[arg(long, default_value = "/usr/bin/pgbackrest")]
        bin: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct OpArgs {
    /// Print the operation and the cluster as JSON.
    #[arg(long)]
    json: bool,
    /// Give up following the operation after this many seconds (the agents carry on).
    #[arg(long, default_value_t = 180)]
    timeout: u64,
}

fn via_agent(
    config: Option<PathBuf>,
    action: &str,
    member: String,
    token_file: Option<PathBuf>,
    common: OpArgs,
) -> Result<ExitCode> {
    let cfg = cluster::load_client_config(&config_path(config))?;
    let o = operate::OpOptions {
        json: common.json,
        timeout_s: common.timeout,
        force: false,
        wait: false,
    };
    runtime()?.block_on(operate::via_agent(
        &cfg,
        &member,
        action,
        token_file.as_deref(),
        &o,
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn operate(
    config: Option<PathBuf>,
    kind: pgbaton_core::model::OpKind,
    common: OpArgs,
    force: bool,
    wait: bool,
) -> Result<ExitCode> {
    let cfg = cluster::load_client_config(&config_path(config))?;
    let o = operate::OpOptions {
        json: common.json,
        timeout_s: common.timeout,
        force,
        wait,
    };
    runtime()?.block_on(operate::run(&cfg, kind, &o))?;
    Ok(ExitCode::SUCCESS)
}

fn scheduled(
    cfg: &pgbaton_core::config::ClientConfig,
    kind: pgbaton_core::model::OpKind,
    at: &str,
    json: bool,
) -> Result<ExitCode> {
    let at_ms = schedule::parse_at(at, pgbaton_store::now_ms())?;
    runtime()?.block_on(schedule::post(cfg, kind, at_ms, json))?;
    Ok(ExitCode::SUCCESS)
}

fn parse_sync_mode(s: &str) -> std::result::Result<SyncMode, String> {
    match s {
        "off" => Ok(SyncMode::Off),
        "on" => Ok(SyncMode::On),
        "quorum" => Ok(SyncMode::Quorum),
        _ => Err(format!(
            "{s:?} is not a synchronous mode: use off, on or quorum"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGBATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(2)
}

fn runtime_with(workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("start the async runtime")
}

/// `-c`, else `./pgbaton.toml`, else the deployed host's `/etc/pgbaton/node.toml` (what
/// `init-node` writes): on a member's host, `pgbaton list` needs no flag.
fn config_path(cli_config: Option<PathBuf>) -> PathBuf {
    cli_config.unwrap_or_else(|| {
        let here = PathBuf::from("pgbaton.toml");
        let host = PathBuf::from(init_node::CONFIG_DIR).join("node.toml");
        if !here.exists() && host.exists() {
            host
        } else {
            here
        }
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Wal(c) => Ok(archive::run(c)),
        Cmd::Archive {
            cmd:
                ArchiveCmd::Check {
                    dir,
                    repo,
                    stanza,
                    bin,
                    json,
                },
        } => match (dir, repo, stanza) {
            (Some(dir), _, _) => archive::check(&dir, json),
            (None, Some(repo), Some(stanza)) => archive::check_repo(&bin, &repo, &stanza, json),
            _ => anyhow::bail!("archive check needs --dir DIR, or --repo REPO --stanza STANZA"),
        },
        Cmd::FenceWatchdog { data_dir } => {
            pgbaton_agent::watchdog::watchdog_main(&data_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agent => {
            let path = cli
                .config
                .context("`pgbaton agent` needs a node config: pgbaton agent -c NODE.toml")?;
            let mut cfg = cluster::load_node_config(&path)?;
            pgbaton_agent::resolve_pgbaton_bin(&mut cfg)?;
            pgbaton_agent::resolve_data_dir(&mut cfg)?;
            init_tracing();
            // Drop privileges before any thread exists.
            let (ident, checked) =
                pgbaton_agent::become_os_user(&cfg, |_| pgbaton_agent::preflight(&cfg))?;
            let watchdog = pgbaton_agent::watchdog::Watchdog::spawn(
                pgbaton_agent::watchdog::Launcher::this_binary(&cfg.data_dir),
                &cfg.data_dir,
            )?;
            // One worker: an idle agent's tasks (the loop, the API, the failsafe keeper) wait
            // on I/O almost all the time, and a second worker costs wake-ups between threads
            // (measured: about a sixth of an idle agent's CPU). The fence does not depend on
            // the runtime: its monitor is a thread of its own and the watchdog a process.
            let rt = runtime_with(1)?;
            // The agent runs as a task on the runtime's workers, not on this thread: its
            // replies from PostgreSQL and the store then wake the thread that polls them,
            // where a future on this thread takes a hand-off between threads per reply.
            rt.block_on(async move {
                tokio::spawn(async move {
                    let (agent, listener) =
                        pgbaton_agent::Agent::new(cfg, ident, checked, Some(watchdog)).await?;
                    agent.run(listener, shutdown_signal()).await
                })
                .await
                .context("the agent's task ended abnormally")?
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Up(a) => {
            runtime()?.block_on(local::up(a.options()?))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Certs {
            dir,
            cluster,
            member,
            hosts,
        } => {
            certs::certs(&dir, &cluster, &member, &hosts)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::InitNode(o) => {
            init_node::run(&o)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::InitSecrets(o) => {
            init_node::run_secrets(&o)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { dir, purge } => {
            runtime()?.block_on(local::down(&dir, purge))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backup(c) => {
            backup::run(c, || cluster::load_client_config(&config_path(cli.config)))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config(c) => {
            config_cmd::run(c, || cluster::load_client_config(&config_path(cli.config)))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::List { json } => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            runtime()?.block_on(members::list(&cfg, json))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Psql { member, args } => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            let code = runtime()?.block_on(members::psql(&cfg, member.as_deref(), &args))?;
            Ok(ExitCode::from(code))
        }
        Cmd::Promote {
            member,
            force,
            wait,
            common,
        } => operate(
            cli.config,
            pgbaton_core::model::OpKind::Promote { member, force },
            common,
            force,
            wait,
        ),
        Cmd::Rejoin { member, common } => operate(
            cli.config,
            pgbaton_core::model::OpKind::Rejoin { member },
            common,
            false,
            false,
        ),
        Cmd::Remove {
            member,
            purge,
            force,
            common,
        } => operate(
            cli.config,
            pgbaton_core::model::OpKind::Remove { member, purge },
            common,
            force,
            false,
        ),
        Cmd::Reinit { member, common } => operate(
            cli.config,
            pgbaton_core::model::OpKind::Reinit { member },
            common,
            false,
            false,
        ),
        Cmd::Switchover { to, at, common } => {
            let cfg = cluster::load_client_config(&config_path(cli.config.clone()))?;
            let rt = runtime()?;
            let kind = rt.block_on(operate::switchover_kind(&cfg, to))?;
            match at {
                Some(at) => scheduled(&cfg, kind, &at, common.json),
                None => operate(cli.config, kind, common, false, false),
            }
        }
        Cmd::Restart {
            member: Some(member),
            at: Some(at),
            common,
            ..
        } => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            scheduled(
                &cfg,
                pgbaton_core::model::OpKind::Restart { member },
                &at,
                common.json,
            )
        }
        Cmd::Restart {
            member: Some(member),
            token_file,
            common,
            ..
        } => via_agent(cli.config, "restart", member, token_file, common),
        Cmd::Cancel => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            runtime()?.block_on(schedule::cancel(&cfg, &config_cmd::who()))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restart {
            member: None,
            pending,
            rolling,
            common,
            ..
        } => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            let o = operate::OpOptions {
                json: common.json,
                timeout_s: common.timeout,
                force: false,
                wait: false,
            };
            runtime()?.block_on(rolling::run(&cfg, pending, rolling, &o))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reload {
            member,
            token_file,
            common,
        } => via_agent(cli.config, "reload", member, token_file, common),
        Cmd::Pause | Cmd::Resume => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            runtime()?.block_on(operate::set_paused(&cfg, matches!(cli.cmd, Cmd::Pause)))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::History { json, limit } => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            runtime()?.block_on(operate::history(&cfg, json, limit))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dsn { member } => {
            let cfg = cluster::load_client_config(&config_path(cli.config))?;
            runtime()?.block_on(members::dsn(&cfg, member.as_deref()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
