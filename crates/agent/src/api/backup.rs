//! `/backup` (POST: start one on this member, authenticated; GET: the running and the last
//! one) and `/backups` (the repository's backups, from `pgbackrest info`).

use super::*;
use crate::backup::Refused;
use pgbaton_pg::backrest::{BackRest, BackupType};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub(super) async fn start(State(st): State<ApiState>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&st.auth, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong credentials: send Authorization: Bearer <token> or basic authentication");
    }
    let req: BackupRequest = if body.is_empty() {
        BackupRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "malformed request: {e}: expected {{\"type\": \"full\"|\"diff\"|\"incr\"}}"
                    ),
                )
            }
        }
    };
    let kind = match req.kind.as_deref().map(BackupType::parse) {
        None => BackupType::Incr,
        Some(Some(k)) => k,
        Some(None) => return error(StatusCode::BAD_REQUEST, "type: expected full, diff or incr"),
    };
    let (me, view) = match st.shared.read() {
        Ok(s) => (s.member.clone(), s.view.clone()),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the agent's state is poisoned",
            )
        }
    };
    match st.backups.start(&st.cfg, me.as_ref(), view.as_ref(), kind).await {
        Ok(job) => (StatusCode::ACCEPTED, Json(json!({ "started": job }))).into_response(),
        Err(Refused::Busy(job)) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": format!("a {} backup runs on {} already", job.kind.as_str(), job.member), "running": job })),
        )
            .into_response(),
        Err(Refused::Locked(why)) => error(StatusCode::CONFLICT, why),
        Err(Refused::NotHere(why)) => error(StatusCode::PRECONDITION_FAILED, why),
    }
}

pub(super) async fn status(State(st): State<ApiState>) -> Response {
    let mut v = serde_json::to_value(st.backups.state()).unwrap_or_default();
    // The running backup's progress, as pgBackRest's lock file reports it.
    if v["running"].is_object() {
        if let Some(br) = BackRest::of(&st.cfg) {
            if let Ok(Some((done, total))) = st.backups.info(&br).await.map(|i| i.running) {
                v["running"]["bytes_done"] = json!(done);
                v["running"]["bytes_total"] = json!(total);
            }
        }
    }
    Json(v).into_response()
}

pub(super) async fn list(State(st): State<ApiState>) -> Response {
    let Some(br) = BackRest::of(&st.cfg) else {
        return error(
            StatusCode::PRECONDITION_FAILED,
            format!("{} has no [backup] in its config", st.cfg.name),
        );
    };
    match st.backups.info(&br).await {
        Ok(i) => Json(i).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
    }
}
