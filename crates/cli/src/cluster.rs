//! Loading configs and opening the cluster's store: what every command shares. The cluster
//! itself is read with `pgbaton_store::read_view`.

use anyhow::{Context, Result};
use pgbaton_core::config::{ClientConfig, NodeConfig};
use pgbaton_store::Store;
use std::path::Path;
use std::sync::Arc;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))
}

pub fn load_node_config(path: &Path) -> Result<NodeConfig> {
    Ok(NodeConfig::from_toml_str(&read(path)?, path)?)
}

/// A client config, or a node config (whose cluster and store are used).
pub fn load_client_config(path: &Path) -> Result<ClientConfig> {
    let text = read(path)?;
    let is_node = text
        .parse::<toml::Table>()
        .map(|t| t.contains_key("data_dir") || t.contains_key("name"))
        .unwrap_or(false);
    if is_node {
        let n = NodeConfig::from_toml_str(&text, path)?;
        // A node's own API CA reaches the other members' APIs too; its certificate and
        // key only where the APIs ask for one (the key is the agent's user's own, and a
        // CLI run by another user could not read it: review finding).
        let api = n
            .api
            .tls
            .map(|t| {
                let id = t.verify_client;
                pgbaton_core::config::ClientApi {
                    ca_file: Some(t.ca_file),
                    cert_file: id.then_some(t.cert_file),
                    key_file: id.then_some(t.key_file),
                }
            })
            .unwrap_or_default();
        return Ok(ClientConfig {
            cluster: n.cluster,
            store: n.store,
            api,
        });
    }
    Ok(ClientConfig::from_toml_str(&text, path)?)
}

/// Open the cluster's store; a local store file must exist already (a client never creates one).
pub fn open_store(cfg: &ClientConfig) -> Result<Arc<dyn Store>> {
    if let pgbaton_core::config::StoreConfig::Local { path } = &cfg.store {
        if !path.exists() {
            anyhow::bail!(
                "the store file {} does not exist: is the cluster up? (pgbaton up --dir DIR makes one)",
                path.display()
            );
        }
    }
    // A store that does not answer is an error naming it, not a CLI that hangs.
    let store = pgbaton_store::open(&cfg.store, &cfg.cluster)?;
    Ok(pgbaton_store::Bounded::wrap(
        store,
        std::time::Duration::from_secs(10),
    ))
}
