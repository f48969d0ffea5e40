//! The agent's HTTP API (axum).
//!
//! - Health checks for load balancers, with Patroni's semantics (200 or 503 only, on GET,
//!   HEAD and OPTIONS): `/primary` (`/read-write`, `/leader`), `/replica`, `/read-only`,
//!   `/sync`, `/async`, `/health`, `/liveness`, `/readiness`. The decision is
//!   `pgbaton_core::health`, pure; the handlers only gather what the loop last saw.
//! - JSON: `/cluster` (the model of `pgbaton list --json`), `/member`, `/history`, `/config`
//!   (this node's config file, resolved), `/cluster-config` (the cluster's parameters in the
//!   store; PUT, authenticated, changes them: `cluster_config`).
//! - Operations (POST, authenticated): `/switchover`, `/failover`, `/restart`, `/reinit`,
//!   `/reload`. They post the same requests the CLI posts; 202 when accepted, 412 when refused,
//!   400 for a malformed body, 401 without valid credentials.
//! - `/metrics` (Prometheus text format) and the status page at `/`.
//!
//! Architecture invariant: no handler blocks on the loop, and none but `PUT
//! /cluster-config` does PostgreSQL IO (a connection of its own to read `pg_settings`,
//! bounded by 5 s); the health endpoints answer from the loop's last snapshot, so a slow
//! PostgreSQL cannot make the API hang (a stale snapshot fails `/liveness`).

mod backup;
mod cluster_config;
mod failsafe;
pub mod metrics;
pub mod page;
pub mod serve;
pub mod tls;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use pgbaton_core::config::NodeConfig;
use pgbaton_core::decide::ClusterView;
use pgbaton_core::health::{self, Endpoint, Facts, Query};
use pgbaton_core::model::{MemberState, OpKind, Operation};
use pgbaton_core::ops;
use pgbaton_store::{now_ms, Store};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the loop shares with the API.
#[derive(Default)]
pub struct Shared {
    pub member: Option<MemberState>,
    /// The store as the last loop saw it.
    pub view: Option<ClusterView>,
    pub last_loop: Option<Instant>,
    /// The timing the agent runs with: node.toml's `[timing]`, with the cluster's config
    /// over it (`Agent::apply_timing`, at the start of each loop). Read where it is used:
    /// it may change while the agent runs.
    pub timing: pgbaton_core::config::TimingConfig,
    /// How long the last loop took.
    pub last_loop_duration: Duration,
    /// Promotions this agent performed.
    pub promotions: u64,
    /// Standby: ms since the last replayed transaction committed (0 when caught up).
    pub replay_lag_ms: Option<u64>,
    /// How long a failsafe confirmation binds this member: node.toml's TTL, not the
    /// cluster's. A restarted agent holds itself to a promise it may have given for that
    /// long before it has read the cluster's config; the primary extends its fence by the
    /// shortest promise it was given (`promise_ms` in the answer), so a promise shorter
    /// than its TTL is safe.
    pub promise_ms: u64,
    /// The failsafe handshake: the promise this member gave a primary, and whether it
    /// leads or is taking the lease (the one-lock rule lives in the type).
    pub failsafe: pgbaton_core::failover::FailsafeGate,
    /// When the fence watchdog stops PostgreSQL unless the lease is renewed (armed only).
    pub fence_deadline: Option<Instant>,
    /// Failsafe rounds this agent ran as a primary without the store, and how many every
    /// other member confirmed.
    pub failsafe_rounds: u64,
    pub failsafe_confirmed: u64,
}

pub type SharedState = Arc<RwLock<Shared>>;

/// Credentials a mutating request must present (either one).
#[derive(Clone, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub basic: Option<(String, String)>,
}

#[derive(Clone)]
pub struct ApiState {
    pub shared: SharedState,
    pub store: Arc<dyn Store>,
    pub cfg: Arc<NodeConfig>,
    pub auth: Auth,
    /// The backups this agent runs (`[backup]`).
    pub backups: crate::backup::Jobs,
}

/// Paths of the health endpoints (each answers GET, HEAD and OPTIONS).
pub const HEALTH_PATHS: &[&str] = &[
    "/primary",
    "/read-write",
    "/leader",
    "/master",
    "/replica",
    "/standby",
    "/read-only",
    "/sync",
    "/synchronous",
    "/quorum",
    "/async",
    "/asynchronous",
    "/health",
    "/readiness",
];

pub fn router(state: ApiState) -> Router {
    let mut r = Router::new()
        .route("/", get(page::index))
        .route("/liveness", any(liveness))
        .route("/cluster", get(cluster))
        .route("/member", get(member))
        .route("/patroni", get(member))
        .route("/history", get(history))
        .route("/config", get(config))
        .route(
            "/cluster-config",
            get(cluster_config::get_config).put(cluster_config::put_config),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/switchover", post(switchover))
        .route("/failover", post(failover))
        .route("/restart", post(restart))
        .route("/reinit", post(reinit))
        .route("/reinitialize", post(reinit))
        .route("/reload", post(reload))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/failsafe", post(failsafe::failsafe))
        .route("/backup", get(backup::status).post(backup::start))
        .route("/backups", get(backup::list));
    for p in HEALTH_PATHS {
        // With and without a trailing slash: load balancer configs in the wild have both.
        r = r
            .route(p, any(health_check))
            .route(&format!("{p}/"), any(health_check));
    }
    r.with_state(state)
}

fn read(s: &SharedState) -> std::sync::RwLockReadGuard<'_, Shared> {
    s.read().unwrap_or_else(|e| e.into_inner())
}

fn loop_alive(s: &Shared) -> bool {
    // Alive while the loop ran within three of its intervals (plus room for a long action).
    s.last_loop.is_some_and(|t| {
        t.elapsed()
            <= Duration::from_millis(s.timing.loop_interval_ms) * 3 + Duration::from_secs(60)
    })
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

#[allow(clippy::result_large_err)] // a ready response is the idiomatic error here
fn status_only_methods(method: &Method) -> Result<(), Response> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Ok(())
    } else {
        Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "health endpoints answer GET, HEAD and OPTIONS",
        ))
    }
}

/// The facts a health decision needs, from the loop's last snapshot.
pub fn facts<'a>(s: &'a Shared, cfg: &NodeConfig) -> Facts<'a> {
    let me = s.member.as_ref();
    let view = s.view.as_ref();
    let leader = view
        .and_then(|v| v.leader.as_ref())
        .filter(|l| l.expires_ms > now_ms());
    let is_leader = leader.is_some_and(|l| l.member == cfg.name);
    let leader_lsn = leader
        .and_then(|l| view?.members.iter().find(|m| m.name == l.member))
        .and_then(|m| m.lsn);
    let lag_bytes = match (me.and_then(|m| m.lsn), leader_lsn) {
        (Some(mine), Some(theirs)) => Some(mine.bytes_until(theirs)),
        _ if is_leader => Some(0),
        _ => None,
    };
    Facts {
        me,
        is_leader,
        lag_bytes,
        noloadbalance: cfg.tags.noloadbalance,
        loop_alive: loop_alive(s),
        sync: view.and_then(|v| pgbaton_core::sync::role_of(v, &cfg.name)),
    }
}

async fn health_check(
    State(st): State<ApiState>,
    method: Method,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> Response {
    if let Err(r) = status_only_methods(&method) {
        return r;
    }
    let Some(ep) = Endpoint::from_path(uri.path()) else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    // Health checks answer 200 or 503 only: a check whose parameters make no sense passes
    // no backend, and the body says why.
    let query = match Query::parse(q.as_deref()) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("bad query parameter: {e}"),
            )
        }
    };
    let s = read(&st.shared);
    let ok = health::healthy(ep, &facts(&s, &st.cfg), &query);
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = match &s.member {
        Some(m) => {
            json!({ "name": m.name, "role": m.role, "state": m.state, "timeline": m.timeline, "lsn": m.lsn })
        }
        None => json!({ "state": "unknown" }),
    };
    (code, Json(body)).into_response()
}

async fn liveness(State(st): State<ApiState>, method: Method) -> Response {
    if let Err(r) = status_only_methods(&method) {
        return r;
    }
    let code = if loop_alive(&read(&st.shared)) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    code.into_response()
}

async fn member(State(st): State<ApiState>) -> Response {
    match &read(&st.shared).member {
        Some(m) => Json(m.clone()).into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not observed its member yet",
        ),
    }
}

async fn cluster(State(st): State<ApiState>) -> Response {
    let s = read(&st.shared);
    let Some(v) = &s.view else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not read the store yet",
        );
    };
    let mut r = serde_json::to_value(pgbaton_core::report::of_view(&st.cfg.cluster, v, now_ms()))
        .unwrap_or_default();
    r["operation"] = serde_json::to_value(&v.op).unwrap_or_default();
    Json(r).into_response()
}

async fn history(State(st): State<ApiState>) -> Response {
    match st.store.history(100).await {
        Ok(h) => Json(h).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("read the history from the store: {e:#}"),
        ),
    }
}

async fn config(State(st): State<ApiState>) -> Response {
    // Only paths to secrets are in the config, never a secret. The timing is the one the
    // agent runs with: node.toml's, or the cluster's config over it.
    let mut cfg = st.cfg.as_ref().clone();
    cfg.timing = read(&st.shared).timing;
    Json(cfg).into_response()
}

// ---- operations ------------------------------------------------------------------------

/// Constant-time equality, so a wrong token's timing says nothing about the right one.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = T.iter().position(|t| *t == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Does the request carry valid credentials? Without configured credentials, nothing does.
pub fn authorized(auth: &Auth, headers: &HeaderMap) -> bool {
    let Some(h) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let (Some(tok), Some(given)) = (&auth.token, h.strip_prefix("Bearer ")) {
        if same(tok.as_bytes(), given.trim().as_bytes()) {
            return true;
        }
    }
    if let (Some((user, pass)), Some(b64)) = (&auth.basic, h.strip_prefix("Basic ")) {
        if let Some(raw) = decode_base64(b64.trim()) {
            let want = format!("{user}:{pass}");
            return same(want.as_bytes(), &raw);
        }
    }
    false
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OpBody {
    /// Switchover: the current primary, to guard against a stale request (optional).
    leader: Option<String>,
    /// Switchover / failover: the member to promote.
    candidate: Option<String>,
    /// Failover: promote even if another standby has more WAL.
    #[serde(default)]
    force: bool,
}

#[allow(clippy::result_large_err)]
fn parse_body(body: &Bytes) -> Result<OpBody, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(OpBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("the body is not a valid request: {e} (expected JSON like {{\"candidate\": \"n2\"}})"),
        )
    })
}

/// Authenticate, check and post an operation. 202 with the operation, or the refusal.
async fn submit(
    st: &ApiState,
    headers: &HeaderMap,
    kind: impl FnOnce(&OpBody, &ops::Snapshot) -> Result<OpKind, String>,
    body: &Bytes,
) -> Response {
    if !authorized(&st.auth, headers) {
        let how = if st.auth.token.is_none() && st.auth.basic.is_none() {
            "no credentials are configured for this agent (api.auth_token_file or api.auth_username): mutating requests are refused"
        } else {
            "missing or wrong credentials: send Authorization: Bearer <token> or basic authentication"
        };
        return error(StatusCode::UNAUTHORIZED, how);
    }
    let b = match parse_body(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // Read the store afresh (the loop's snapshot may be a loop old): a request is checked
    // against the cluster as it is now, like the CLI does.
    let view = match pgbaton_store::read_view(&*st.store).await {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("read the cluster from the store: {e:#}"),
            )
        }
    };
    let snap = ops::Snapshot::at(&view, now_ms());
    let kind = match kind(&b, &snap) {
        Ok(k) => k,
        Err(e) => return error(StatusCode::PRECONDITION_FAILED, e),
    };
    if let Err(reason) = ops::check(&kind, &snap, b.force) {
        return error(
            StatusCode::PRECONDITION_FAILED,
            format!("{} refused: {reason}", kind.name()),
        );
    }
    let op = Operation::new(format!("{}-{}", kind.name(), now_ms()), kind, now_ms());
    match st.store.op_post(&op).await {
        Ok(true) => (StatusCode::ACCEPTED, Json(json!({ "operation": op }))).into_response(),
        Ok(false) => error(
            StatusCode::PRECONDITION_FAILED,
            "another operation is in progress",
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("post the operation to the store: {e:#}"),
        ),
    }
}

async fn switchover(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    submit(
        &st,
        &headers,
        |b, snap| {
            let from = snap
                .healthy_primary()
                .map(|m| m.name.clone())
                .ok_or("no healthy primary to switch over from")?;
            if let Some(l) = &b.leader {
                if *l != from {
                    return Err(format!("{l} is not the primary ({from} is)"));
                }
            }
            let to = match &b.candidate {
                Some(c) => c.clone(),
                None => ops::pick_candidate(snap)?,
            };
            Ok(OpKind::Switchover { from, to })
        },
        &body,
    )
    .await
}

async fn failover(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    submit(
        &st,
        &headers,
        |b, _| {
            let member = b
                .candidate
                .clone()
                .ok_or("failover needs a candidate: {\"candidate\": \"n2\"}")?;
            Ok(OpKind::Promote {
                member,
                force: b.force,
            })
        },
        &body,
    )
    .await
}

async fn restart(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let me = st.cfg.name.clone();
    submit(
        &st,
        &headers,
        |_, _| Ok(OpKind::Restart { member: me }),
        &body,
    )
    .await
}

async fn reinit(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let me = st.cfg.name.clone();
    submit(
        &st,
        &headers,
        |_, _| Ok(OpKind::Reinit { member: me }),
        &body,
    )
    .await
}

async fn reload(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    let me = st.cfg.name.clone();
    submit(
        &st,
        &headers,
        |_, _| Ok(OpKind::Reload { member: me }),
        &body,
    )
    .await
}

async fn set_pause(st: &ApiState, headers: &HeaderMap, paused: bool) -> Response {
    if !authorized(&st.auth, headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong credentials: send Authorization: Bearer <token> or basic authentication");
    }
    match pgbaton_store::pause_and_record(st.store.as_ref(), paused, "asked through the API").await
    {
        Ok(_) => (StatusCode::OK, Json(json!({ "paused": paused }))).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("set the pause flag in the store: {e:#}"),
        ),
    }
}

async fn pause(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    set_pause(&st, &headers, true).await
}

async fn resume(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    set_pause(&st, &headers, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_constant_time_compare() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert!(decode_base64("not base64!").is_none());
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }

    #[test]
    fn credentials() {
        let auth = Auth {
            token: Some("t0k".into()),
            basic: Some(("u".into(), "p".into())),
        };
        let mut h = HeaderMap::new();
        assert!(!authorized(&auth, &h));
        h.insert("authorization", "Bearer t0k".parse().unwrap());
        assert!(authorized(&auth, &h));
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(!authorized(&auth, &h));
        h.insert("authorization", "Basic dTpw".parse().unwrap()); // u:p
        assert!(authorized(&auth, &h));
        h.insert("authorization", "Basic dTpx".parse().unwrap()); // u:q
        assert!(!authorized(&auth, &h));
        assert!(
            !authorized(&Auth::default(), &h),
            "no configured credentials: nothing passes"
        );
    }
}
