//! `POST /failsafe`: a primary that cannot reach the store asks this member to confirm it.
//! Yes binds this member not to take the leader lease for `promise_ms` (its node.toml TTL);
//! the one-lock rule is `pgbaton_core::failover::FailsafeGate`, in the shared state.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailsafeBody {
    /// The primary asking to be confirmed.
    leader: String,
}

/// How long a failsafe question may spend finding out whether this member reaches the
/// store: half of what the asker waits for the answer (`loop_interval_ms` clamped to
/// 100-1000 ms), so the answer arrives in time.
fn failsafe_probe_limit(loop_ms: u64) -> Duration {
    Duration::from_millis(loop_ms.clamp(100, 1000) / 2)
}

/// Whether this member can write to the store now: its own last report written again. A
/// read is not enough: a store that serves reads but refuses writes (etcd out of space, a
/// stalled disk) renews no lease, and a member that says "I reach it" there would fence the
/// primary for nothing (review finding).
async fn store_writable(st: &ApiState) -> bool {
    let mine = st
        .shared
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .member
        .clone();
    // node.toml's loop interval, not the running one: the asker waits by its API client's
    // timeout, made from node.toml's when the agent started (review finding: a cluster
    // loop interval above node.toml's made the probe as long as the asker's wait).
    let limit = failsafe_probe_limit(st.cfg.timing.loop_interval_ms);
    match mine {
        Some(m) => tokio::time::timeout(limit, st.store.member_put(&m))
            .await
            .is_ok_and(|r| r.is_ok()),
        None => false,
    }
}

/// The primary cannot reach the store and asks this member to confirm it (failsafe mode).
/// Yes (200) binds this member not to take the leader lease for one TTL; a member that holds
/// the lease or is taking it says no (409).
pub(super) async fn failsafe(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&st.auth, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong credentials: send Authorization: Bearer <token> or basic authentication",
        );
    }
    let b: FailsafeBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a failsafe request: {e} (expected {{\"leader\": \"n1\"}})"
                ),
            )
        }
    };
    let me = st.cfg.name.clone();
    if b.leader == me {
        return error(StatusCode::BAD_REQUEST, "a member does not confirm itself");
    }
    // Does this member reach the store? Known when its loop's last store call failed;
    // otherwise found out now, briefly.
    let failing = st
        .shared
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .failsafe
        .store_failing();
    let reachable = !failing && store_writable(&st).await;
    let (until_ms, ttl_ms) = {
        let mut sh = st.shared.write().unwrap_or_else(|e| e.into_inner());
        let ttl_ms = sh.promise_ms;
        match sh
            .failsafe
            .confirm(&me, &b.leader, ttl_ms, reachable, now_ms())
        {
            Ok((promise, new)) => {
                if new {
                    tracing::warn!(
                        "failsafe: confirmed {} as a live primary; not taking the leader lease for {ttl_ms} ms",
                        b.leader
                    );
                }
                (promise.until_ms, ttl_ms)
            }
            Err(why) => return error(StatusCode::CONFLICT, why),
        }
    };
    // `promise_ms`: how long from now this member keeps the promise, which the primary's
    // fence must not outlive.
    (
        StatusCode::OK,
        Json(json!({
            "member": me, "confirms": b.leader, "until_ms": until_ms, "promise_ms": ttl_ms
        })),
    )
        .into_response()
}
