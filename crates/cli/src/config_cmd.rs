//! `pgbaton show-config` and `pgbaton edit-config`: the cluster's PostgreSQL parameters,
//! kept in the store (`pgbaton_core::cluster_config`).
//!
//! A change goes through a member's agent (`PUT /cluster-config`): the agent checks every
//! value against its running PostgreSQL's `pg_settings` before anything is stored, and the
//! store takes it only if nobody changed the record since it was read.

use crate::cluster::open_store;
use crate::operate::{api_client, api_token, utc};
use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Table};
use pgbaton_core::cluster_config::{self, ClusterConfig, Contents, Effective};
use pgbaton_core::config::{ClientConfig, ParamValue};
use pgbaton_core::model::{MemberState, MemberStatus};
use pgbaton_store::read_view;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Show the cluster's PostgreSQL parameters (the store's record); with --member, the
    /// parameters that member runs with and where each comes from.
    #[command(name = "show-config")]
    ShowConfig {
        #[arg(long)]
        member: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Change the cluster's PostgreSQL parameters: opens $EDITOR on them (or takes --set,
    /// --unset, --file), checks every value against the running PostgreSQL, shows the
    /// change and asks before storing it. Members reload at once; parameters that need a
    /// restart show as `pending restart` (`pgbaton restart --pending`).
    #[command(name = "edit-config")]
    EditConfig {
        /// NAME=VALUE (repeat): set a parameter (`work_mem=64MB`).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// NAME (repeat): remove a parameter (back to PostgreSQL's default, or the node's).
        #[arg(long = "unset", value_name = "NAME")]
        unset: Vec<String>,
        /// The whole new set from a file (`-` for stdin), as the editor shows it.
        #[arg(long, conflicts_with_all = ["set", "unset"])]
        file: Option<PathBuf>,
        /// Apply without asking.
        #[arg(long)]
        force: bool,
        /// File holding the API token (default: api.token beside a local cluster's store).
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: ConfigCmd, cfg: impl FnOnce() -> Result<ClientConfig>) -> Result<()> {
    let cfg = cfg()?;
    let rt = crate::runtime()?;
    match c {
        ConfigCmd::ShowConfig { member, json } => rt.block_on(show(&cfg, member.as_deref(), json)),
        ConfigCmd::EditConfig {
            set,
            unset,
            file,
            force,
            token_file,
            json,
        } => {
            let how = Edit {
                set,
                unset,
                file,
                force,
                json,
            };
            rt.block_on(edit(&cfg, how, token_file))
        }
    }
}

async fn show(cfg: &ClientConfig, member: Option<&str>, json: bool) -> Result<()> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    if let Some(name) = member {
        let m = view
            .member(name)
            .with_context(|| format!("no member named {name}"))?;
        let v = get(cfg, m).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let eff: Vec<Effective> = serde_json::from_value(v["effective"].clone())
            .context("the agent's answer holds no parameters")?;
        print_effective(name, &eff);
        let settings: Vec<Effective> =
            serde_json::from_value(v["settings"].clone()).unwrap_or_default();
        print_effective(name, &settings);
        let pending: Vec<String> =
            serde_json::from_value(v["pending_restart"].clone()).unwrap_or_default();
        if !pending.is_empty() {
            println!(
                "Pending restart: {} (`pgbaton restart --pending`)",
                pending.join(", ")
            );
        }
        return Ok(());
    }
    let record = match &view.config_text {
        Some(t) => ClusterConfig::parse(t).map_err(anyhow::Error::msg)?,
        None => ClusterConfig::default(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&record)?);
    } else {
        if record.version > 0 {
            println!("# changed {} by {}", utc(record.updated_ms), record.by);
        }
        print!("{}", cluster_config::to_document(&record));
    }
    Ok(())
}

fn print_effective(member: &str, eff: &[Effective]) {
    if eff.is_empty() {
        println!("{member} runs with no parameters from the cluster's config or its node.toml.");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Setting", "Value", "From", "Hides"]);
    for e in eff {
        t.add_row([
            Cell::new(&e.name),
            Cell::new(e.value.render()),
            Cell::new(e.source),
            Cell::new(
                e.overrides
                    .as_ref()
                    .map(ParamValue::render)
                    .unwrap_or_default(),
            ),
        ]);
    }
    println!("{t}");
}

struct Edit {
    set: Vec<String>,
    unset: Vec<String>,
    file: Option<PathBuf>,
    force: bool,
    json: bool,
}

async fn edit(cfg: &ClientConfig, how: Edit, token_file: Option<PathBuf>) -> Result<()> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    let m = checker(
        &view.members,
        view.leader.as_ref().map(|l| l.member.as_str()),
    )?;
    let v = get(cfg, m).await?;
    let record: ClusterConfig = serde_json::from_value(v["cluster"].clone())
        .context("the agent's answer holds no record")?;
    if let Some(why) = v["unreadable"].as_str() {
        eprintln!("warning: {why}");
    }
    let cap = pgbaton_core::model::CAP_CLUSTER_CONFIG;
    for old in view
        .members
        .iter()
        .filter(|m| !m.capabilities.iter().any(|c| c == cap))
    {
        eprintln!(
            "warning: {}'s agent is of an earlier version: it does not apply the cluster's config until it is upgraded",
            old.name
        );
    }
    let new = new_contents(&record, &how)?;
    let token = api_token(cfg, token_file.as_deref())?;
    let body = |dry_run: bool| {
        json!({
            "version": record.version,
            "parameters": new.parameters,
            "settings": new.settings,
            "by": who(),
            "dry_run": dry_run,
        })
    };
    let checked = put(cfg, m, &token, &body(true)).await?;
    let changes = checked["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        if how.json {
            println!("{}", serde_json::to_string_pretty(&checked)?);
        } else {
            println!("No change.");
        }
        return Ok(());
    }
    if !how.json {
        println!(
            "Changes to the cluster's config (version {}):",
            record.version
        );
        for c in &changes {
            println!("  {}", change_line(c));
        }
    }
    if !how.force && !confirm("Apply these changes?")? {
        bail!("not applied");
    }
    let stored = put(cfg, m, &token, &body(false)).await?;
    if how.json {
        println!("{}", serde_json::to_string_pretty(&stored)?);
        return Ok(());
    }
    println!(
        "Stored as version {}: every member reloads within a loop.",
        stored["version"]
    );
    let restart: Vec<&str> = changes
        .iter()
        .filter(|c| c["applies"] == "restart")
        .filter_map(|c| c["name"].as_str())
        .collect();
    if !restart.is_empty() {
        println!(
            "Needs a restart: {} (members show `pending restart`; `pgbaton restart --pending` or `--rolling`).",
            restart.join(", ")
        );
    }
    Ok(())
}

/// The member whose PostgreSQL checks the values: the leader's when it runs, else any
/// member whose PostgreSQL runs.
fn checker<'a>(members: &'a [MemberState], leader: Option<&str>) -> Result<&'a MemberState> {
    let up = |m: &&MemberState| matches!(m.state, MemberStatus::Running | MemberStatus::Streaming);
    members
        .iter()
        .filter(up)
        .find(|m| Some(m.name.as_str()) == leader)
        .or_else(|| members.iter().find(up))
        .context(
            "no member's PostgreSQL runs: the values cannot be checked; start the cluster first",
        )
}

/// The parameters and settings after the edit: from --file, from --set/--unset, or from
/// the editor.
fn new_contents(record: &ClusterConfig, how: &Edit) -> Result<Contents> {
    if let Some(f) = &how.file {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("read the new config from stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?
        };
        return Ok(cluster_config::from_document(&text)?);
    }
    if how.set.is_empty() && how.unset.is_empty() {
        return from_editor(record);
    }
    let mut c = record.contents();
    for s in &how.set {
        c.set(s)?;
    }
    for u in &how.unset {
        if !c.unset(u)? {
            bail!("--unset {u}: the cluster's config does not set it");
        }
    }
    Ok(c)
}

/// $VISUAL or $EDITOR (else vi) on the record as TOML; read back and checked.
fn from_editor(record: &ClusterConfig) -> Result<Contents> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal for an editor: give the change with --set NAME=VALUE or --file FILE");
    }
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let mut f = tempfile::Builder::new()
        .prefix("pgbaton-config-")
        .suffix(".toml")
        .tempfile()
        .context("make a file for the editor")?;
    f.write_all(cluster_config::to_document(record).as_bytes())?;
    f.flush()?;
    // The editor may be a command with arguments (`code --wait`): through the shell.
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(f.path())
        .status()
        .with_context(|| format!("run the editor {editor}"))?;
    if !status.success() {
        bail!("the editor {editor} exited with {status}: nothing changed");
    }
    let text = std::fs::read_to_string(f.path())?;
    Ok(cluster_config::from_document(&text)?)
}

fn change_line(c: &Value) -> String {
    let v = |x: &Value| -> String {
        serde_json::from_value::<ParamValue>(x.clone())
            .map(|p| p.render())
            .unwrap_or_default()
    };
    let name = c["name"].as_str().unwrap_or("?");
    let line = match (c["old"].is_null(), c["new"].is_null()) {
        (true, false) => format!("+ {name} = {}", v(&c["new"])),
        (false, true) => format!("- {name} (was {})", v(&c["old"])),
        _ => format!("~ {name} = {} (was {})", v(&c["new"]), v(&c["old"])),
    };
    if c["applies"] == "restart" {
        format!("{line}   [needs a restart]")
    } else {
        line
    }
}

/// Ask on the terminal; without one, refuse (scripts say --force).
fn confirm(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not applied: stdin is not a terminal to confirm on; add --force to apply without asking");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `user@host`, for the history.
pub(crate) fn who() -> String {
    let user = std::env::var("USER")
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "?".into());
    // The kernel's name for this host (no `hostname` feature of nix needed for one file).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}

async fn get(cfg: &ClientConfig, m: &MemberState) -> Result<Value> {
    let url = format!("{}/cluster-config", m.api_url.trim_end_matches('/'));
    let resp = api_client(cfg, &url)?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("reach {}'s agent at {url}", m.name))?;
    answer(&m.name, resp).await
}

async fn put(cfg: &ClientConfig, m: &MemberState, token: &str, body: &Value) -> Result<Value> {
    let url = format!("{}/cluster-config", m.api_url.trim_end_matches('/'));
    let resp = api_client(cfg, &url)?
        .put(&url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("reach {}'s agent at {url}", m.name))?;
    answer(&m.name, resp).await
}

async fn answer(member: &str, resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{member}'s agent answered {status}: {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body)
}
