//! The agents' HTTP API against a real cluster: each health endpoint's code in each role,
//! JSON endpoints, authentication of operations, and operations through the API.

use crate::harness::*;
use std::time::Duration;

fn code(c: &Cluster, member: &str, path: &str) -> u16 {
    http("GET", api_port(c, member), path, &[], "").0
}

/// Codes of the health endpoints on `member`, as "path=code" strings.
fn codes(c: &Cluster, member: &str, paths: &[&str]) -> Vec<String> {
    paths
        .iter()
        .map(|p| format!("{p}={}", code(c, member, p)))
        .collect()
}

const PATHS: &[&str] = &[
    "/primary",
    "/read-write",
    "/leader",
    "/replica",
    "/read-only",
    "/sync",
    "/async",
    "/health",
    "/liveness",
    "/readiness",
];

fn expect(c: &Cluster, member: &str, want: &[u16]) {
    let want: Vec<String> = PATHS
        .iter()
        .zip(want)
        .map(|(p, w)| format!("{p}={w}"))
        .collect();
    wait_for(
        &format!("{member}'s endpoints to answer {want:?}"),
        Duration::from_secs(20),
        || codes(c, member, PATHS) == want,
    );
}

#[test]
fn health_endpoints_answer_by_role_and_operations_need_credentials() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(30));
    //                 primary rw leader replica ro  sync async health live ready
    expect(
        &c,
        "n1",
        &[200, 200, 200, 503, 200, 503, 503, 200, 200, 200],
    );
    expect(
        &c,
        "n2",
        &[503, 503, 503, 200, 200, 503, 200, 200, 200, 200],
    );
    // HEAD and OPTIONS answer the same codes; other methods are not health checks.
    assert_eq!(http("HEAD", api_port(&c, "n1"), "/primary", &[], "").0, 200);
    assert_eq!(
        http("OPTIONS", api_port(&c, "n2"), "/primary", &[], "").0,
        503
    );
    assert_eq!(
        http("OPTIONS", api_port(&c, "n2"), "/replica", &[], "").0,
        200
    );
    assert_eq!(
        http("DELETE", api_port(&c, "n2"), "/replica", &[], "").0,
        405
    );
    // Only 200/503 from health checks, even for nonsense parameters.
    assert_eq!(code(&c, "n2", "/replica?lag=bogus"), 503);
    assert_eq!(code(&c, "n2", "/replica?replication_state=streaming"), 200);

    // A lagging standby: replay paused on n3 while the primary writes.
    c.sql(Some("n3"), "SELECT pg_wal_replay_pause()").unwrap();
    c.sql(None, "CREATE TABLE lag (x text); INSERT INTO lag SELECT repeat('x', 1000) FROM generate_series(1, 5000)").unwrap();
    wait_for(
        "n3 to lag by more than 1 MB",
        Duration::from_secs(30),
        || code(&c, "n3", "/replica?lag=1MB") == 503,
    );
    assert_eq!(
        code(&c, "n3", "/replica"),
        200,
        "without a lag limit a lagging standby still serves reads"
    );
    assert_eq!(code(&c, "n3", "/replica?lag=1GB"), 200);
    // n2 keeps up: its lag is from the members' last reports (every loop), so right after
    // the 5 MB write it may still read as behind for a moment (a CI failure asserted it
    // at once).
    wait_for("n2 to keep up", Duration::from_secs(30), || {
        code(&c, "n2", "/replica?lag=1MB") == 200
    });
    let metrics = http("GET", api_port(&c, "n3"), "/metrics", &[], "").1;
    let lag: i64 = metrics
        .lines()
        .find(|l| l.starts_with("pgbaton_replication_lag_bytes "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no lag metric:\n{metrics}"));
    assert!(lag > 1 << 20, "lag metric {lag}");
    c.sql(Some("n3"), "SELECT pg_wal_replay_resume()").unwrap();
    wait_for("n3 to catch up", Duration::from_secs(30), || {
        code(&c, "n3", "/replica?lag=1MB") == 200
    });

    // JSON endpoints.
    let (s, body) = http("GET", api_port(&c, "n2"), "/cluster", &[], "");
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["leader"], "n1");
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    let (s, body) = http("GET", api_port(&c, "n1"), "/member", &[], "");
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["role"],
        "primary"
    );
    assert_eq!(http("GET", api_port(&c, "n1"), "/history", &[], "").0, 200);
    let (s, body) = http("GET", api_port(&c, "n1"), "/config", &[], "");
    assert!(
        s == 200 && body.contains("auth_token_file") && !body.contains(&c.password()),
        "{body}"
    );
    let (s, body) = http("GET", api_port(&c, "n1"), "/metrics", &[], "");
    assert_eq!(s, 200);
    for name in [
        "pgbaton_primary 1",
        "pgbaton_leader 1",
        "pgbaton_timeline 1",
        "pgbaton_slot_retained_wal_bytes{slot=\"pgbaton_n2\"}",
        "pgbaton_cluster_leader{member=\"n1\"} 1",
        "pgbaton_loop_duration_seconds",
        "pgbaton_fence_seconds_left",
        "pgbaton_failsafe_promise 0",
        "pgbaton_failsafe_rounds_total 0",
    ] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }

    // Operations: without or with wrong credentials 401 and nothing happens; a malformed
    // body 400; a refused request 412; a good one 202 and it is carried out.
    let token = std::fs::read_to_string(c.dir.join("api.token"))
        .unwrap()
        .trim()
        .to_string();
    let bearer = format!("Bearer {token}");
    let p1 = api_port(&c, "n1");
    assert_eq!(
        http("POST", p1, "/switchover", &[], "{\"candidate\": \"n2\"}").0,
        401
    );
    assert_eq!(
        http(
            "POST",
            p1,
            "/switchover",
            &[("Authorization", "Bearer wrong")],
            "{\"candidate\": \"n2\"}"
        )
        .0,
        401
    );
    assert_eq!(
        http(
            "POST",
            p1,
            "/restart",
            &[("Authorization", "Basic dTpw")],
            ""
        )
        .0,
        401
    );
    std::thread::sleep(Duration::from_secs(2));
    let v: serde_json::Value =
        serde_json::from_str(&http("GET", p1, "/cluster", &[], "").1).unwrap();
    assert_eq!(
        v["leader"], "n1",
        "an unauthenticated request changed the leader"
    );
    assert!(
        v["operation"].is_null(),
        "an unauthenticated request posted an operation: {v:#}"
    );
    assert_eq!(
        http(
            "POST",
            p1,
            "/switchover",
            &[("Authorization", &bearer)],
            "{nope"
        )
        .0,
        400
    );
    assert_eq!(
        http(
            "POST",
            p1,
            "/switchover",
            &[("Authorization", &bearer)],
            "{\"candidat\": \"n2\"}"
        )
        .0,
        400
    );
    assert_eq!(
        http(
            "POST",
            p1,
            "/switchover",
            &[("Authorization", &bearer)],
            "{\"candidate\": \"n9\"}"
        )
        .0,
        412
    );
    assert_eq!(
        http(
            "POST",
            p1,
            "/failover",
            &[("Authorization", &bearer)],
            "{\"candidate\": \"n2\"}"
        )
        .0,
        412,
        "failover while the primary is healthy"
    );

    let before = c.postmaster_pid("n2").unwrap();
    let (s, body) = http(
        "POST",
        api_port(&c, "n2"),
        "/restart",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(s, 202, "{body}");
    wait_for(
        "n2's PostgreSQL to restart",
        Duration::from_secs(60),
        || c.postmaster_pid("n2").is_some_and(|p| p != before),
    );
    c.wait_healthy(Duration::from_secs(60));
    wait_for(
        "the restart to be done in every agent's view",
        Duration::from_secs(30),
        || {
            ["n1", "n2", "n3"].iter().all(|m| {
                let v: serde_json::Value =
                    serde_json::from_str(&http("GET", api_port(&c, m), "/cluster", &[], "").1)
                        .unwrap_or_default();
                v["operation"]["phase"] == "done"
            })
        },
    );
    // The CLI reaches the agent through the same endpoint.
    let t = text(&c.op(&["reload", "n3"]));
    assert!(t.contains("reload done"), "{t}");

    let (s, body) = http(
        "POST",
        p1,
        "/switchover",
        &[("Authorization", &bearer)],
        "{\"leader\": \"n1\", \"candidate\": \"n2\"}",
    );
    assert_eq!(s, 202, "{body}");
    wait_for(
        "n2 to lead after the switchover",
        Duration::from_secs(60),
        || code(&c, "n2", "/primary") == 200,
    );
    expect(
        &c,
        "n1",
        &[503, 503, 503, 200, 200, 503, 200, 200, 200, 200],
    );

    // A member whose PostgreSQL is stopped (a former primary, the cluster paused): only its
    // agent is alive.
    let (a, p) = (c.agent_pid("n2").unwrap(), c.postmaster_pid("n2").unwrap());
    kill9(a);
    kill9(p);
    let new_primary = c.failed_over_from("n2");
    let other = if new_primary == "n3" { "n1" } else { "n3" };
    // Paused, the former primary does not rejoin by itself: it stays stopped.
    c.pause();
    let _ = c.up_again();
    wait_for(
        "n2's agent back, PostgreSQL stopped",
        Duration::from_secs(60),
        || c.agent_pid("n2").is_some() && c.member("n2")["state"] == "stopped",
    );
    expect(
        &c,
        "n2",
        &[503, 503, 503, 503, 503, 503, 503, 503, 200, 503],
    );
    expect(
        &c,
        &new_primary,
        &[200, 200, 200, 503, 200, 503, 503, 200, 200, 200],
    );
    expect(
        &c,
        other,
        &[503, 503, 503, 200, 200, 503, 200, 200, 200, 200],
    );
}

#[test]
fn a_paused_cluster_takes_no_automatic_action_and_reports_it() {
    let c = Cluster::up(2);
    c.wait_healthy(Duration::from_secs(30));
    let token = std::fs::read_to_string(c.dir.join("api.token"))
        .unwrap()
        .trim()
        .to_string();
    let p1 = api_port(&c, "n1");
    assert_eq!(http("POST", p1, "/pause", &[], "").0, 401);
    assert!(
        !c.list()["paused"].as_bool().unwrap(),
        "an unauthenticated pause paused the cluster"
    );
    let (s, body) = http(
        "POST",
        p1,
        "/pause",
        &[("Authorization", &format!("Bearer {token}"))],
        "",
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(c.list()["paused"], true);
    wait_for(
        "every agent to see the pause",
        Duration::from_secs(15),
        || {
            ["n1", "n2"].iter().all(|m| {
                let v: serde_json::Value =
                    serde_json::from_str(&http("GET", api_port(&c, m), "/cluster", &[], "").1)
                        .unwrap_or_default();
                v["paused"] == true
            })
        },
    );
    assert!(text(&c.cmd(&["list"])).contains("PAUSED"));

    // Paused: a standby whose postmaster dies stays down.
    let pm = c.postmaster_pid("n2").unwrap();
    kill9(pm);
    wait_for(
        "n2 to report its PostgreSQL down",
        Duration::from_secs(20),
        || c.member("n2")["state"] == "crashed",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.postmaster_pid("n2").is_none(),
        "a paused cluster restarted PostgreSQL"
    );
    let msg = c.message("n2");
    assert!(msg.contains("paused"), "{msg}");
    //                 primary rw leader replica ro  sync async health live ready
    expect(
        &c,
        "n2",
        &[503, 503, 503, 503, 503, 503, 503, 503, 200, 503],
    );
    expect(
        &c,
        "n1",
        &[200, 200, 200, 503, 200, 503, 503, 200, 200, 200],
    );

    // Resumed (by the CLI this time): the agent brings it back.
    let t = text(&c.cmd(&["resume"]));
    assert!(t.contains("resumed"), "{t}");
    c.wait_healthy(Duration::from_secs(60));
    expect(
        &c,
        "n2",
        &[503, 503, 503, 200, 200, 503, 200, 200, 200, 200],
    );
    let h: serde_json::Value =
        serde_json::from_slice(&c.cmd(&["history", "--json"]).stdout).unwrap();
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .any(|e| e["operation"] == "resume"),
        "{h:#}"
    );
}
