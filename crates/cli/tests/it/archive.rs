//! The WAL archive with real PostgreSQL: archiving through `pgbaton wal-push` survives a
//! failover and a switchover with no hole, and `wal-push` itself is crash-safe.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

/// SQL on every member until it answers `want`; when it does not in time, what each
/// member's archiver says, and the end of the agents' and PostgreSQL's logs.
fn on_every_member(c: &Cluster, what: &str, sql: &str, want: &str) {
    let members = c.member_names();
    let archivers = || {
        members
            .iter()
            .map(|m| {
                let row = c.sql_direct(m, "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal, last_failed_time FROM pg_stat_archiver");
                format!("{m}: {row:?}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_logs_on_panic(c, || {
            wait_for(what, Duration::from_secs(60), || {
                members
                    .iter()
                    .all(|m| c.sql_direct(m, sql).is_ok_and(|o| o == want))
            })
        })
    }));
    if let Err(e) = r {
        eprintln!("--- pg_stat_archiver on each member:\n{}", archivers());
        std::panic::resume_unwind(e);
    }
}

/// Files waiting for the archiver in a member's pg_wal.
fn ready(c: &Cluster, member: &str) -> Vec<String> {
    std::fs::read_dir(c.data_dir(member).join("pg_wal/archive_status"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ready"))
                .collect()
        })
        .unwrap_or_default()
}

fn switch_wal(c: &Cluster, member: &str, n: usize) {
    for i in 0..n {
        c.sql(
            Some(member),
            &format!("CREATE TABLE IF NOT EXISTS arch (x int); INSERT INTO arch VALUES ({i}); SELECT pg_switch_wal()"),
        )
        .unwrap();
    }
}

fn archive_check(c: &Cluster) -> (bool, String) {
    let dir = c.dir.join("archive");
    let o = pgbaton(
        &["archive", "check", "--dir", dir.to_str().unwrap()],
        Duration::from_secs(30),
    );
    (o.status.success(), text(&o))
}

/// Issue 11: with `test ! -f && cp`, the new primary's archiver failed after a failover on
/// a segment already archived, retried it forever, and pg_wal was never recycled again.
#[test]
fn an_archived_cluster_survives_failover_and_switchover_with_no_hole() {
    let c = Cluster::up_with(3, &["--archive"]);
    c.wait_healthy(Duration::from_secs(60));
    let conf = std::fs::read_to_string(c.data_dir("n1").join("pgbaton.conf")).unwrap();
    assert!(
        conf.contains("archive_mode = always") && conf.contains("wal-push"),
        "{conf}"
    );
    assert!(
        conf.contains("restore_command") && conf.contains("wal-fetch"),
        "{conf}"
    );
    switch_wal(&c, "n1", 3);

    // Host loss of the primary, then it comes back and rejoins.
    let (agent, pm) = (c.agent_pid("n1").unwrap(), c.postmaster_pid("n1").unwrap());
    kill9(agent);
    kill9(pm);
    let new = c.failed_over_from("n1");
    switch_wal(&c, &new, 2);
    let _ = c.up_again();
    c.wait_healthy(Duration::from_secs(90));
    // A switchover back to the former primary: it holds its own copy of the segment its
    // timeline ended in, which differs from the archived one (the standbys'), and the
    // checkpoint of a primary asks for every unarchived segment to be archived.
    wait_for("n1 streaming", Duration::from_secs(60), || {
        c.member("n1")["state"] == "streaming"
    });
    let o = c.op(&["switchover", "--to", "n1"]);
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(60));
    let leader = c.list()["leader"].as_str().unwrap().to_string();
    assert_eq!(leader, "n1", "the switchover did not go to n1");
    switch_wal(&c, &leader, 3);
    c.sql(Some(&leader), "CHECKPOINT").unwrap();

    // Every member's archiver keeps up and never failed.
    on_every_member(
        &c,
        "every archiver caught up",
        "SELECT failed_count = 0 AND archived_count > 0 FROM pg_stat_archiver",
        "t",
    );
    wait_for("nothing left to archive", Duration::from_secs(60), || {
        c.member_names().iter().all(|m| ready(&c, m).is_empty())
    });
    for m in c.member_names() {
        let failed = c
            .sql_direct(&m, "SELECT failed_count || ' ' || coalesce(last_failed_wal, '-') FROM pg_stat_archiver")
            .unwrap();
        assert_eq!(failed, "0 -", "{m}'s archiver failed");
    }
    // pg_wal on the primary is recycled after a checkpoint: it holds a few segments, not
    // every one written since the failover.
    let segs = std::fs::read_dir(c.data_dir(&leader).join("pg_wal"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().len() == 24)
        .count();
    assert!(segs < 40, "{leader}'s pg_wal holds {segs} segments");
    // The archive has the history files and no hole across the three timelines.
    let (whole, out) = archive_check(&c);
    assert!(whole, "{out}");
    assert!(out.contains("1 -> 2 -> 3"), "{out}");
    assert!(out.contains("no hole"), "{out}");
    let archive = c.dir.join("archive");
    for h in ["00000002.history", "00000003.history"] {
        assert!(archive.join(h).exists(), "{h} is not archived");
    }
    // Removing one segment from the middle is found, by name.
    let mut segs: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segs.sort();
    let victim = segs[segs.len() / 2].clone();
    std::fs::rename(archive.join(&victim), c.dir.join("victim")).unwrap();
    let (whole, out) = archive_check(&c);
    assert!(!whole && out.contains(&victim), "{out}");
    std::fs::rename(c.dir.join("victim"), archive.join(&victim)).unwrap();
}

fn wal_push(dir: &Path, path: &Path, name: &str) -> std::process::Output {
    pgbaton(
        &[
            "wal-push",
            "--dir",
            dir.to_str().unwrap(),
            path.to_str().unwrap(),
            name,
        ],
        Duration::from_secs(30),
    )
}

#[test]
fn wal_push_is_crash_safe_idempotent_and_never_overwrites() {
    let s = scratch();
    let archive = s.path.join("archive");
    std::fs::create_dir(&archive).unwrap();
    let name = "000000010000000000000007";
    // A push killed mid-copy (its source is a pipe that stops after 1 MB): nothing under the
    // final name.
    let fifo = s.path.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut push = std::process::Command::new(env!("CARGO_BIN_EXE_pgbaton"))
        .args([
            "wal-push",
            "--dir",
            archive.to_str().unwrap(),
            fifo.to_str().unwrap(),
            name,
        ])
        .spawn()
        .unwrap();
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut w, &vec![1u8; 1 << 20]).unwrap();
    wait_for("the copy under way", Duration::from_secs(10), || {
        std::fs::read_dir(&archive).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().contains("pgbaton-tmp")
                && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    });
    kill9(push.id() as i32);
    push.wait().unwrap();
    drop(w);
    assert!(
        !archive.join(name).exists(),
        "a partial file under the final name"
    );

    // Pushing the same segment twice succeeds, and leaves it as it was.
    let seg = s.path.join("seg");
    std::fs::write(&seg, vec![3u8; 1 << 20]).unwrap();
    for _ in 0..2 {
        let o = wal_push(&archive, &seg, name);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(
        std::fs::read(archive.join(name)).unwrap(),
        vec![3u8; 1 << 20]
    );
    // A different segment under that name is refused, naming both; the archive keeps its own.
    let other = s.path.join("other");
    std::fs::write(&other, vec![4u8; 1 << 20]).unwrap();
    let o = wal_push(&archive, &other, name);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("differs") && t.contains(name) && t.contains("other"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(archive.join(name)).unwrap(),
        vec![3u8; 1 << 20]
    );
    // wal-fetch: there, and not there (exit 1, which PostgreSQL takes as "not archived").
    let dest = s.path.join("RECOVERYXLOG");
    let fetch = |n: &str| {
        pgbaton(
            &[
                "wal-fetch",
                "--dir",
                archive.to_str().unwrap(),
                n,
                dest.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
    };
    assert!(fetch(name).status.success());
    assert_eq!(std::fs::read(&dest).unwrap(), vec![3u8; 1 << 20]);
    assert_eq!(fetch("00000009.history").status.code(), Some(1));
}

/// Issue 11: a standby whose slot was invalidated needed a full re-clone, even with every
/// segment it lacked in the archive.
#[test]
fn a_standby_past_its_slot_catches_up_from_the_archive_without_a_reclone() {
    let c = Cluster::up_with(2, &["--archive"]);
    c.wait_healthy(Duration::from_secs(60));
    // A small slot limit: stop, edit each member's config, start again.
    let o = c.down(false);
    assert!(o.status.success(), "{}", text(&o));
    c.edit_node_configs(
        "max_slot_wal_keep_size = \"1GB\"",
        "max_slot_wal_keep_size = \"32MB\"",
    );
    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(60));
    c.sql(None, "CREATE TABLE big (x int)").unwrap();
    // A re-clone would replace n2's data directory, and this file with it.
    let marker = c.data_dir("n2").join("pgbaton-test-marker");
    std::fs::write(&marker, "kept").unwrap();
    let (agent, pm) = (c.agent_pid("n2").unwrap(), c.postmaster_pid("n2").unwrap());
    kill9(agent);
    kill9(pm);
    for _ in 0..6 {
        c.sql(
            None,
            "INSERT INTO big SELECT generate_series(1, 50000); SELECT pg_switch_wal()",
        )
        .unwrap();
    }
    c.sql(None, "CHECKPOINT").unwrap();
    let log = c.dir.join("n1/agent.log");
    wait_for(
        "n2's slot invalidated and made again",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("pgbaton_n2 had been invalidated"))
        },
    );
    let _ = c.up_again();
    wait_for("n2 streaming again", Duration::from_secs(90), || {
        let m = c.member("n2");
        m["state"] == "streaming"
    });
    wait_for("every row on n2", Duration::from_secs(30), || {
        c.sql(Some("n2"), "SELECT count(*) FROM big")
            .is_ok_and(|o| o == "300000")
    });
    assert!(marker.exists(), "n2 was re-cloned");
    let pglog = std::fs::read_to_string(c.dir.join("n2/postgres.log")).unwrap();
    assert!(
        pglog.contains("restored log file"),
        "n2 restored nothing from the archive:\n{pglog}"
    );
}

fn metric(c: &Cluster, member: &str, name: &str) -> Option<f64> {
    let (_, body) = http("GET", api_port(c, member), "/metrics", &[], "");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Issue 11, item 5: a stuck archiver is reported (list, metrics) long before the disk is
/// full, and the report clears when the archive works again.
#[test]
fn a_stuck_archiver_is_reported_and_clears_when_the_archive_works_again() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::up_with(2, &["--archive"]);
    c.wait_healthy(Duration::from_secs(60));
    wait_for(
        "the leader's first archive check",
        Duration::from_secs(30),
        || {
            c.member("n1")["archive"]["missing_segments"] == 0
                && metric(&c, "n1", "pgbaton_archive_missing_segments") == Some(0.0)
        },
    );
    let listed = || text(&c.cmd(&["list"]));
    let archive = c.dir.join("archive");
    let before = std::fs::metadata(&archive).unwrap().permissions();
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o500)).unwrap();
    switch_wal(&c, "n1", 2);
    wait_for(
        "the stuck archiver in list",
        Duration::from_secs(60),
        || {
            listed().contains("archiver stuck")
                && metric(&c, "n1", "pgbaton_archive_stuck") == Some(1.0)
        },
    );
    let t = listed();
    assert!(t.contains("failed on"), "{t}");
    std::fs::set_permissions(&archive, before).unwrap();
    wait_for("the archiver caught up", Duration::from_secs(90), || {
        !listed().contains("archiver stuck")
            && metric(&c, "n1", "pgbaton_archive_stuck") == Some(0.0)
            && metric(&c, "n1", "pgbaton_archive_waiting_files") == Some(0.0)
    });
    let (whole, out) = archive_check(&c);
    assert!(whole, "{out}");
}
