//! The agent's HTTP API. This first cut answers liveness and health checks and serves the
//! member's published state; the load-balancer endpoints, metrics and status page build
//! on the same shared state.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pgbaton_core::model::{MemberState, MemberStatus};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What the loop shares with the API.
#[derive(Default)]
pub struct Shared {
    pub member: Option<MemberState>,
    pub last_loop: Option<Instant>,
    pub loop_interval: Duration,
}

pub type SharedState = Arc<RwLock<Shared>>;

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/liveness", get(liveness))
        .route("/health", get(health))
        .route("/member", get(member))
        .with_state(state)
}

async fn liveness(State(s): State<SharedState>) -> StatusCode {
    let s = s.read().unwrap_or_else(|e| e.into_inner());
    match s.last_loop {
        // Alive while the loop has run within three of its intervals (plus slack for a
        // long action such as a start).
        Some(t) if t.elapsed() <= s.loop_interval * 3 + Duration::from_secs(60) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn health(State(s): State<SharedState>) -> StatusCode {
    let s = s.read().unwrap_or_else(|e| e.into_inner());
    match s.member.as_ref().map(|m| m.state) {
        Some(MemberStatus::Running | MemberStatus::Streaming | MemberStatus::Replaying) => {
            StatusCode::OK
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn member(State(s): State<SharedState>) -> Response {
    let s = s.read().unwrap_or_else(|e| e.into_inner());
    match &s.member {
        Some(m) => Json(m.clone()).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent has not observed its member yet",
        )
            .into_response(),
    }
}
