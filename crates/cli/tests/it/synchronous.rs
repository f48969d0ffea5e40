//! Issue 14: synchronous and quorum replication against real PostgreSQL (and etcd): no
//! acknowledged commit lost when the primary's host is lost, degradation and strict mode,
//! `nosync`, and the health endpoints.

use crate::harness::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wait until the store's record proves a standby (the leader set its list up); returns
/// the record's members.
pub(crate) fn wait_synchronous(c: &Cluster) -> Vec<String> {
    let mut members = vec![];
    wait_for(
        "a synchronous standby recorded",
        Duration::from_secs(60),
        || {
            let s = &c.list()["synchronous"];
            members = s["members"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|m| m.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            s["failover_possible"] == true
        },
    );
    members
}

/// Sets the flag when dropped, so writer threads stop even when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A writer per member, each inserting a unique id over the member's socket (only the
/// primary accepts); every acknowledged id is recorded with the member that acknowledged
/// it. Runs `event` meanwhile.
fn with_writers<T>(
    c: &Cluster,
    event: impl FnOnce(&Mutex<Vec<(String, u64)>>) -> T,
) -> (T, Vec<(String, u64)>) {
    c.sql(None, "CREATE TABLE w (id bigint primary key)")
        .unwrap();
    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(1);
    let acked = Mutex::new(vec![]);
    let members = c.member_names();
    let out = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for m in &members {
            let (stop, next, acked) = (&stop, &next, &acked);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let id = next.fetch_add(1, Ordering::SeqCst);
                    if c.sql_direct(m, &format!("INSERT INTO w VALUES ({id})"))
                        .is_ok()
                    {
                        acked.lock().unwrap().push((m.clone(), id));
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        wait_for("writes acknowledged", Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= 20
        });
        event(&acked)
    });
    (out, acked.into_inner().unwrap())
}

/// The primary's host is lost under a continuous writer: a member the record proves takes
/// over, and every commit the old primary acknowledged is on it.
fn host_loss_loses_nothing(c: &Cluster) {
    c.wait_healthy(Duration::from_secs(60));
    let proven = wait_synchronous(c);
    let old = c.list()["leader"].as_str().unwrap().to_string();
    let (new, acked) = with_writers(c, |acked| {
        let before = acked.lock().unwrap().len();
        wait_for("more writes", Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= before + 20
        });
        let t0 = Instant::now();
        lose_host(c, &old);
        let new = c.failed_over_from(&old);
        eprintln!("{new} took over {:?} after the host loss", t0.elapsed());
        wait_for(
            &format!("writes acknowledged by {new}"),
            Duration::from_secs(30),
            || acked.lock().unwrap().iter().any(|(m, _)| *m == new),
        );
        new
    });
    assert!(
        proven.contains(&new),
        "{new} took over, but the synchronous set was {proven:?}"
    );
    let on_new: BTreeSet<u64> = c
        .sql(Some(&new), "SELECT id FROM w")
        .unwrap()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let by_old: Vec<u64> = acked
        .iter()
        .filter(|(m, _)| *m == old)
        .map(|(_, id)| *id)
        .collect();
    let lost: Vec<&u64> = by_old.iter().filter(|id| !on_new.contains(id)).collect();
    eprintln!(
        "{} commits acknowledged by {old}, {} by {new}; lost: {lost:?}",
        by_old.len(),
        acked.iter().filter(|(m, _)| *m == new).count()
    );
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    assert!(
        !acked.iter().any(|(m, _)| *m != old && *m != new),
        "a third member acknowledged writes"
    );
    // The new leader sets its own synchronous standby up, and the old member rejoins.
    let again = wait_synchronous(c);
    assert!(!again.contains(&new), "{again:?}");
    with_logs_on_panic(c, || {
        let o = c.up_again();
        assert!(o.status.success(), "{}", text(&o));
        c.wait_healthy(Duration::from_secs(90));
    });
    let h = text(&c.cmd(&["history"]));
    assert!(h.contains("synchronous standbys"), "{h}");
}

#[test]
fn synchronous_on_loses_no_acknowledged_commit_when_the_primary_host_is_lost() {
    let c = Cluster::up_with(3, &["--synchronous", "on"]);
    host_loss_loses_nothing(&c);
}

#[test]
fn quorum_on_etcd_loses_no_acknowledged_commit_when_the_primary_host_is_lost() {
    let etcd = Etcd::new();
    let c = Cluster::up_with(3, &["--synchronous", "quorum", "--etcd", &etcd.endpoint]);
    host_loss_loses_nothing(&c);
    drop(c);
}

/// Set `key = value` in `[replication]` or `[tags]` of every member's node.toml (the
/// cluster stopped), and start it again.
fn reconfigure(c: &Cluster, edits: &[(&str, &str, &str)]) {
    let o = c.down(false);
    assert!(o.status.success(), "{}", text(&o));
    for (member, from, to) in edits {
        let p = c.dir.join(member).join("node.toml");
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{from} not in {}:\n{t}", p.display());
        std::fs::write(&p, t.replace(from, to)).unwrap();
    }
    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(90));
}

/// A commit on `member` in a thread: its result arrives on the channel.
fn commit_in_background(
    c: &Cluster,
    member: &str,
    id: u64,
) -> std::sync::mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let port = (c.port_base + member[1..].parse::<u16>().unwrap() - 1).to_string();
    let sock = c.dir.join(member).join("run");
    std::thread::spawn(move || {
        let out = run_with_timeout(
            as_pg(
                std::process::Command::new(format!("{PG_BIN}/psql"))
                    .arg("-h")
                    .arg(&sock)
                    .args(["-p", &port, "-d", "app", "-X", "-At", "-c"])
                    .arg(format!("INSERT INTO t VALUES ({id})")),
            ),
            Duration::from_secs(120),
        );
        let r = if out.status.success() {
            Ok(text(&out))
        } else {
            Err(text(&out))
        };
        let _ = tx.send(r);
    });
    rx
}

#[test]
fn without_standbys_commits_degrade_unless_strict_and_then_wait() {
    let c = Cluster::up_with(3, &["--synchronous", "on"]);
    c.wait_healthy(Duration::from_secs(60));
    wait_synchronous(&c);
    c.sql(None, "CREATE TABLE t (id int)").unwrap();
    // Not strict: every standby gone, the primary runs asynchronously and says so.
    lose_host(&c, "n2");
    lose_host(&c, "n3");
    wait_for("degraded", Duration::from_secs(30), || {
        c.list()["synchronous"]["degraded"] == true
    });
    c.sql_direct("n1", "INSERT INTO t VALUES (1)")
        .expect("a degraded primary commits");
    let l = text(&c.cmd(&["list"]));
    assert!(l.contains("DEGRADED"), "{l}");
    let h = text(&c.cmd(&["history"]));
    assert!(h.contains("degraded"), "{h}");
    let m = text(&c.cmd(&["list", "--json"]));
    assert!(m.contains("\"failover_possible\": false"), "{m}");
    // Strict: every standby gone, commits wait; one back, they complete.
    let edits: Vec<(&str, &str, &str)> = ["n1", "n2", "n3"]
        .iter()
        .map(|m| {
            (
                *m,
                "synchronous_strict = false",
                "synchronous_strict = true",
            )
        })
        .collect();
    reconfigure(&c, &edits);
    wait_synchronous(&c);
    let leader = c.list()["leader"].as_str().unwrap().to_string();
    let standbys: Vec<String> = c
        .member_names()
        .into_iter()
        .filter(|m| *m != leader)
        .collect();
    for s in &standbys {
        lose_host(&c, s);
    }
    wait_for("the standbys gone", Duration::from_secs(30), || {
        standbys.iter().all(|s| c.postmaster_pid(s).is_none())
    });
    let rx = commit_in_background(&c, &leader, 2);
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_err(),
        "a strict primary acknowledged a commit with no standby"
    );
    assert!(
        !text(&c.cmd(&["list"])).contains("DEGRADED"),
        "a strict primary degraded"
    );
    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    let r = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the waiting commit completes once a standby is back");
    r.expect("the commit succeeded");
    c.wait_healthy(Duration::from_secs(60));
}

#[test]
fn a_synchronous_standby_that_stops_is_replaced_within_a_few_loops() {
    let c = Cluster::up_with(3, &["--synchronous", "on"]);
    c.wait_healthy(Duration::from_secs(60));
    let set = wait_synchronous(&c);
    let [gone] = set.as_slice() else {
        panic!("one synchronous standby expected: {set:?}")
    };
    let other = if gone == "n2" { "n3" } else { "n2" };
    let t0 = Instant::now();
    lose_host(&c, gone);
    let mut now = vec![];
    wait_for(
        &format!("{other} synchronous instead of {gone}"),
        Duration::from_secs(20),
        || {
            now = wait_synchronous(&c);
            now == [other]
        },
    );
    eprintln!(
        "{other} replaced {gone} {:?} after it was lost",
        t0.elapsed()
    );
    // Commits go on, and wait for the new one.
    c.sql(None, "CREATE TABLE after_replacement (x int)")
        .unwrap();
    wait_for(
        &format!("the primary's list naming {other}"),
        Duration::from_secs(10),
        || {
            c.list()["synchronous"]["standby_names"]
                .as_str()
                .unwrap_or_default()
                .contains(other)
        },
    );
    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(60));
}

#[test]
fn a_nosync_member_is_never_synchronous_nor_promoted() {
    let c = Cluster::up_with(3, &["--synchronous", "on"]);
    c.wait_healthy(Duration::from_secs(60));
    reconfigure(&c, &[("n2", "nosync = false", "nosync = true")]);
    let set = wait_synchronous(&c);
    assert_eq!(set, ["n3"], "the synchronous set");
    // Each agent answers from its own last loop, which may be a loop behind the store.
    let api = |m: &str, path: &str| http("GET", api_port(&c, m), path, &[], "").0;
    let answers = || {
        [
            api("n3", "/sync"),
            api("n2", "/sync"),
            api("n2", "/async"),
            api("n3", "/async"),
            api("n1", "/sync"),
        ]
    };
    wait_for(
        "/sync on n3 only, /async on n2 only, neither on the primary",
        Duration::from_secs(10),
        || answers() == [200, 503, 200, 503, 503],
    );
    // n3 lost: no eligible standby (n2 is nosync), so the primary degrades.
    lose_host(&c, "n3");
    wait_for("degraded", Duration::from_secs(30), || {
        c.list()["synchronous"]["degraded"] == true
    });
    // The primary lost too: n2 is never promoted while synchronous mode is on.
    lose_host(&c, "n1");
    std::thread::sleep(Duration::from_secs(8));
    let l = c.list();
    assert!(l["leader"].is_null(), "someone took over: {l}");
    let n2 = c.member("n2");
    assert_eq!(n2["role"], "standby", "{n2}");
    let note = n2["message"].as_str().unwrap_or_default();
    assert!(note.contains("synchronous"), "n2 says why it waits: {note}");
    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(90));
}

#[test]
fn up_refuses_more_synchronous_standbys_than_it_has() {
    let s = scratch();
    let dir = s.path.join("c");
    let up = |extra: &[&str]| {
        let mut args = vec!["up", "--dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = pgbaton(&args, Duration::from_secs(30));
        assert!(!o.status.success(), "{}", text(&o));
        text(&o)
    };
    let t = up(&[
        "--nodes",
        "3",
        "--synchronous",
        "on",
        "--synchronous-node-count",
        "3",
    ]);
    assert!(
        t.contains("--synchronous-node-count 3") && t.contains("2 standby"),
        "{t}"
    );
    assert!(!dir.exists(), "something was created");
    let t = up(&["--synchronous", "always"]);
    assert!(t.contains("always") && t.contains("quorum"), "{t}");
}
