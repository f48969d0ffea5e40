//! Backups with real pgBackRest (issue 11, items 3 and 4): the stanza made at bootstrap,
//! every member archiving through it, a backup taken from a standby, members re-created
//! from the repository, and a DELETE undone by restoring a new cluster to a time before it.

use crate::harness::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn log(c: &Cluster, member: &str) -> String {
    std::fs::read_to_string(c.dir.join(member).join("agent.log")).unwrap_or_default()
}

fn count(c: &Cluster, member: &str) -> String {
    c.sql_direct(member, "SELECT count(*) FROM t")
        .unwrap_or_else(|e| e)
}

/// Every member's archiver has archived something and never failed.
fn archivers_fine(c: &Cluster) {
    for m in c.member_names() {
        wait_for(&format!("{m}'s archiver"), Duration::from_secs(60), || {
            c.sql_direct(
                &m,
                "SELECT archived_count > 0 AND failed_count = 0 FROM pg_stat_archiver",
            )
            .is_ok_and(|s| s == "t")
        });
    }
}

fn backups(c: &Cluster) -> serde_json::Value {
    let o = c.cmd(&["backups", "--json"]);
    assert!(o.status.success(), "backups --json failed:\n{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(&o)))
}

/// The primary's archiver has archived the segment holding everything written so far.
fn archived_up_to_now(c: &Cluster, primary: &str) {
    let seg = c
        .sql_direct(primary, "SELECT pg_walfile_name(pg_switch_wal())")
        .unwrap();
    wait_for(&format!("{seg} archived"), Duration::from_secs(60), || {
        c.sql_direct(
            primary,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )
        .is_ok_and(|w| w.as_str() >= seg.as_str())
    });
}

#[test]
fn backups_from_a_standby_members_from_the_repository_and_a_delete_undone() {
    let c = Cluster::up_with(3, &["--backup"]);
    with_logs_on_panic(&c, || {
        assert!(
            log(&c, "n1").contains("pgBackRest stanza pgbaton ready"),
            "no stanza at bootstrap:\n{}",
            log(&c, "n1")
        );
        c.sql_direct(
            "n1",
            "CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)",
        )
        .unwrap();
        archivers_fine(&c);

        // A full backup, taken from a standby (the primary's files are on this host).
        let o = c.op(&["backup", "--type", "full"]);
        let out = text(&o);
        assert!(o.status.success(), "backup failed:\n{out}");
        assert!(out.contains("files from the standby"), "{out}");
        let info = backups(&c);
        let list = info["backups"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{info}");
        let b = &list[0];
        assert_eq!(b["type"], "full", "{info}");
        assert!(b["size"].as_u64().unwrap() > 1 << 20, "{info}");
        assert!(b["repo_size"].as_u64().unwrap() > 0, "{info}");
        assert!(b["wal_start"].as_str().unwrap().len() == 24, "{info}");
        let table = text(&c.cmd(&["backups"]));
        assert!(table.contains(b["label"].as_str().unwrap()), "{table}");

        // reinit: a delta restore over the old copy, then the archive and streaming.
        let o = c.op(&["reinit", "n3"]);
        assert!(o.status.success(), "reinit failed:\n{}", text(&o));
        assert!(
            log(&c, "n3").contains("(delta restore over the old copy)"),
            "{}",
            log(&c, "n3")
        );
        c.sql_direct("n1", "INSERT INTO t VALUES (1001)").unwrap();
        wait_for("n3 has the new row", Duration::from_secs(60), || {
            count(&c, "n3") == "1001"
        });

        // A switchover: timeline 2. The backup (timeline 1, before the switch point) stays
        // on the new timeline's history, so members still come from it.
        let o = c.op(&["switchover", "--to", "n3"]);
        assert!(o.status.success(), "switchover failed:\n{}", text(&o));
        wait_for("n3 leads", Duration::from_secs(60), || {
            c.sql_direct("n3", "SELECT pg_is_in_recovery()")
                .is_ok_and(|s| s == "f")
        });

        // A member that lost its disk comes back from the repository.
        let seen = log(&c, "n2").len();
        lose_host(&c, "n2");
        #[expect(clippy::disallowed_methods, reason = "the test's own lost disk")]
        std::fs::remove_dir_all(c.data_dir("n2")).unwrap();
        let o = c.up_again();
        assert!(o.status.success(), "up again failed:\n{}", text(&o));
        wait_for("n2 streams with every row", Duration::from_secs(90), || {
            count(&c, "n2") == "1001" && c.member("n2")["state"] == "streaming"
        });
        let n2 = log(&c, "n2")[seen..].to_string();
        assert!(
            n2.contains("from the pgBackRest repository") && !n2.contains("pg_basebackup, slot"),
            "n2 was not restored from the repository:\n{n2}"
        );

        // A DELETE undone: a new cluster restored to a time just before it.
        let before = c
            .sql_direct(
                "n3",
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
            )
            .unwrap();
        let lsn = c.sql_direct("n3", "SELECT pg_current_wal_lsn()").unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        c.sql_direct("n3", "DELETE FROM t").unwrap();
        archived_up_to_now(&c, "n3");
        let r = Cluster {
            scratch: scratch(),
            dir: c.scratch.path.join("restored"),
            nodes: 2,
            port_base: free_port_base(2),
            extra: vec![],
        };
        let from = c.dir.display().to_string();
        let o = restore(&r, &from, &before);
        with_logs_on_panic(&r, || {
            assert!(o.status.success(), "restore failed:\n{}", text(&o));
            assert_eq!(count(&r, "n1"), "1001", "the restored cluster");
            wait_for(
                "the restored cluster's standby",
                Duration::from_secs(60),
                || count(&r, "n2") == "1001",
            );
            let auto =
                std::fs::read_to_string(r.data_dir("n1").join("postgresql.auto.conf")).unwrap();
            assert!(!auto.contains("recovery_target"), "{auto}");
            assert!(
                log(&r, "n1").contains("reached its target"),
                "{}",
                log(&r, "n1")
            );
        });
        // The same to an LSN, with one member.
        let r = Cluster {
            scratch: scratch(),
            dir: c.scratch.path.join("restored-lsn"),
            nodes: 1,
            port_base: free_port_base(1),
            extra: vec![],
        };
        let o = restore_with(&r, &from, &lsn, &["--backup"]);
        with_logs_on_panic(&r, || {
            assert!(o.status.success(), "restore to {lsn} failed:\n{}", text(&o));
            assert_eq!(count(&r, "n1"), "1001", "restored to {lsn}");
            never_bootstrapped_twice(&r);
        });
        drop(r);

        // The original is untouched: its rows stay deleted, and its archive never got the
        // restored cluster's new timeline (3: it branched off timeline 2).
        assert_eq!(count(&c, "n3"), "0");
        let archive = c.dir.join("backup/archive/pgbaton");
        let histories: Vec<String> = walk(&archive)
            .into_iter()
            .filter(|n| n.ends_with(".history"))
            .collect();
        assert_eq!(histories, vec!["00000002.history".to_string()]);
        archivers_fine(&c);
        repository_checked_for_holes(&c, "n3");
    });
}

/// `archive check --repo --stanza` over the repository: whole across timelines 1 and 2,
/// as the leader's periodic check publishes it too; then a segment taken out of the
/// repository is a hole the check names (exit 1).
fn repository_checked_for_holes(c: &Cluster, leader: &str) {
    let repo = c.dir.join("backup");
    let check = || {
        pgbaton(
            &[
                "archive",
                "check",
                "--repo",
                repo.to_str().unwrap(),
                "--stanza",
                "pgbaton",
            ],
            Duration::from_secs(60),
        )
    };
    archived_up_to_now(c, leader);
    let o = check();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("timelines 1 -> 2") && out.contains("0 missing"),
        "{out}"
    );
    wait_for(
        "the leader's archive check",
        Duration::from_secs(30),
        || c.member(leader)["archive"]["missing_segments"] == 0,
    );
    // Take out a segment of timeline 1 that recovery needs (the second one archived).
    let mut segs: Vec<std::path::PathBuf> = walk_paths(&repo.join("archive/pgbaton"))
        .into_iter()
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("00000001") && n.len() > 65 && !n.contains(".partial")
            })
        })
        .collect();
    segs.sort();
    let gone = segs[1].clone();
    std::fs::remove_file(&gone).unwrap();
    let name = &gone.file_name().unwrap().to_str().unwrap()[..24];
    let o = check();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("missing on timeline 1: {name}")),
        "{out}"
    );
}

/// File paths under `dir`, recursively.
fn walk_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_paths(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `pgbaton restore --from FROM --to TO` into `r`'s directory, with `r`'s members and ports.
fn restore(r: &Cluster, from: &str, to: &str) -> std::process::Output {
    restore_with(r, from, to, &[])
}

fn restore_with(r: &Cluster, from: &str, to: &str, extra: &[&str]) -> std::process::Output {
    let (nodes, ports) = (r.nodes.to_string(), r.port_base.to_string());
    let mut args = vec![
        "restore",
        "--from",
        from,
        "--to",
        to,
        "--dir",
        r.dir.to_str().unwrap(),
        "--nodes",
        &nodes,
        "--port-base",
        &ports,
        "--timeout",
        "150",
    ];
    args.extend_from_slice(extra);
    pgbaton(&args, Duration::from_secs(180))
}

/// A restored one-member cluster (`[bootstrap]` in n1's config, a repository of its own)
/// whose store lost its keys and whose member lost its disk: the agent does not restore the
/// old point in time again: its start check finds the stanza recording that the cluster was
/// made, says why, and creates nothing.
fn never_bootstrapped_twice(r: &Cluster) {
    assert!(r.down(false).status.success());
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(r.dir.join(f));
    }
    #[expect(
        clippy::disallowed_methods,
        reason = "the test's own copy: a lost disk"
    )]
    std::fs::remove_dir_all(r.data_dir("n1")).unwrap();
    let log_path = r.dir.join("n1/agent.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_pgbaton"))
        .arg("agent")
        .arg("-c")
        .arg(r.dir.join("n1/node.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let said = std::panic::catch_unwind(|| {
        wait_for(
            "n1 to refuse a second bootstrap",
            Duration::from_secs(60),
            || {
                std::fs::read_to_string(&log_path)
                    .is_ok_and(|l| l.contains("cluster restored was made already"))
            },
        )
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(said.is_ok(), "{log}");
    assert!(
        std::fs::read_dir(r.data_dir("n1")).map_or(true, |mut d| d.next().is_none()),
        "n1's data directory got files:\n{log}"
    );
}

/// File names under `dir`, recursively.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// The leader makes a missing stanza (`[backup]` added to a running cluster), and a
/// scheduled backup is taken with no CLI running: the first one as soon as the schedule
/// finds none; retention keeps two.
#[test]
fn the_leader_makes_a_missing_stanza_and_the_schedule_takes_backups() {
    let c = Cluster::up_with(1, &["--backup"]);
    with_logs_on_panic(&c, || {
        assert!(backups(&c)["backups"].as_array().unwrap().is_empty());
        let o = c.down(false);
        assert!(o.status.success(), "down failed:\n{}", text(&o));
        // As if [backup] were added to a running cluster: no stanza in the repository.
        for sub in ["archive", "backup"] {
            #[expect(clippy::disallowed_methods, reason = "the test's own repository")]
            std::fs::remove_dir_all(c.dir.join("backup").join(sub)).unwrap();
        }
        let node = c.dir.join("n1/node.toml");
        let toml = std::fs::read_to_string(&node).unwrap();
        assert!(toml.contains("full_every_hours = 0"), "{toml}");
        std::fs::write(
            &node,
            toml.replace("full_every_hours = 0", "full_every_hours = 24"),
        )
        .unwrap();
        let o = c.up_again();
        assert!(o.status.success(), "up again failed:\n{}", text(&o));
        wait_for("a scheduled full backup", Duration::from_secs(120), || {
            backups(&c)["backups"]
                .as_array()
                .is_some_and(|l| l.len() == 1 && l[0]["type"] == "full")
        });
        let n1 = log(&c, "n1");
        assert!(n1.contains("pgBackRest stanza pgbaton made"), "{n1}");
        assert!(n1.contains("a scheduled full backup is due"), "{n1}");
        archivers_fine(&c);
        // Retention (retention_full = 2 for `up --backup`): the oldest goes after the third.
        let first = backups(&c)["backups"][0]["label"].clone();
        for _ in 0..2 {
            let o = c.op(&["backup", "--type", "full"]);
            assert!(o.status.success(), "backup failed:\n{}", text(&o));
        }
        let list = backups(&c)["backups"].as_array().unwrap().clone();
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(list.iter().all(|b| b["label"] != first), "{list:?}");
    });
}

/// `pgbaton certs` for a member in `tls` (the CA made when missing), its key the OS user's.
fn member_cert(tls: &Path, member: &str, hosts: &[&str]) {
    let mut args = vec!["certs", "--dir", tls.to_str().unwrap(), "--member", member];
    for h in hosts {
        args.extend(["--host", h]);
    }
    let o = pgbaton(&args, Duration::from_secs(30));
    assert!(o.status.success(), "certs for {member}: {}", text(&o));
    let pg = pg_user();
    nix::unistd::chown(
        &tls.join(format!("{member}.key")),
        Some(pg.uid),
        Some(pg.gid),
    )
    .unwrap();
}

/// Across hosts (network namespaces, the store in etcd): each agent runs pgBackRest's TLS
/// server with its member certificate (`[backup.server]`). The schedule's backup is asked
/// of the standby, and it and one asked by hand read the primary's files through the
/// primary's server; a certificate of the same CA
/// whose name is not a member's is refused by that server.
#[test]
fn a_standby_on_another_host_backs_up_through_the_primarys_tls_server() {
    let net = Net::new(2);
    net.name_hosts();
    let etcd = Etcd::on(&net.host_ip());
    let pg = pg_user();
    let c = net.cluster_with(&etcd, |i, dir| {
        let (tls, repo) = (dir.join("tls"), dir.join("backup"));
        let name = format!("n{i}");
        member_cert(&tls, &name, &[&net.node_ip(i), &net.host_name(i)]);
        std::fs::create_dir_all(&repo).unwrap();
        nix::unistd::chown(&repo, Some(pg.uid), Some(pg.gid)).unwrap();
        format!(
            "[postgresql.tls]\ncert_file = \"{t}/{name}.crt\"\nkey_file = \"{t}/{name}.key\"\n\
             ca_file = \"{t}/ca.crt\"\n\n[backup]\nengine = \"pgbackrest\"\nrepo_path = \"{r}\"\n\
             full_every_hours = 24\n\n\
             [backup.server]\nhost = \"{h}\"\n",
            t = tls.display(),
            r = repo.display(),
            h = net.host_name(i),
        )
    });
    with_logs_on_panic(&c, || {
        let leader = c.list()["leader"].as_str().unwrap().to_string();
        let standby = if leader == "n1" { "n2" } else { "n1" };
        let li: u16 = leader[1..].parse().unwrap();
        wait_for("both TLS servers", Duration::from_secs(30), || {
            c.member_names()
                .iter()
                .all(|m| log(&c, m).contains("pgBackRest TLS server started"))
        });
        c.sql_direct(
            &leader,
            "CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)",
        )
        .unwrap();
        // The schedule's first full backup, asked of the standby (which was still cloning when
        // it fell due) and taken there through the primary's TLS server.
        wait_for("a scheduled full backup", Duration::from_secs(120), || {
            backups(&c)["backups"]
                .as_array()
                .is_some_and(|l| l.len() == 1 && l[0]["type"] == "full")
        });
        let (ll, sl) = (log(&c, &leader), log(&c, standby));
        assert!(
            ll.contains(&format!(
                "scheduled full backup started on the standby {standby}"
            )),
            "{ll}"
        );
        assert!(
            sl.contains(&format!(
                "full backup started (from the standby, the primary's files through {}:8432)",
                net.host_name(li)
            )),
            "{sl}"
        );
        // And one asked by hand.
        let token = c.dir.join("api.token");
        let o = c.op(&[
            "backup",
            "--type",
            "incr",
            "--member",
            standby,
            "--token-file",
            token.to_str().unwrap(),
        ]);
        let out = text(&o);
        assert!(o.status.success(), "backup failed:\n{out}");
        assert!(out.contains("files from the standby"), "{out}");
        // pgBackRest reached the primary through its TLS server, by its DNS name.
        let br_log =
            std::fs::read_to_string(c.dir.join(standby).join("pgbackrest/log/netns-backup.log"))
                .unwrap();
        assert!(
            br_log.contains("--pg2-host-type=tls")
                && br_log.contains(&format!("--pg2-host={}", net.host_name(li))),
            "{br_log}"
        );
        let info = backups(&c);
        assert_eq!(info["backups"].as_array().unwrap().len(), 2, "{info}");

        // A certificate of the cluster's CA for a name that is no member's: refused.
        let tls = c.dir.join("tls");
        member_cert(&tls, "intruder", &[&net.node_ip(1)]);
        let o = run_with_timeout(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &net.ns(li),
                    "runuser",
                    "-u",
                    &pg.name,
                    "--",
                ])
                .arg("/usr/bin/pgbackrest")
                .arg(format!(
                    "--config={}",
                    c.dir.join(standby).join("pgbackrest.conf").display()
                ))
                .args(["--stanza=netns", "--pg1-host", &net.host_name(li)])
                .args(["--pg1-host-type=tls", "--pg1-host-port=8432"])
                .arg(format!(
                    "--pg1-host-cert-file={}/intruder.crt",
                    tls.display()
                ))
                .arg(format!(
                    "--pg1-host-key-file={}/intruder.key",
                    tls.display()
                ))
                .arg(format!("--pg1-host-ca-file={}/ca.crt", tls.display()))
                .arg("check")
                .current_dir("/"),
            Duration::from_secs(60),
        );
        let said = text(&o);
        assert!(
            !o.status.success() && said.contains("access denied"),
            "{said}"
        );
    });
    drop(c);
    drop(etcd);
}

/// The archive command with pgBackRest (`pgbaton backrest-push`, as PostgreSQL runs it)
/// given a former primary's copy of an archived segment: the same WAL up to the point where
/// its timeline ended (a rewind leaves the new timeline's history in pg_wal), its own after
/// it. pgBackRest refuses it as a different copy (exit 45); pgbaton keeps it aside in the
/// member's `pgbackrest/diverged` and succeeds, and the repository keeps its own copy. A
/// copy that differs before the switch point is a real conflict: refused.
///
/// The copy is made from the archived segment (a failover that leaves exactly this behind
/// is not reproducible at will); pgBackRest and the repository are real.
#[test]
fn a_former_primarys_diverged_segment_is_kept_aside_by_the_pgbackrest_push() {
    let c = Cluster::up_with(1, &["--backup"]);
    with_logs_on_panic(&c, || {
        c.sql_direct("n1", "CREATE TABLE t(i int); INSERT INTO t VALUES (1)")
            .unwrap();
        archived_up_to_now(&c, "n1");
        let seg = c
            .sql_direct("n1", "SELECT last_archived_wal FROM pg_stat_archiver")
            .unwrap();
        assert_eq!(seg.len(), 24, "{seg}");
        let pg = pg_user();
        let node = c.dir.join("n1");
        let conf = node.join("pgbackrest.conf");
        let forged = node.join("forged");
        std::fs::create_dir_all(&forged).unwrap();
        nix::unistd::chown(&forged, Some(pg.uid), Some(pg.gid)).unwrap();
        let get = |dest: &Path| {
            let o = run_with_timeout(
                as_pg(&mut Command::new("/usr/bin/pgbackrest"))
                    .arg(format!("--config={}", conf.display()))
                    .args(["--stanza=pgbaton", "archive-get", &seg])
                    .arg(dest),
                Duration::from_secs(60),
            );
            assert!(o.status.success(), "archive-get {seg}: {}", text(&o));
            std::fs::read(dest).unwrap()
        };
        let archived = get(&forged.join("archived"));
        // Timeline 1 ends 1 MB into the segment (00000002.history, as pg_rewind copies it).
        let tli: u32 = u32::from_str_radix(&seg[..8], 16).unwrap();
        let segno = u64::from_str_radix(&seg[8..16], 16).unwrap() * 0x100
            + u64::from_str_radix(&seg[16..], 16).unwrap();
        let switch = segno * (16 << 20) + (1 << 20);
        std::fs::write(
            forged.join(format!("{:08X}.history", tli + 1)),
            format!(
                "{tli}\t{:X}/{:X}\tno recovery target specified\n",
                switch >> 32,
                switch & 0xFFFF_FFFF
            ),
        )
        .unwrap();
        let push = |bytes: &[u8]| {
            let p = forged.join(&seg);
            std::fs::write(&p, bytes).unwrap();
            nix::unistd::chown(&p, Some(pg.uid), Some(pg.gid)).unwrap();
            run_with_timeout(
                as_pg(&mut Command::new(env!("CARGO_BIN_EXE_pgbaton")))
                    .args(["backrest-push", "--bin", "/usr/bin/pgbackrest", "--config"])
                    .arg(&conf)
                    .args(["--stanza", "pgbaton", "--lock"])
                    .arg(c.dir.join("backup/.pgbaton-archive-push.lock"))
                    .arg(&p),
                Duration::from_secs(120),
            )
        };
        // Differs before the switch point: refused (pgBackRest's duplicate, exit 45).
        let mut early = archived.clone();
        early[(1 << 20) - 100] ^= 0xff;
        let o = push(&early);
        assert_eq!(o.status.code(), Some(45), "{}", text(&o));
        // The former primary's own WAL after it: kept aside, a success.
        let mut mine = archived.clone();
        for b in &mut mine[(1 << 20)..] {
            *b ^= 0x5a;
        }
        let o = push(&mine);
        let said = text(&o);
        assert!(o.status.success(), "{said}");
        assert!(said.contains("kept as"), "{said}");
        let aside: Vec<_> = std::fs::read_dir(node.join("pgbackrest/diverged"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(aside[0].path()).unwrap(), mine);
        // The repository keeps its own copy.
        assert_eq!(get(&forged.join("again")), archived);
    });
}
