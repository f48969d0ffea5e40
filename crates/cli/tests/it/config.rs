//! The cluster's configuration in the store: `edit-config` through an agent, every value
//! checked against the running PostgreSQL; a reload or a pending restart; `restart
//! --rolling` one member at a time under a continuous writer; scheduled operations.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn ok(o: &std::process::Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "the command failed:\n{t}");
    t
}

fn failed(o: &std::process::Output, needles: &[&str]) {
    let t = text(o);
    assert!(!o.status.success(), "expected a refusal:\n{t}");
    for n in needles {
        assert!(t.contains(n), "the refusal should say {n:?}:\n{t}");
    }
}

fn show(c: &Cluster, member: &str, parameter: &str) -> String {
    c.sql(Some(member), &format!("SHOW {parameter}"))
        .unwrap()
        .trim()
        .to_string()
}

fn pending(c: &Cluster, member: &str) -> Vec<String> {
    serde_json::from_value(c.member(member)["pending_restart"].clone()).unwrap_or_default()
}

fn config_version(c: &Cluster) -> u64 {
    let out = stdout_or_err(&c.cmd(&["show-config", "--json"])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["version"].as_u64().unwrap()
}

/// Stops the threads however the scope is left.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn edit_config_reloads_or_waits_for_a_rolling_restart_that_takes_one_member_at_a_time() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(60));
    let members = ["n1", "n2", "n3"];
    let pids: Vec<Option<i32>> = members.iter().map(|m| c.postmaster_pid(m)).collect();

    // A parameter a reload applies: every member, no restart.
    let t = ok(&c.op(&["edit-config", "--set", "work_mem=64MB", "--force"]));
    assert!(
        t.contains("+ work_mem = '64MB'") && t.contains("Stored as version 1"),
        "{t}"
    );
    wait_for(
        "work_mem = 64MB on every member",
        Duration::from_secs(30),
        || members.iter().all(|m| show(&c, m, "work_mem") == "64MB"),
    );
    let now: Vec<Option<i32>> = members.iter().map(|m| c.postmaster_pid(m)).collect();
    assert_eq!(pids, now, "a reloadable parameter restarted a member");
    assert!(members.iter().all(|m| pending(&c, m).is_empty()));

    // An agent that was down when a change was made, over a pgbaton.conf an earlier version
    // wrote (no include of the cluster's file): it adds the include and reloads at once,
    // with no restart and no connection yet.
    let n3_pg = c.postmaster_pid("n3");
    kill9(c.agent_pid("n3").unwrap());
    let conf = c.data_dir("n3").join("pgbaton.conf");
    let old: String = std::fs::read_to_string(&conf)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("include_if_exists"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&conf, old).unwrap();
    ok(&c.op(&["edit-config", "--set", "statement_timeout=5s", "--force"]));
    assert!(c.up_again().status.success());
    wait_for(
        "n3 to apply the change made while its agent was down",
        Duration::from_secs(30),
        || show(&c, "n3", "statement_timeout") == "5s",
    );
    assert_eq!(c.postmaster_pid("n3"), n3_pg, "n3 was restarted");
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .starts_with("include_if_exists"));

    // Refused before anything is stored, naming the key, the value and why.
    for (set, says) in [
        ("shared_buffers=banana", "an integer with an optional unit"),
        ("work_mam=1MB", "it has none named work_mam"),
        ("port=5433", "set `postgresql.port` instead"),
        ("synchronous_commit=sometimes", "one of local, remote_write"),
    ] {
        let key = set.split('=').next().unwrap();
        failed(
            &c.op(&["edit-config", "--set", set, "--force"]),
            &[key, says, "nothing was applied"],
        );
    }
    // A script that does not say --force is not asked on a terminal it lacks.
    failed(
        &c.op(&["edit-config", "--set", "work_mem=32MB"]),
        &["--force"],
    );
    assert_eq!(config_version(&c), 2, "a refused change was stored");

    // An editor who read version 0 loses to the change made since, and says so.
    let token = std::fs::read_to_string(c.dir.join("api.token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let (s, body) = http(
        "PUT",
        api_port(&c, "n2"),
        "/cluster-config",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        r#"{"version": 1, "parameters": {"work_mem": "8MB"}}"#,
    );
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("changed since it was read"), "{body}");
    assert_eq!(config_version(&c), 2);
    assert_eq!(show(&c, "n2", "work_mem"), "64MB");

    // A parameter only a restart applies: every member says so, in list, /member and metrics.
    let t = ok(&c.op(&["edit-config", "--set", "shared_buffers=256MB", "--force"]));
    assert!(t.contains("Needs a restart: shared_buffers"), "{t}");
    wait_for(
        "every member to show pending restart",
        Duration::from_secs(30),
        || members.iter().all(|m| pending(&c, m) == ["shared_buffers"]),
    );
    assert_eq!(show(&c, "n1", "shared_buffers"), "128MB");
    assert!(ok(&c.cmd(&["list"])).contains("pending restart (shared_buffers)"));
    let (_, metrics) = http("GET", api_port(&c, "n1"), "/metrics", &[], "");
    assert!(metrics.contains("pgbaton_pending_restart 1"), "{metrics}");
    let t = ok(&c.cmd(&["show-config", "--member", "n2"]));
    assert!(
        t.contains("shared_buffers")
            && t.contains("cluster (edit-config)")
            && t.contains("Pending restart: shared_buffers"),
        "{t}"
    );

    // The rolling restart under a continuous writer, watched: never two members down.
    c.sql(None, "CREATE TABLE w (id int primary key)").unwrap();
    let stop = AtomicBool::new(false);
    let writes = Mutex::new(Vec::<(u32, bool)>::new());
    let most_down = Mutex::new((0usize, String::new()));
    let down_states = [
        "stopped",
        "stopping",
        "starting",
        "crashed",
        "unreachable",
        "failed",
    ];
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            let (mut i, deadline) = (0u32, Instant::now() + Duration::from_secs(240));
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                i += 1;
                let ok = c.sql(None, &format!("INSERT INTO w VALUES ({i})")).is_ok();
                writes.lock().unwrap().push((i, ok));
            }
        });
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let l = c.list();
                let down: Vec<String> = l["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| down_states.contains(&m["state"].as_str().unwrap_or("")))
                    .map(|m| format!("{} {}", m["name"], m["state"]))
                    .collect();
                let mut worst = most_down.lock().unwrap();
                if down.len() > worst.0 {
                    *worst = (down.len(), down.join(", "));
                }
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        let t = ok(&c.op(&["restart", "--rolling"]));
        assert!(
            t.contains("restart plan: n2, then n3, then switchover from n1"),
            "{t}"
        );
        assert!(t.contains("Restarted, one at a time"), "{t}");
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
    });
    let (worst, which) = most_down.into_inner().unwrap();
    assert!(worst <= 1, "two members down at once: {which}");
    assert!(worst == 1, "the watcher never saw a member restart");
    assert_ne!(
        c.list()["leader"],
        "n1",
        "the primary was not switched over"
    );
    for m in members {
        assert_eq!(show(&c, m, "shared_buffers"), "256MB", "{m}");
        assert_eq!(show(&c, m, "work_mem"), "64MB", "{m}");
        assert!(pending(&c, m).is_empty(), "{m} still pending");
    }
    // Writes stopped once, for the switchover: the standbys' restarts cost none.
    let writes = writes.into_inner().unwrap();
    let acked: Vec<u32> = writes.iter().filter(|w| w.1).map(|w| w.0).collect();
    let gaps = writes.windows(2).filter(|p| p[0].1 && !p[1].1).count();
    assert!(acked.len() > 10, "the writer hardly wrote: {}", acked.len());
    assert!(
        gaps <= 1,
        "writes failed in {gaps} separate spells: {writes:?}"
    );
    let present: std::collections::HashSet<u32> = c
        .sql(None, "SELECT id FROM w")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<&u32> = acked.iter().filter(|i| !present.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // pgbaton's own cluster-wide settings: synchronous replication on, then off again,
    // with no restart and no node.toml edited.
    ok(&c.op(&[
        "edit-config",
        "--set",
        "replication.synchronous=on",
        "--force",
    ]));
    let names = |c: &Cluster| c.sql(None, "SHOW synchronous_standby_names").unwrap();
    wait_for(
        "synchronous replication on",
        Duration::from_secs(30),
        || c.list()["synchronous"]["mode"] == "on" && names(&c).starts_with("FIRST 1"),
    );
    failed(
        &c.op(&[
            "edit-config",
            "--set",
            "replication.synchronous_node_count=3",
            "--force",
        ]),
        &["at most the standbys that can be synchronous: 2"],
    );
    ok(&c.op(&[
        "edit-config",
        "--unset",
        "replication.synchronous",
        "--force",
    ]));
    wait_for(
        "synchronous replication off",
        Duration::from_secs(30),
        || names(&c).is_empty(),
    );

    // pgbaton's timing: held to the fence rule with each member's own values, refused
    // otherwise; then every agent runs with it from its next loop, with no restart.
    failed(
        &c.op(&["edit-config", "--set", "timing.ttl_ms=1200", "--force"]),
        &[
            "timing.ttl_ms",
            "3 × timing.loop_interval_ms (1500)",
            "nothing was applied",
        ],
    );
    failed(
        &c.op(&[
            "edit-config",
            "--set",
            "timing.fence_margin_ms=2200",
            "--force",
        ]),
        &["timing.fence_margin_ms", "two chances to renew"],
    );
    let agents: Vec<Option<i32>> = members.iter().map(|m| c.agent_pid(m)).collect();
    ok(&c.op(&["edit-config", "--set", "timing.ttl_ms=4s", "--force"]));
    let runs_with = |m: &str, line: &str| {
        let (_, metrics) = http("GET", api_port(&c, m), "/metrics", &[], "");
        metrics.lines().any(|l| l == line)
    };
    wait_for(
        "every agent to run with a 4 s lease",
        Duration::from_secs(30),
        || {
            members
                .iter()
                .all(|m| runs_with(m, "pgbaton_lease_ttl_seconds 4.0"))
        },
    );
    let now: Vec<Option<i32>> = members.iter().map(|m| c.agent_pid(m)).collect();
    assert_eq!(agents, now, "an agent restarted for a timing change");
    let shown = ok(&c.cmd(&["show-config", "--member", "n2"]));
    assert!(shown.contains("timing.ttl_ms"), "{shown}");
    ok(&c.op(&["edit-config", "--unset", "timing.ttl_ms", "--force"]));
    wait_for(
        "every agent back on node.toml's 2.5 s lease",
        Duration::from_secs(30),
        || {
            members
                .iter()
                .all(|m| runs_with(m, "pgbaton_lease_ttl_seconds 2.5"))
        },
    );
    assert!(c.list()["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["role"] == "primary" || m["state"] == "streaming"));

    let h = ok(&c.cmd(&["history"]));
    assert!(
        h.contains("version 3 by") && h.contains("shared_buffers = '256MB' [restart]"),
        "{h}"
    );
    assert!(h.contains("timing.ttl_ms = 4000"), "{h}");
}

#[test]
fn a_scheduled_switchover_happens_at_its_time_with_no_cli_and_a_cancelled_one_never() {
    let c = Cluster::up(2);
    c.wait_healthy(Duration::from_secs(60));

    // Scheduled, then cancelled (more than 15 s before its time, the margin for clocks).
    let t = ok(&c.op(&["switchover", "--at", "+18s"]));
    assert!(t.contains("Scheduled: switchover n1 -> n2 at"), "{t}");
    let cancelled_at = c.list()["scheduled"]["not_before_ms"].as_u64().unwrap();
    assert!(ok(&c.cmd(&["list"])).contains("Scheduled: switchover n1 -> n2"));
    failed(
        &c.op(&["restart", "n2", "--at", "+1m"]),
        &["is scheduled for", "pgbaton cancel"],
    );
    assert!(ok(&c.cmd(&["cancel"])).contains("Cancelled: switchover n1 -> n2"));
    assert!(ok(&c.cmd(&["history"])).contains("cancelled"));

    // Another, carried out at its time with no CLI running.
    let t = ok(&c.op(&["switchover", "--at", "+3s"]));
    assert!(t.contains("Scheduled"), "{t}");
    let at = c.list()["scheduled"]["not_before_ms"].as_u64().unwrap();
    let done = || -> Vec<serde_json::Value> {
        let Ok(out) = stdout_or_err(&c.cmd(&["history", "--json"])) else {
            return vec![];
        };
        let h: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        h.as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["operation"] == "switchover" && e["result"] == "done")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(
        "the scheduled switchover to be done",
        Duration::from_secs(40),
        || !done().is_empty(),
    );
    assert_eq!(c.list()["leader"], "n2");
    let first = done()[0].clone();
    assert!(
        first["time_ms"].as_u64().unwrap() >= at,
        "it ran before its time: {first}"
    );
    wait_rejoined(&c, "n1", "n2");

    // The cancelled one's time passes: nothing happens.
    let wait = (cancelled_at + 2_000).saturating_sub(pgbaton_store::now_ms());
    std::thread::sleep(Duration::from_millis(wait));
    assert_eq!(c.list()["leader"], "n2", "a cancelled switchover happened");
    assert_eq!(done().len(), 1, "a cancelled switchover happened");
}
