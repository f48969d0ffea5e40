//! Automatic failover against real processes: a lost primary host, a frozen leader agent,
//! a crashed primary PostgreSQL, a frozen etcd, and pause. On the embedded store and on a
//! real etcd.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Sets the flag when dropped, so writer threads stop even when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A table every member has, for the writers.
fn create_probe_table(c: &Cluster) {
    c.sql(
        None,
        "CREATE TABLE probe (who text, at timestamptz DEFAULT clock_timestamp())",
    )
    .unwrap();
    let members = c.member_names();
    wait_for(
        "the probe table everywhere",
        Duration::from_secs(30),
        || {
            members
                .iter()
                .all(|m| c.sql_direct(m, "SELECT count(*) FROM probe").is_ok())
        },
    );
}

/// Acknowledged writes: (member, the server's clock when it ran the insert).
type Acked = Mutex<Vec<(String, f64)>>;

/// Run `event` while a writer per member inserts into `probe` through `write` (every
/// acknowledged insert recorded); returns what `event` returned and the acknowledged writes.
fn with_writers<T>(
    members: &[&str],
    write: &(dyn Fn(&str) -> Option<f64> + Sync),
    event: impl FnOnce(&Acked) -> T,
) -> (T, Vec<(String, f64)>) {
    let stop = AtomicBool::new(false);
    let acked: Acked = Mutex::new(vec![]);
    let out = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for m in members {
            let (stop, acked) = (&stop, &acked);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(at) = write(m) {
                        acked.lock().unwrap().push((m.to_string(), at));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        wait_for("writes acknowledged", Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= 5
        });
        event(&acked)
    });
    (out, acked.into_inner().unwrap())
}

/// No moment at which both `old` and `new` acknowledged writes, and nobody else wrote.
fn assert_one_writer_at_a_time(acked: &[(String, f64)], old: &str, new: &str) {
    let times = |who: &str| {
        acked
            .iter()
            .filter(|(m, _)| m == who)
            .map(|(_, t)| *t)
            .collect::<Vec<f64>>()
    };
    let last_old = times(old).into_iter().fold(f64::MIN, f64::max);
    let first_new = times(new).into_iter().fold(f64::MAX, f64::min);
    eprintln!(
        "{old}'s last acknowledged write {:.3} s before {new}'s first",
        first_new - last_old
    );
    assert!(
        last_old < first_new,
        "two members accepted writes at once: {old} until {last_old}, {new} from {first_new}"
    );
    assert!(
        !acked.iter().any(|(m, _)| m != old && m != new),
        "a third member accepted writes"
    );
}

/// Wait until `new` has acknowledged a write.
fn wait_writes_on(acked: &Acked, new: &str) {
    wait_for(
        &format!("writes acknowledged by {new}"),
        Duration::from_secs(30),
        || acked.lock().unwrap().iter().any(|(m, _)| m == new),
    );
}

fn count(c: &Cluster, member: &str, sql: &str) -> i64 {
    c.sql(Some(member), sql).unwrap().parse().unwrap()
}

/// A table with rows on every member and every standby at the primary's position.
fn rows_everywhere(c: &Cluster, n: usize) {
    c.sql(
        None,
        &format!("CREATE TABLE rows (id int primary key); INSERT INTO rows SELECT generate_series(1, {n})"),
    )
    .unwrap();
    let members = c.member_names();
    wait_for("the rows on every member", Duration::from_secs(30), || {
        members.iter().all(|m| {
            c.sql(Some(m), "SELECT count(*) FROM rows")
                .map(|o| o == n.to_string())
                .unwrap_or(false)
        })
    });
    wait_for(
        "every standby at the primary's LSN",
        Duration::from_secs(30),
        || {
            let l = c.list();
            let ms = l["members"].as_array().cloned().unwrap_or_default();
            let lsns: Vec<_> = ms.iter().map(|m| m["lsn"].clone()).collect();
            lsns.len() == members.len() && lsns.iter().all(|l| !l.is_null() && *l == lsns[0])
        },
    );
}

/// kill -9 of the leader's agent and postmaster together; a standby takes over, writes
/// succeed, the third member follows, and the old member rejoins when restarted.
fn host_loss(c: &Cluster) {
    c.wait_healthy(Duration::from_secs(60));
    rows_everywhere(c, 300);
    let old = c.list()["leader"].as_str().unwrap().to_string();
    // Each standby (a failover candidate) keeps a slot for every other member.
    let members = c.member_names();
    for s in members.iter().filter(|m| **m != old) {
        wait_for(
            &format!("{s} to keep slots for the other members"),
            Duration::from_secs(30),
            || {
                let slots = c.slots_on(s);
                members.iter().filter(|m| *m != s).all(|m| {
                    slots
                        .iter()
                        .any(|x| x.starts_with(&format!("pgbaton_{m}:")))
                })
            },
        );
    }
    let (agent, pm) = (c.agent_pid(&old).unwrap(), c.postmaster_pid(&old).unwrap());
    kill9(agent);
    kill9(pm);
    let new = c.failed_over_from(&old);
    assert_eq!(
        count(c, &new, "SELECT count(*) FROM rows"),
        300,
        "acknowledged rows lost in the failover"
    );
    c.sql(Some(&new), "INSERT INTO rows VALUES (301)")
        .expect("the new primary accepts writes");
    let third = c
        .member_names()
        .into_iter()
        .find(|m| *m != old && *m != new)
        .unwrap();
    wait_for(
        &format!("{third} to stream from {new}"),
        Duration::from_secs(60),
        || {
            let m = c.member(&third);
            m["state"] == "streaming" && m["upstream"] == new.as_str()
        },
    );
    wait_for(
        "row 301 on the third member",
        Duration::from_secs(30),
        || {
            c.sql(Some(&third), "SELECT count(*) FROM rows WHERE id = 301")
                .map(|o| o == "1")
                .unwrap_or(false)
        },
    );
    let h = text(&c.cmd(&["history"]));
    assert!(h.contains("failover"), "no failover in the history:\n{h}");

    // The old member comes back and rejoins by itself.
    let _ = c.up_again();
    wait_for(
        &format!("{old} to rejoin as a standby of {new}"),
        Duration::from_secs(90),
        || {
            let m = c.member(&old);
            m["role"] == "standby" && m["state"] == "streaming" && m["upstream"] == new.as_str()
        },
    );
    wait_for(
        "row 301 on the old primary",
        Duration::from_secs(30),
        || {
            c.sql(Some(&old), "SELECT count(*) FROM rows WHERE id = 301")
                .map(|o| o == "1")
                .unwrap_or(false)
        },
    );
    assert_eq!(c.list()["leader"], new.as_str(), "the leader changed again");
}

#[test]
fn host_loss_fails_over_on_the_embedded_store() {
    let c = Cluster::up(3);
    host_loss(&c);
}

#[test]
fn host_loss_fails_over_on_etcd() {
    let etcd = Etcd::new();
    let c = Cluster::up_with(3, &["--etcd", &etcd.endpoint]);
    host_loss(&c);
    drop(c);
}

/// One acknowledged insert on `member` over its Unix socket (reached whatever its network
/// and without the store): the server's clock when it ran (epoch seconds).
fn probe_write(c: &Cluster, member: &str) -> Option<f64> {
    c.sql_direct(
        member,
        &format!("INSERT INTO probe (who) VALUES ('{member}') RETURNING extract(epoch FROM at)"),
    )
    .ok()?
    .lines()
    .next()?
    .parse()
    .ok()
}

#[test]
fn a_frozen_leader_agent_is_fenced_before_anyone_is_promoted() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(60));
    create_probe_table(&c);
    // A writer per member, each on its own connections.
    let write = |m: &str| probe_write(&c, m);
    let (new, acked) = with_writers(&["n1", "n2", "n3"], &write, |acked| {
        let frozen = Frozen::new(c.agent_pid("n1").unwrap());
        let new = c.failed_over_from("n1");
        wait_writes_on(acked, &new);
        std::thread::sleep(Duration::from_millis(500));
        // n1's PostgreSQL was stopped by its watchdog while its agent stayed frozen.
        assert!(
            c.postmaster_pid("n1").is_none(),
            "n1's PostgreSQL still runs beside the new primary"
        );
        drop(frozen);
        new
    });
    assert_one_writer_at_a_time(&acked, "n1", &new);
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(
        log.contains("pgbaton fence: the leader lease was not renewed in time"),
        "no fence in n1's log:\n{log}"
    );
    // Thawed, n1 finds another leader and rejoins as its standby.
    with_logs_on_panic(&c, || {
        wait_for("n1 to rejoin as a standby", Duration::from_secs(90), || {
            let m = c.member("n1");
            m["state"] == "streaming" && m["upstream"] == new.as_str()
        });
        // And it stays shown so past the report's freshness (4 s): it knows it no longer
        // leads and says it is alive. A thawed agent that still thought it led kept no
        // liveness: shown unreachable except for 4 s after each report it wrote (a change
        // of position, or the 60 s heartbeat). Looked at once a second for 12 s; two
        // misses are allowed for a liveness confirmation that a loaded machine delays.
        let mut unreachable = 0;
        for _ in 0..12 {
            std::thread::sleep(Duration::from_secs(1));
            if c.member("n1")["state"] != "streaming" {
                unreachable += 1;
            }
        }
        assert!(
            unreachable <= 2,
            "n1 was not shown streaming {unreachable} times of 12 in the 12 s after it rejoined"
        );
    });
}

#[test]
fn a_crashed_primary_postgresql_is_restarted_in_place() {
    let c = Cluster::up(2);
    c.wait_healthy(Duration::from_secs(60));
    let tl = c.member("n1")["timeline"].clone();
    let old = c.postmaster_pid("n1").unwrap();
    kill9(old);
    wait_for("n1's PostgreSQL back", Duration::from_secs(60), || {
        c.postmaster_pid("n1").is_some_and(|p| p != old)
    });
    c.wait_healthy(Duration::from_secs(60));
    assert_eq!(
        c.list()["leader"],
        "n1",
        "a crash in place became a failover"
    );
    assert_eq!(c.member("n1")["timeline"], tl);
    c.sql(None, "CREATE TABLE after_crash (x int)")
        .expect("the restarted primary accepts writes");
}

#[test]
fn a_frozen_etcd_does_not_demote_a_healthy_primary() {
    let etcd = Etcd::new();
    let c = Cluster::up_with(3, &["--etcd", &etcd.endpoint]);
    c.wait_healthy(Duration::from_secs(60));
    c.sql(
        None,
        "CREATE TABLE w (at timestamptz DEFAULT clock_timestamp())",
    )
    .unwrap();
    let before = c.list();
    let tl = c.member("n1")["timeline"].clone();
    {
        let _frozen = Frozen::new(etcd.pid());
        // Several lease TTLs without a store: the primary keeps accepting every write.
        let start = std::time::Instant::now();
        let mut writes = 0;
        while start.elapsed() < Duration::from_secs(8) {
            if let Err(e) = c.sql_direct("n1", "INSERT INTO w DEFAULT VALUES") {
                // The agent's log says why (a CI failure left nothing else to read).
                let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "the primary refused a write while etcd was frozen ({:?} in): {e}\n{}",
                    start.elapsed(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            writes += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{writes} writes while etcd was frozen");
        // The standbys promised the primary not to take the lease (failsafe).
        for m in ["n2", "n3"] {
            let metrics = http("GET", api_port(&c, m), "/metrics", &[], "").1;
            assert!(
                metrics.contains("pgbaton_failsafe_promise 1"),
                "{m} made no failsafe promise:\n{metrics}"
            );
        }
        assert!(c.postmaster_pid("n1").is_some(), "n1 was fenced");
    }
    // etcd back: nothing changed.
    std::thread::sleep(Duration::from_secs(5));
    c.wait_healthy(Duration::from_secs(30));
    let after = c.list();
    assert_eq!(after["leader"], before["leader"]);
    assert_eq!(
        c.member("n1")["timeline"],
        tl,
        "a new timeline: someone was promoted"
    );
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(log.contains("failsafe"), "no failsafe in n1's log:\n{log}");
    let metrics = http("GET", api_port(&c, "n1"), "/metrics", &[], "").1;
    let confirmed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgbaton_failsafe_confirmed_rounds_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no failsafe counter:\n{metrics}"));
    assert!(
        confirmed > 0,
        "n1 counted no confirmed failsafe round:\n{metrics}"
    );
    c.sql(None, "INSERT INTO w DEFAULT VALUES").unwrap();
}

#[test]
fn a_paused_cluster_does_not_fail_over_until_resumed() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(60));
    c.pause();
    let (agent, pm) = (c.agent_pid("n1").unwrap(), c.postmaster_pid("n1").unwrap());
    kill9(agent);
    kill9(pm);
    // Well past the lease's TTL (2.5 s): nobody was promoted.
    std::thread::sleep(Duration::from_secs(8));
    let l = c.list();
    for m in ["n2", "n3"] {
        assert_eq!(
            c.member(m)["role"],
            "standby",
            "{m} was promoted while paused: {l:#}"
        );
    }
    let msg = c.message("n2");
    assert!(msg.contains("paused"), "{msg}");
    let t = text(&c.cmd(&["resume"]));
    assert!(t.contains("resumed"), "{t}");
    let new = c.failed_over_from("n1");
    c.sql(Some(&new), "CREATE TABLE after_resume (x int)")
        .expect("the new primary accepts writes");
}

/// Three hosts (network namespaces), the store in etcd on the "switch": the primary's host
/// loses its network (store and peers). Its failsafe round gets no confirmation, its watchdog
/// fences it, a standby takes over; no two members accept writes at once. When the network
/// comes back, the old primary rejoins as a standby (pg_rewind when it diverged).
#[test]
fn a_primary_cut_off_from_the_network_is_fenced_and_replaced() {
    let net = Net::new(3);
    let etcd = Etcd::on(&net.host_ip());
    let c = net.cluster(&etcd);
    let old = c.list()["leader"].as_str().unwrap().to_string();
    let old_i: u16 = old[1..].parse().unwrap();
    create_probe_table(&c);
    // Writers over each member's Unix socket: they reach a member whatever its network.
    let write = |m: &str| probe_write(&c, m);
    let (new, acked) = with_writers(&["n1", "n2", "n3"], &write, |acked| {
        net.set_link(old_i, false);
        let new = c.failed_over_from(&old);
        wait_writes_on(acked, &new);
        wait_for(
            "the old primary's PostgreSQL fenced",
            Duration::from_secs(10),
            || c.postmaster_pid(&old).is_none(),
        );
        new
    });
    assert_one_writer_at_a_time(&acked, &old, &new);
    let log = std::fs::read_to_string(c.dir.join(&old).join("agent.log")).unwrap();
    assert!(
        log.contains("failsafe")
            && log.contains("pgbaton fence: the leader lease was not renewed in time"),
        "{old}'s log shows no failed failsafe round and fence:\n{log}"
    );
    // The network comes back: the old primary rejoins the new one.
    net.set_link(old_i, true);
    wait_rejoined(&c, &old, &new);
    drop(c);
    drop(etcd);
}

/// The leader's PostgreSQL crashes and cannot start again (a broken configuration): after
/// `timing.primary_restart_timeout_ms` its agent hands the lease over, a standby takes over,
/// and the old member, which cannot be rewound either, waits for `reinit`, which heals it.
#[test]
fn a_primary_that_cannot_restart_hands_over_and_waits_for_reinit() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(60));
    // A short restart timeout (2 s) on every member.
    assert!(c.down(false).status.success());
    c.edit_node_configs(
        "primary_restart_timeout_ms = 30000",
        "primary_restart_timeout_ms = 2000",
    );
    let _ = c.up_again();
    c.wait_healthy(Duration::from_secs(60));
    rows_everywhere(&c, 100);
    let old = c.list()["leader"].as_str().unwrap().to_string();
    // Break its configuration, then crash it.
    let auto = c.data_dir(&old).join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap();
    text.push_str("\nthis line is not a setting\n");
    std::fs::write(&auto, text).unwrap();
    kill9(c.postmaster_pid(&old).unwrap());
    let new = c.failed_over_from(&old);
    assert_eq!(count(&c, &new, "SELECT count(*) FROM rows"), 100);
    wait_for(
        &format!("{old} to say it needs reinit"),
        Duration::from_secs(60),
        || c.message(&old).contains(&format!("pgbaton reinit {old}")),
    );
    let log = std::fs::read_to_string(c.dir.join(&old).join("agent.log")).unwrap();
    assert!(
        log.contains("released the leader lease") && log.contains("primary_restart_timeout_ms"),
        "{old}'s log shows no hand-over:\n{log}"
    );
    // The operator re-clones it: it streams again.
    let t = text_of(&c.op(&["reinit", &old]));
    assert!(t.contains("reinit done"), "{t}");
    wait_for(
        &format!("{old} to stream from {new}"),
        Duration::from_secs(60),
        || {
            let m = c.member(&old);
            m["state"] == "streaming" && m["upstream"] == new.as_str()
        },
    );
}

fn text_of(o: &std::process::Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "the command failed:\n{t}");
    t
}

/// Writers on every member recording when each acknowledgement reached the client (epoch
/// seconds on this machine's clock); `slow` members hold each transaction open 300 ms
/// before it commits, so one is in flight at any moment.
fn client_acked_write(c: &Cluster, member: &str, slow: &[&str]) -> Option<f64> {
    let sleep = if slow.contains(&member) {
        "SELECT pg_sleep(0.3);"
    } else {
        ""
    };
    c.sql_direct(
        member,
        &format!("INSERT INTO probe (who) VALUES ('{member}'); {sleep}"),
    )
    .ok()?;
    Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64(),
    )
}

/// Issue 14, item 3: the fence stopped only the postmaster, and a backend frozen with it
/// finished its commit when it resumed, beside the new primary.
#[test]
fn a_frozen_primary_postgresql_acknowledges_nothing_after_it_is_fenced() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(60));
    create_probe_table(&c);
    let write = |m: &str| client_acked_write(&c, m, &["n1"]);
    let data = c.data_dir("n1");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let ((frozen_at, fenced_at), acked) = with_writers(&["n1", "n2", "n3"], &write, |acked| {
        // n1's writer spends 300 ms of every ~310 ms inside a transaction.
        std::thread::sleep(Duration::from_millis(200));
        // As a VM pause would: the postmaster first (it forks no more), then every process
        // of the instance, again until none is left unfrozen (a backend forked just before).
        let mut frozen = FrozenAll(vec![Frozen::new(c.postmaster_pid("n1").unwrap())]);
        loop {
            let new: Vec<i32> = instance_pids(&data)
                .into_iter()
                .filter(|p| !frozen.0.iter().any(|f| f.0 == *p))
                .collect();
            if new.is_empty() {
                break;
            }
            frozen.0.extend(new.into_iter().map(Frozen::new));
        }
        let pids: Vec<i32> = frozen.0.iter().map(|f| f.0).collect();
        let frozen_at = now();
        eprintln!("froze n1's PostgreSQL: {pids:?}");
        // Every process of the frozen instance ends while still frozen: none runs again.
        wait_for(
            "the frozen instance fenced",
            Duration::from_secs(30),
            || {
                let left = instance_pids(&data);
                pids.iter().all(|p| !left.contains(p))
            },
        );
        let fenced_at = now();
        eprintln!("fenced {:.3} s after the freeze", fenced_at - frozen_at);
        // Writes come back (on n1 restarted in place, or on a new primary).
        wait_for("writes after the fence", Duration::from_secs(60), || {
            acked.lock().unwrap().iter().any(|(_, t)| *t > fenced_at)
        });
        std::thread::sleep(Duration::from_millis(800));
        drop(frozen);
        std::thread::sleep(Duration::from_millis(800));
        (frozen_at, fenced_at)
    });
    // Nothing was acknowledged by the frozen instance: not while it was frozen, and it never
    // ran again (its processes were killed while stopped). (200 ms of slack: a commit
    // acknowledged just before the freeze is recorded when its psql exits, on a busy machine.)
    let late: Vec<f64> = acked
        .iter()
        .filter(|(m, t)| m == "n1" && *t > frozen_at + 0.2 && *t <= fenced_at)
        .map(|(_, t)| t - frozen_at)
        .collect();
    assert!(
        late.is_empty(),
        "n1 acknowledged writes {late:?} s after its PostgreSQL froze, before the fence"
    );
    let leader = c.list()["leader"].as_str().unwrap_or_default().to_string();
    let after: Vec<&str> = acked
        .iter()
        .filter(|(_, t)| *t > fenced_at)
        .map(|(m, _)| m.as_str())
        .collect();
    eprintln!("after the freeze the leader is {leader}; writes acknowledged by {after:?}");
    if leader != "n1" {
        assert_one_writer_at_a_time(&acked, "n1", &leader);
    } else {
        assert!(
            after.iter().all(|m| *m == "n1"),
            "a standby accepted writes"
        );
    }
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(
        log.contains("pgbaton fence:"),
        "no fence in n1's log:\n{log}"
    );
    c.wait_healthy(Duration::from_secs(90));
}

/// Issue 14, item 3: killing the primary's watchdog made its agent exit and leave
/// PostgreSQL writable and unfenced; another member was promoted beside it.
#[test]
fn a_killed_fence_watchdog_never_leaves_an_unfenced_primary() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(60));
    create_probe_table(&c);
    let agent = c.agent_pid("n1").unwrap();
    let write = |m: &str| probe_write(&c, m);
    let (_, acked) = with_writers(&["n1", "n2", "n3"], &write, |_| {
        let old_watchdog = watchdog_of(agent).expect("n1's fence watchdog");
        let old_pg = c.postmaster_pid("n1").unwrap();
        kill9(old_watchdog);
        // The agent stops PostgreSQL at once (it runs a primary) and starts a new watchdog.
        wait_for("n1's PostgreSQL fenced", Duration::from_secs(10), || {
            c.postmaster_pid("n1") != Some(old_pg)
        });
        wait_for("a new watchdog for n1", Duration::from_secs(10), || {
            watchdog_of(agent).is_some_and(|w| w != old_watchdog)
        });
        assert_eq!(c.agent_pid("n1"), Some(agent), "n1's agent exited");
        c.wait_healthy(Duration::from_secs(60));
        // A standby's watchdog guards nothing: it is replaced and PostgreSQL left running.
        let standby = c.agent_pid("n2").unwrap();
        let (w2, pg2) = (watchdog_of(standby).unwrap(), c.postmaster_pid("n2"));
        kill9(w2);
        wait_for("a new watchdog for n2", Duration::from_secs(10), || {
            watchdog_of(standby).is_some_and(|w| w != w2)
        });
        assert_eq!(c.postmaster_pid("n2"), pg2, "a standby was stopped");
    });
    let leader = c.list()["leader"].as_str().unwrap().to_string();
    if leader == "n1" {
        assert!(
            acked.iter().all(|(m, _)| m == "n1"),
            "a standby accepted writes"
        );
    } else {
        assert_one_writer_at_a_time(&acked, "n1", &leader);
    }
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(
        log.contains("died") && log.contains("stopping PostgreSQL before anything else"),
        "{log}"
    );
    wait_for(
        "the primary accepts writes again",
        Duration::from_secs(30),
        || {
            c.sql(None, "CREATE TABLE IF NOT EXISTS after_watchdog (x int)")
                .is_ok()
        },
    );
}

/// The segment that holds `member`'s last checkpoint's redo point, and the one that holds
/// its record (pg_controldata).
fn checkpoint_segments(c: &Cluster, member: &str) -> (String, String) {
    let o = run_with_timeout(
        std::process::Command::new(format!("{PG_BIN}/pg_controldata"))
            .arg(c.data_dir(member))
            .env("LC_ALL", "C"),
        Duration::from_secs(10),
    );
    let out = text(&o);
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {k} in:\n{out}"))
    };
    let redo_file = field("Latest checkpoint's REDO WAL file:");
    let record = field("Latest checkpoint location:");
    // 0/11000060 on timeline 1 lies in segment 000000010000000000000011 (16 MB segments).
    let (hi, lo) = record.split_once('/').unwrap();
    let lo = u64::from_str_radix(lo, 16).unwrap();
    let record_file = format!(
        "{}{:08X}{:08X}",
        &redo_file[..8],
        u64::from_str_radix(hi, 16).unwrap(),
        lo >> 24
    );
    (redo_file, record_file)
}

/// Pinned (25acb7d): a former primary whose last checkpoint has its redo point in the
/// segment before its record's, crashed, rejoins. The crash recovery before pg_rewind
/// (`postgres --single`) ended with a checkpoint that removed the redo point's segment;
/// pg_rewind still found the checkpoint record, and the rewound standby asked the new
/// primary, which had checkpointed past it, for that segment: "requested WAL segment ...
/// has already been removed", "starting" for good (seen in CI).
#[test]
fn a_former_primary_whose_last_checkpoint_spans_two_segments_rejoins() {
    let c = Cluster::up(2);
    with_logs_on_panic(&c, || {
        c.sql_direct("n1", "CREATE TABLE big(i int, x int); INSERT INTO big SELECT g, 0 FROM generate_series(1, 1000000) g; CHECKPOINT")
            .unwrap();
        // A checkpoint that is still writing buffers when the segment is switched: its redo
        // point stays in the old segment, its record lands in the new one.
        let mut spans = None;
        for _ in 0..10 {
            // Every page dirty (a checkpoint that takes a while), a modest amount of WAL.
            c.sql_direct("n1", "UPDATE big SET x = x + 1 WHERE i % 4 = 0")
                .unwrap();
            let bg = {
                let (dir, port) = (c.dir.clone(), c.port_base);
                std::thread::spawn(move || {
                    run_with_timeout(
                        as_pg(std::process::Command::new(format!("{PG_BIN}/psql")).args([
                            "-h",
                            dir.join("n1/run").to_str().unwrap(),
                            "-p",
                            &port.to_string(),
                            "-d",
                            "app",
                            "-c",
                            "CHECKPOINT",
                        ])),
                        Duration::from_secs(60),
                    )
                })
            };
            std::thread::sleep(Duration::from_millis(50));
            c.sql_direct("n1", "SELECT pg_switch_wal()").unwrap();
            assert!(bg.join().unwrap().status.success());
            let (redo, record) = checkpoint_segments(&c, "n1");
            if redo != record {
                spans = Some((redo, record));
                break;
            }
        }
        let (redo_seg, record_seg) =
            spans.expect("no checkpoint spanning two segments in 10 tries");
        // n2 keeps a slot for n1 at n1's last reported position: let that pass the redo
        // point's segment, as an idle cluster's would, so that n2 may recycle it.
        let past = u64::from_str_radix(&record_seg[16..], 16).unwrap() << 24;
        wait_for(
            "n1's report past the checkpoint",
            Duration::from_secs(30),
            || {
                c.member("n1")["lsn"]
                    .as_str()
                    .and_then(|l| l.split_once('/'))
                    .and_then(|(h, l)| {
                        Some(
                            (u64::from_str_radix(h, 16).ok()? << 32)
                                | u64::from_str_radix(l, 16).ok()?,
                        )
                    })
                    .is_some_and(|l| l >= past)
            },
        );
        std::thread::sleep(Duration::from_secs(2));
        lose_host(&c, "n1");
        let new = c.failed_over_from("n1");
        assert_eq!(new, "n2");
        // The new primary checkpoints past that segment and recycles it.
        wait_for(
            &format!("n2 to recycle {redo_seg}"),
            Duration::from_secs(60),
            || {
                let _ = c.sql_direct("n2", "SELECT pg_switch_wal(); CHECKPOINT");
                !c.data_dir("n2").join("pg_wal").join(&redo_seg).exists()
            },
        );
        let o = c.up_again();
        assert!(o.status.success(), "up again failed:\n{}", text(&o));
        wait_rejoined(&c, "n1", "n2");
    });
}

/// A standby stopped while the primary (no archive, a small `max_slot_wal_keep_size`)
/// recycles the WAL it needs: its slot is lost, and starting it again cannot help. Its agent
/// says so once, naming `pgbaton reinit`, instead of stopping and starting it every few
/// seconds; `reinit` heals it.
#[test]
fn a_standby_whose_upstream_recycled_its_wal_says_reinit_and_waits() {
    let c = Cluster::up(2);
    with_logs_on_panic(&c, || {
        assert!(c.down(false).status.success());
        c.edit_node_configs(
            "max_slot_wal_keep_size = \"1GB\"",
            "max_slot_wal_keep_size = \"32MB\"",
        );
        assert!(c.up_again().status.success());
        c.wait_healthy(Duration::from_secs(60));
        let leader = c.list()["leader"].as_str().unwrap().to_string();
        let standby = if leader == "n1" { "n2" } else { "n1" };
        // The standby's agent and PostgreSQL stop (a host down for a while).
        kill9(c.agent_pid(standby).unwrap());
        let pg = c.postmaster_pid(standby).unwrap();
        signal(pg, nix::sys::signal::Signal::SIGINT);
        wait_for("the standby stopped", Duration::from_secs(30), || {
            c.postmaster_pid(standby).is_none()
        });
        c.sql_direct(&leader, "CREATE TABLE big(x text)").unwrap();
        for _ in 0..5 {
            for sql in [
                "INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 20000)",
                "SELECT pg_switch_wal()",
                "CHECKPOINT",
            ] {
                c.sql_direct(&leader, sql).unwrap();
            }
        }
        // (Its slot is lost now; the primary's agent soon makes it again, empty.)
        // `up` returns once the member waits for the operator, and says what for (while it
        // runs and does not stream, its log's reason; once a rejoin found nothing to rewind,
        // that no rejoin can help).
        let o = c.up_again();
        assert!(o.status.success(), "up again failed:\n{}", text(&o));
        assert!(text(&o).contains("needs the operator"), "{}", text(&o));
        wait_for(
            &format!("{standby} to say it needs reinit"),
            Duration::from_secs(60),
            || {
                let m = c.message(standby);
                m.contains(&format!("pgbaton reinit {standby}")) && m.contains("failed")
            },
        );
        let msg = c.message(standby);
        assert!(msg.contains("has already been removed"), "{msg}");
        // It waits: no more stop-and-start rounds.
        let rejoins = |c: &Cluster| {
            std::fs::read_to_string(c.dir.join(standby).join("agent.log"))
                .unwrap_or_default()
                .matches("rejoining as a standby")
                .count()
        };
        let seen = rejoins(&c);
        std::thread::sleep(Duration::from_secs(10));
        assert_eq!(rejoins(&c), seen, "{}", msg);
        let o = c.op(&["reinit", standby]);
        assert!(o.status.success(), "reinit failed:\n{}", text(&o));
        wait_for(
            &format!("{standby} streams"),
            Duration::from_secs(60),
            || c.member(standby)["state"] == "streaming",
        );
        assert_eq!(count(&c, standby, "SELECT count(*) FROM big"), 100_000);
    });
}
