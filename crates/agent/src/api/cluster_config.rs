//! `/cluster-config`: the cluster's PostgreSQL parameters kept in the store
//! (`pgbaton_core::cluster_config`). GET shows the record and this member's parameters
//! with where each comes from; PUT (authenticated) replaces the parameters after checking
//! every value against this member's PostgreSQL catalogue, by compare-and-set on the
//! version the editor read: 400 names the key, the value and why, 409 says someone changed
//! it first, and nothing is stored in either case. `"dry_run": true` checks only.
//!
//! The catalogue is read from the local PostgreSQL for each change, on a connection of its
//! own, within 5 s.

use super::*;
use pgbaton_core::cluster_config::{self, Applies, ClusterConfig};
use pgbaton_core::config::ParamValue;
use pgbaton_core::model::HistoryEntry;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRequest {
    /// The version the editor read (0: no record yet).
    version: u64,
    #[serde(default)]
    parameters: BTreeMap<String, ParamValue>,
    /// pgbaton's settings (`cluster_config::own::KEYS`).
    #[serde(default)]
    settings: BTreeMap<String, ParamValue>,
    /// Who asks (`user@host`), for the history.
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// How long a change waits for the local PostgreSQL's catalogue.
const CATALOGUE_LIMIT: Duration = Duration::from_secs(5);

/// The running server's `pg_settings`, on a connection of its own (read for each change, so
/// an extension loaded since counts; nothing kept in memory between changes).
async fn catalogue(cfg: &NodeConfig) -> anyhow::Result<cluster_config::Catalogue> {
    let client = pgbaton_pg::sql::connect(cfg, "postgres").await?;
    pgbaton_pg::sql::catalogue(&client).await
}

/// The record as stored (`None`: none), and its text for the compare-and-set. A record
/// that cannot be read counts as version 0 with no parameters: it can only be replaced.
async fn current(st: &ApiState) -> Result<(ClusterConfig, Option<String>), Response> {
    let text = st.store.config_get().await.map_err(|e| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("read the cluster's config from the store: {e:#}"),
        )
    })?;
    let record = text
        .as_deref()
        .and_then(|t| ClusterConfig::parse(t).ok())
        .unwrap_or_default();
    Ok((record, text))
}

pub(super) async fn get_config(State(st): State<ApiState>) -> Response {
    let (record, text) = match current(&st).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let unreadable = text.as_deref().and_then(|t| ClusterConfig::parse(t).err());
    let pending = read(&st.shared)
        .member
        .as_ref()
        .map(|m| m.pending_restart.clone())
        .unwrap_or_default();
    Json(json!({
        "member": st.cfg.name,
        "cluster": record,
        "unreadable": unreadable,
        "effective": cluster_config::effective(&record.parameters, &st.cfg.postgresql.parameters),
        "settings": cluster_config::effective_settings(&record.settings, &st.cfg),
        "pending_restart": pending,
    }))
    .into_response()
}

pub(super) async fn put_config(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&st.auth, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong credentials: send Authorization: Bearer <token> or basic authentication");
    }
    let req: PutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed request: {e}: expected {{\"version\": N, \"parameters\": {{\"work_mem\": \"64MB\"}}}}"),
            )
        }
    };
    let catalogue = match tokio::time::timeout(CATALOGUE_LIMIT, catalogue(&st.cfg)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{}'s PostgreSQL cannot be asked for its parameters ({e:#}), so the values cannot be checked: send the change to another member's agent (the primary's)",
                    st.cfg.name
                ),
            )
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{}'s PostgreSQL did not list its parameters within {} s: send the change to another member's agent",
                    st.cfg.name,
                    CATALOGUE_LIMIT.as_secs()
                ),
            )
        }
    };
    let (record, text) = match current(&st).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if req.version != record.version {
        return error(
            StatusCode::CONFLICT,
            format!(
                "the cluster's config changed since it was read (it is version {} now, the change was made to version {}): nothing was applied; read it again and redo the change",
                record.version, req.version
            ),
        );
    }
    // Standbys that may be synchronous: not tagged nosync, the leader aside.
    let eligible = read(&st.shared).view.as_ref().map_or(0, |v| {
        let leader = v.leader.as_ref().map(|l| l.member.as_str());
        v.members
            .iter()
            .filter(|m| !m.nosync && Some(m.name.as_str()) != leader)
            .count()
    });
    // Settings in their own types (`"on"`, `2`), whatever the caller sent.
    let settings: Result<BTreeMap<String, ParamValue>, _> = req
        .settings
        .into_iter()
        .map(|(k, v)| cluster_config::own::check(&k, &v).map(|v| (k, v)))
        .collect();
    let settings = match settings {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}: nothing was applied")),
    };
    let new = cluster_config::Contents {
        parameters: req.parameters,
        settings,
    };
    let changes = match cluster_config::check_all(&catalogue, &record, &new, &st.cfg, eligible) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}: nothing was applied")),
    };
    let listed: Vec<serde_json::Value> = changes
        .iter()
        .map(|(c, a)| json!({ "name": c.name, "old": c.old, "new": c.new, "applies": a }))
        .collect();
    if req.dry_run || changes.is_empty() {
        return Json(json!({ "version": record.version, "changes": listed, "stored": false }))
            .into_response();
    }
    let by = req.by.unwrap_or_else(|| "the API".to_string());
    let new = record.next(new, now_ms(), &by);
    match st.store.config_cas(text.as_deref(), &new.text()).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::CONFLICT,
                "the cluster's config changed while this change was checked: nothing was applied; read it again and redo the change",
            )
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("write the cluster's config to the store: {e:#}"),
            )
        }
    }
    record_history(&st, &new, &changes).await;
    Json(json!({ "version": new.version, "changes": listed, "stored": true })).into_response()
}

/// The change in the cluster's history: who, when, and the diff.
async fn record_history(
    st: &ApiState,
    new: &ClusterConfig,
    changes: &[(cluster_config::Change, Applies)],
) {
    let diff: Vec<String> = changes
        .iter()
        .map(|(c, a)| match a {
            Applies::Restart => format!("{c} [restart]"),
            Applies::Reload => c.to_string(),
        })
        .collect();
    let entry = HistoryEntry {
        time_ms: new.updated_ms,
        operation: "edit-config".into(),
        members: vec![],
        result: "done".into(),
        timeline: None,
        lsn: None,
        message: Some(format!(
            "version {} by {}: {}",
            new.version,
            new.by,
            diff.join("; ")
        )),
    };
    // The change is stored: a history that cannot be written is only logged.
    if let Err(e) = st.store.history_append(&entry).await {
        tracing::warn!("record the config change in the history: {e:#}");
    }
}
