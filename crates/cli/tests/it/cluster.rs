//! A real cluster: replication, slots, security properties, crash recovery, down/up.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn three_members_replicate_through_slots_and_keep_secrets() {
    let c = Cluster::up(3);

    // 1 primary, 2 streaming standbys, in the documented JSON shape.
    let l = c.list();
    assert_eq!(l["cluster"], "pgbaton");
    let members = l["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{l:#}");
    for m in members {
        for key in [
            "name",
            "role",
            "state",
            "host",
            "port",
            "timeline",
            "lsn",
            "lag_bytes",
            "slot",
        ] {
            assert!(m.get(key).is_some(), "member lacks {key}: {m:#}");
        }
    }
    let primary: Vec<_> = members.iter().filter(|m| m["role"] == "primary").collect();
    assert_eq!(primary.len(), 1, "{l:#}");
    assert_eq!(primary[0]["state"], "running");
    let primary = primary[0]["name"].as_str().unwrap().to_string();
    let standbys: Vec<String> = members
        .iter()
        .filter(|m| m["role"] == "standby")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(standbys.len(), 2);
    c.wait_healthy(Duration::from_secs(30));

    // A row written on the primary is read on both standbys.
    c.sql(None, "CREATE TABLE seen (id int primary key, note text); INSERT INTO seen VALUES (1, 'from the primary')")
        .unwrap();
    for s in &standbys {
        wait_for(&format!("the row on {s}"), Duration::from_secs(30), || {
            c.sql(Some(s), "SELECT note FROM seen WHERE id = 1")
                .map(|o| o == "from the primary")
                .unwrap_or(false)
        });
        // It really is a standby: writes are refused.
        let e = c
            .sql(Some(s), "INSERT INTO seen VALUES (2, 'x')")
            .unwrap_err();
        assert!(e.contains("read-only"), "{e}");
    }

    // Each standby has an active physical slot on the primary, named after it.
    wait_for(
        "active slots for both standbys",
        Duration::from_secs(30),
        || {
            let out = c
            .sql(Some(&primary), "SELECT slot_name || ':' || active FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1")
            .unwrap();
            let want: Vec<String> = standbys
                .iter()
                .map(|s| format!("pgbaton_{s}:true"))
                .collect();
            out.lines().map(String::from).collect::<Vec<_>>() == want
        },
    );
    // ... and `list` reports them.
    wait_for(
        "list to show the slots active",
        Duration::from_secs(15),
        || {
            standbys.iter().all(|s| {
                let m = c.member(s);
                m["slot"] == format!("pgbaton_{s}")
                    && m["slot_active"] == true
                    && m["lag_bytes"].is_u64()
            })
        },
    );

    // The replication role holds a SCRAM verifier, not a clear-text or md5 password.
    let v = c
        .sql(
            Some(&primary),
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'",
        )
        .unwrap();
    assert!(v.starts_with("SCRAM-SHA-256$"), "{v}");

    // No `trust` on a network line of any pg_hba.conf; network lines use scram-sha-256.
    for m in c.member_names() {
        let hba = std::fs::read_to_string(c.data_dir(&m).join("pg_hba.conf")).unwrap();
        let host_lines: Vec<&str> = hba
            .lines()
            .filter(|l| l.trim_start().starts_with("host"))
            .collect();
        assert!(!host_lines.is_empty());
        for l in &host_lines {
            assert!(!l.contains("trust"), "{m}: {l}");
            assert!(l.trim_end().ends_with("scram-sha-256"), "{m}: {l}");
        }
        assert!(
            !hba.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("trust")),
            "{m}:\n{hba}"
        );
    }

    // The password is nowhere it must not be.
    let pw = c.password();
    assert!(pw.len() >= 20);
    for m in c.member_names() {
        let auto = std::fs::read_to_string(c.data_dir(&m).join("postgresql.auto.conf"))
            .unwrap_or_default();
        assert!(
            !auto.contains(&pw) && !auto.to_lowercase().contains("password"),
            "{m} postgresql.auto.conf:\n{auto}"
        );
        let conf = std::fs::read_to_string(c.data_dir(&m).join("pgbaton.conf")).unwrap();
        assert!(!conf.contains(&pw), "{m} pgbaton.conf holds the password");
    }
    let mut files = Vec::new();
    all_files(&c.dir, &mut files);
    let logs: Vec<_> = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".log") || p.to_string_lossy().contains("/log/"))
        .collect();
    assert!(
        logs.len() >= 6,
        "expected agent and PostgreSQL logs, found {logs:?}"
    );
    for f in logs {
        let t = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        assert!(!t.contains(&pw), "the password is in {}", f.display());
    }
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&pw),
                "the password is on the command line of pid {:?}",
                e.file_name()
            );
        }
    }

    // Permissions: data directories 0700, secrets 0600.
    assert_eq!(mode(&c.dir.join("replication.password")), 0o600);
    for m in c.member_names() {
        assert_eq!(mode(&c.data_dir(&m)), 0o700, "{m} data dir");
        assert_eq!(mode(&c.dir.join(&m).join("pgpass")), 0o600, "{m} passfile");
    }

    // Every process runs unprivileged (CI runs the tests as root).
    for m in c.member_names() {
        for pid in [c.agent_pid(&m).unwrap(), c.postmaster_pid(&m).unwrap()] {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            let uids: Vec<u32> = uid_line
                .split_whitespace()
                .skip(1)
                .map(|u| u.parse().unwrap())
                .collect();
            assert!(
                uids.iter().all(|u| *u != 0),
                "pid {pid} of {m} runs as root: {uid_line}"
            );
        }
    }
    // dsn names the member's socket and port.
    let o = c.cmd(&["dsn", "n2"]);
    let dsn = String::from_utf8_lossy(&o.stdout);
    assert!(
        dsn.contains(&format!("port={}", c.port_base + 1)) && dsn.contains("host=/"),
        "{dsn}"
    );
}

#[test]
fn killed_standby_postmaster_is_brought_back_and_streams_again() {
    let c = Cluster::up(2);
    c.wait_healthy(Duration::from_secs(30));
    let old = c.postmaster_pid("n2").expect("n2's postmaster runs");
    kill9(old);
    wait_for(
        "n2's agent to restart PostgreSQL",
        Duration::from_secs(60),
        || c.postmaster_pid("n2").is_some_and(|p| p != old),
    );
    c.wait_healthy(Duration::from_secs(60));
    c.sql(
        None,
        "CREATE TABLE after_crash (x int); INSERT INTO after_crash VALUES (7)",
    )
    .unwrap();
    wait_for("the new row on n2", Duration::from_secs(30), || {
        c.sql(Some("n2"), "SELECT x FROM after_crash")
            .map(|o| o == "7")
            .unwrap_or(false)
    });
    let log = std::fs::read_to_string(c.dir.join("n2/agent.log")).unwrap();
    assert!(log.contains("stopped without being asked to"), "{log}");
}

#[test]
fn down_then_up_keeps_identity_and_data_without_recloning() {
    let c = Cluster::up(3);
    c.wait_healthy(Duration::from_secs(30));
    let sysid = c.member("n1")["system_id"].as_str().unwrap().to_string();
    c.sql(
        None,
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (1), (2), (3)",
    )
    .unwrap();
    wait_for("the rows on n3", Duration::from_secs(30), || {
        c.sql(Some("n3"), "SELECT count(*) FROM kept")
            .map(|o| o == "3")
            .unwrap_or(false)
    });

    // `up` on a running cluster says so and changes nothing.
    let pids: Vec<_> = c
        .member_names()
        .iter()
        .map(|m| (c.agent_pid(m), c.postmaster_pid(m)))
        .collect();
    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("already running"), "{}", text(&o));
    let pids_after: Vec<_> = c
        .member_names()
        .iter()
        .map(|m| (c.agent_pid(m), c.postmaster_pid(m)))
        .collect();
    assert_eq!(pids, pids_after);

    let o = c.down(false);
    assert!(o.status.success(), "{}", text(&o));
    for m in c.member_names() {
        assert!(
            c.postmaster_pid(&m).is_none(),
            "{m}'s PostgreSQL still runs after down"
        );
        assert!(
            c.agent_pid(&m).is_none(),
            "{m}'s agent still runs after down"
        );
        assert!(
            c.data_dir(&m).join("PG_VERSION").exists(),
            "down without --purge deleted {m}'s data"
        );
    }

    let o = c.up_again();
    assert!(o.status.success(), "{}", text(&o));
    c.wait_healthy(Duration::from_secs(60));
    for m in c.member_names() {
        assert_eq!(
            c.member(&m)["system_id"],
            sysid.as_str(),
            "{m} has another system identifier"
        );
    }
    for m in ["n1", "n2", "n3"] {
        wait_for(
            &format!("the kept rows on {m}"),
            Duration::from_secs(30),
            || {
                c.sql(Some(m), "SELECT sum(x) FROM kept")
                    .map(|o| o == "6")
                    .unwrap_or(false)
            },
        );
    }
    // Nothing was re-cloned: each standby ran pg_basebackup exactly once.
    for m in ["n2", "n3"] {
        let log = std::fs::read_to_string(c.dir.join(m).join("agent.log")).unwrap();
        assert_eq!(
            log.matches("with pg_basebackup").count(),
            1,
            "{m} cloned more than once:\n{log}"
        );
    }

    // down --purge deletes what up made, and keeps anything else.
    std::fs::write(c.dir.join("notes.txt"), "mine").unwrap();
    let o = c.down(true);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("notes.txt"), "{}", text(&o));
    let left: Vec<String> = std::fs::read_dir(&c.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert_eq!(left, vec!["notes.txt".to_string()]);
    std::fs::remove_file(c.dir.join("notes.txt")).unwrap();
    std::fs::remove_dir(&c.dir).unwrap();
}

#[test]
fn archive_option_archives_wal_segments_on_the_primary() {
    let c = Cluster::up_with(2, &["--archive"]);
    c.wait_healthy(Duration::from_secs(30));
    let conf = std::fs::read_to_string(c.data_dir("n1").join("pgbaton.conf")).unwrap();
    assert!(conf.contains("archive_mode = always"), "{conf}");
    // Close the current segment: archive_command copies it into DIR/archive.
    c.sql(None, "CREATE TABLE a (x int); INSERT INTO a VALUES (1)")
        .unwrap();
    c.sql(None, "SELECT pg_switch_wal()").unwrap();
    wait_for(
        "a WAL segment in the archive",
        Duration::from_secs(60),
        || {
            std::fs::read_dir(c.dir.join("archive"))
                .map(|rd| rd.flatten().any(|e| e.file_name().len() == 24))
                .unwrap_or(false)
        },
    );
}
