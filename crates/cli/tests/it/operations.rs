//! The operator's commands against a real cluster: promote, rejoin with pg_rewind, remove
//! and orphan slots, reinit, switchover, and each refusal.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// True on a primary whose last checkpoint is on the timeline it writes.
const CHECKPOINT_ON_CURRENT_TIMELINE: &str = "SELECT timeline_id = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int FROM pg_control_checkpoint()";

fn refused(o: &std::process::Output, needle: &str) {
    let t = text(o);
    assert!(!o.status.success(), "expected a refusal:\n{t}");
    assert!(
        t.contains("refused") && t.contains(needle),
        "the refusal should say {needle:?}:\n{t}"
    );
}

fn ok(o: &std::process::Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "the command failed:\n{t}");
    t
}

fn count(c: &Cluster, member: &str, sql: &str) -> i64 {
    c.sql(Some(member), sql).unwrap().parse().unwrap()
}

#[test]
fn paused_promote_after_losing_the_primary_then_rejoin_rewinds_the_diverged_one() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(30));
    c.sql(None, "CREATE TABLE rows (id int primary key, who text); INSERT INTO rows SELECT g, 'n1' FROM generate_series(1, 500) g")
        .unwrap();
    for m in ["n2", "n3"] {
        wait_for(&format!("500 rows on {m}"), Duration::from_secs(30), || {
            c.sql(Some(m), "SELECT count(*) FROM rows")
                .map(|o| o == "500")
                .unwrap_or(false)
        });
    }
    // Refused while the primary is healthy.
    refused(&c.op(&["promote", "n2"]), "switchover");

    // Both standbys have everything the primary wrote (so neither has more WAL than the
    // other when it is lost, and promoting n2 is not refused for that).
    wait_for(
        "both standbys at the primary's LSN",
        Duration::from_secs(30),
        || {
            let l = c.list();
            let ms = l["members"].as_array().cloned().unwrap_or_default();
            let lsn = |n: &str| ms.iter().find(|m| m["name"] == n).map(|m| m["lsn"].clone());
            lsn("n1").is_some() && lsn("n1") == lsn("n2") && lsn("n1") == lsn("n3")
        },
    );
    // Paused, nothing happens automatically: the operator drives the promotion and the
    // rejoin by hand (automatic failover has its own tests in failover.rs).
    let t = text(&c.cmd(&["pause"]));
    assert!(t.contains("paused"), "{t}");
    // Lose the primary host: its agent and postmaster together.
    let (agent, pm) = (c.agent_pid("n1").unwrap(), c.postmaster_pid("n1").unwrap());
    kill9(agent);
    kill9(pm);
    // Until its lease runs out the CLI still sees a healthy primary: the refusal says the
    // lease is still held and for how long (issue 14, item 8); with --wait it waits for
    // the lease to run out, then promotes.
    refused(
        &c.op(&["promote", "n2"]),
        "the leader lease is still held by n1",
    );
    let o = c.op(&["promote", "n2", "--wait"]);
    ok(&o);
    assert!(
        text(&o).contains("waiting for n1's leader lease to run out"),
        "{}",
        text(&o)
    );
    assert_eq!(
        count(&c, "n2", "SELECT count(*) FROM rows"),
        500,
        "rows lost in the promotion"
    );
    // Checkpointed on its new timeline before the command returned (pg_rewind reads a
    // source's timeline from its last checkpoint).
    assert_eq!(
        c.sql(Some("n2"), CHECKPOINT_ON_CURRENT_TIMELINE).unwrap(),
        "t",
        "n2 had not checkpointed on its timeline"
    );
    c.sql(Some("n2"), "INSERT INTO rows VALUES (501, 'n2')")
        .expect("the new primary accepts writes");
    wait_for("n3 to stream from n2", Duration::from_secs(60), || {
        let m = c.member("n3");
        m["state"] == "streaming"
            && m["upstream"] == "n2"
            && c.slots_on("n2").contains(&"pgbaton_n3:true".to_string())
    });
    wait_for("row 501 on n3", Duration::from_secs(30), || {
        c.sql(Some("n3"), "SELECT count(*) FROM rows WHERE id = 501")
            .map(|o| o == "1")
            .unwrap_or(false)
    });

    // The old primary commits rows that never reach anyone: its timeline diverges.
    let only_n1 = c.run_by_hand("n1", "INSERT INTO rows SELECT g, 'only n1' FROM generate_series(1000, 1009) g; SELECT count(*) FROM rows");
    assert_eq!(only_n1.lines().last(), Some("510"), "{only_n1}");
    c.sql(Some("n2"), "INSERT INTO rows VALUES (502, 'n2')")
        .unwrap();

    // Its agent comes back: paused, it waits for the operator instead of rejoining (and
    // never runs as a second primary).
    let o = c.up_again();
    assert!(
        text(&o).contains("n1 needs the operator") && text(&o).contains("not rejoining"),
        "{}",
        text(&o)
    );
    assert_eq!(c.member("n1")["state"], "stopped");
    assert!(
        c.postmaster_pid("n1").is_none(),
        "the former primary was started"
    );
    // Refused for a standby, accepted for the former primary.
    refused(&c.op(&["rejoin", "n3"]), "already a standby");
    let t = ok(&c.op(&["rejoin", "n1"]));
    assert!(t.contains("rejoin done"), "{t}");
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(
        log.contains("rewound: the data had diverged"),
        "no rewind in n1's log:\n{log}"
    );
    wait_for("n1 to stream from n2", Duration::from_secs(60), || {
        let m = c.member("n1");
        m["state"] == "streaming" && m["upstream"] == "n2"
    });
    wait_for("n2's rows on n1", Duration::from_secs(30), || {
        c.sql(Some("n1"), "SELECT count(*) FROM rows WHERE who = 'n2'")
            .map(|o| o == "2")
            .unwrap_or(false)
    });
    assert_eq!(
        count(&c, "n1", "SELECT count(*) FROM rows WHERE who = 'only n1'"),
        0,
        "rows only n1 had survived the rewind"
    );
    assert_eq!(count(&c, "n1", "SELECT count(*) FROM rows"), 502);
    let t = text(&c.cmd(&["resume"]));
    assert!(t.contains("resumed"), "{t}");

    // The history has both operations, with the timeline they left.
    let h: serde_json::Value =
        serde_json::from_slice(&c.cmd(&["history", "--json"]).stdout).unwrap();
    let ops: Vec<String> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["operation"], e["result"]))
        .collect();
    assert!(
        ops.contains(&"\"promote\" \"done\"".to_string())
            && ops.contains(&"\"rejoin\" \"done\"".to_string()),
        "{ops:?}"
    );
    assert!(
        h.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["operation"] == "promote" || e["operation"] == "rejoin")
            .all(|e| e["timeline"].as_u64() >= Some(2)),
        "{h:#}"
    );
}

#[test]
fn remove_drops_the_slot_and_orphans_are_handled_by_their_name() {
    let c = Cluster::up_with(3, &["--orphan-slot-grace", "3"]);
    c.wait_healthy(Duration::from_secs(30));
    refused(&c.op(&["remove", "n1"]), "primary");
    refused(&c.op(&["reinit", "n1"]), "primary");

    let t = ok(&c.op(&["remove", "n3"]));
    assert!(t.contains("remove done"), "{t}");
    assert!(
        !c.slots_on("n1").iter().any(|s| s.starts_with("pgbaton_n3")),
        "{:?}",
        c.slots_on("n1")
    );
    c.sql(Some("n1"), "CHECKPOINT").unwrap();
    let retained = c
        .sql(
            Some("n1"),
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgbaton_n3'",
        )
        .unwrap();
    assert_eq!(retained, "0");
    assert!(
        c.postmaster_pid("n3").is_none() && c.agent_pid("n3").is_none(),
        "n3 still runs"
    );
    assert!(
        c.data_dir("n3").join("PG_VERSION").exists(),
        "remove without --purge deleted the data"
    );
    assert!(!c.list()["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "n3"));
    // Some seconds later it has not come back (a removed agent must not re-register).
    std::thread::sleep(Duration::from_secs(3));
    assert!(!c.list()["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "n3"));
    assert!(!c.slots_on("n1").iter().any(|s| s.starts_with("pgbaton_n3")));

    // remove --purge deletes the data directory.
    ok(&c.op(&["remove", "n2", "--purge"]));
    assert!(
        !c.data_dir("n2").exists(),
        "--purge kept the data directory"
    );

    // Orphans: a pgbaton-named slot of nobody is reported, then dropped; a foreign one is
    // reported and kept.
    c.sql(Some("n1"), "SELECT pg_create_physical_replication_slot('pgbaton_ghost', true); SELECT pg_create_physical_replication_slot('backup_tool', true)")
        .unwrap();
    wait_for(
        "list to report both orphans",
        Duration::from_secs(15),
        || {
            let orphans = c.list()["orphan_slots"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            orphans
                .iter()
                .any(|o| o["name"] == "pgbaton_ghost" && o["pgbaton_named"] == true)
                && orphans
                    .iter()
                    .any(|o| o["name"] == "backup_tool" && o["pgbaton_named"] == false)
        },
    );
    let table = text(&c.cmd(&["list"]));
    assert!(
        table.contains("backup_tool") && table.contains("never drops it"),
        "{table}"
    );
    wait_for(
        "pgbaton_ghost to be dropped after the grace period",
        Duration::from_secs(30),
        || {
            !c.slots_on("n1")
                .iter()
                .any(|s| s.starts_with("pgbaton_ghost"))
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        c.slots_on("n1")
            .iter()
            .any(|s| s.starts_with("backup_tool")),
        "a foreign slot was dropped"
    );
}

#[test]
fn reinit_reclones_a_standby_with_progress() {
    let c = Cluster::up(2);
    c.wait_healthy(Duration::from_secs(30));
    c.sql(None, "CREATE TABLE r (x int); INSERT INTO r VALUES (1)")
        .unwrap();
    let marker = c.data_dir("n2").join("pgbaton-test-marker");
    std::fs::write(&marker, "old copy").unwrap();
    let t = ok(&c.op(&["reinit", "n2"]));
    assert!(t.contains("reinit done"), "{t}");
    // pg_basebackup's progress was read and published (the CLI shows it when its poll
    // falls inside the clone, which a 20 MB clone may finish before).
    let log = std::fs::read_to_string(c.dir.join("n2/agent.log")).unwrap();
    assert!(
        log.contains("re-cloning from n1") && log.contains("base backup 100%"),
        "{log}"
    );
    assert!(!marker.exists(), "the data directory was not replaced");
    c.wait_healthy(Duration::from_secs(60));
    wait_for(
        "the row on the re-cloned n2",
        Duration::from_secs(30),
        || {
            c.sql(Some("n2"), "SELECT count(*) FROM r")
                .map(|o| o == "1")
                .unwrap_or(false)
        },
    );
    let o = c.op(&["reinit", "n2", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["operation"]["phase"], "done");
    assert_eq!(v["operation"]["kind"], "reinit");
}

#[test]
fn switchover_there_and_back_loses_no_acknowledged_write() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(30));
    c.sql(None, "CREATE TABLE w (id int primary key)").unwrap();
    wait_for("table w on the standbys", Duration::from_secs(30), || {
        ["n2", "n3"]
            .iter()
            .all(|m| c.sql(Some(m), "SELECT count(*) FROM w").is_ok())
    });

    // Refused: a candidate that is not streaming.
    let (a3, p3) = (c.agent_pid("n3").unwrap(), c.postmaster_pid("n3").unwrap());
    kill9(a3);
    kill9(p3);
    wait_for("n3 to look unreachable", Duration::from_secs(20), || {
        c.member("n3")["state"] != "streaming"
    });
    refused(
        &c.op(&["switchover", "--to", "n3"]),
        "not a streaming standby",
    );
    assert_eq!(
        c.list()["leader"],
        "n1",
        "a refused switchover changed the leader"
    );
    let o = c.up_again(); // brings n3 back
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(60));

    // A continuous writer; only rows whose commit was acknowledged count.
    let stop = AtomicBool::new(false);
    let acked = Mutex::new(Vec::<u32>::new());
    /// Stops the writer however the scope is left: a failed assertion inside it would
    /// otherwise wait for a writer that never stops.
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop_writer = StopOnDrop(&stop);
        s.spawn(|| {
            let mut i = 0u32;
            let deadline = std::time::Instant::now() + Duration::from_secs(240);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                i += 1;
                if c.sql(None, &format!("INSERT INTO w VALUES ({i})")).is_ok() {
                    acked.lock().unwrap().push(i);
                }
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        let t = ok(&c.op(&["switchover", "--to", "n2"]));
        assert!(t.contains("switchover done"), "{t}");
        assert_eq!(c.list()["leader"], "n2");
        // Checkpointed on its new timeline before the command returned (pg_rewind reads a
        // source's timeline from its last checkpoint).
        assert_eq!(
            c.sql(Some("n2"), CHECKPOINT_ON_CURRENT_TIMELINE).unwrap(),
            "t",
            "n2 had not checkpointed on its timeline"
        );
        std::thread::sleep(Duration::from_secs(1));
        let t = ok(&c.op(&["switchover", "--to", "n1"]));
        assert!(t.contains("switchover done"), "{t}");
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
    });
    let acked = acked.into_inner().unwrap();
    assert!(acked.len() > 10, "the writer hardly wrote: {}", acked.len());
    assert_eq!(c.list()["leader"], "n1");
    c.wait_healthy(Duration::from_secs(60));
    let present: std::collections::HashSet<u32> = c
        .sql(Some("n1"), "SELECT id FROM w")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|i| !present.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    for m in ["n2", "n3"] {
        wait_for(&format!("all rows on {m}"), Duration::from_secs(30), || {
            c.sql(Some(m), "SELECT count(*) FROM w")
                .map(|o| o == present.len().to_string())
                .unwrap_or(false)
        });
    }
    let log = std::fs::read_to_string(c.dir.join("n1/agent.log")).unwrap();
    assert!(
        log.contains("no rewind needed"),
        "a switchover should not need a rewind:\n{log}"
    );
}
