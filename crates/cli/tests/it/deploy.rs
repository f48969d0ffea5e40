//! Deployment: three hosts (network namespaces), each running an etcd member and a pgbaton
//! member from the config `pgbaton init-node` wrote, as the guide "three hosts and etcd"
//! says to; the systemd units as shipped.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

/// `init-node` on each "host" (the first makes the secrets; the others find them, as the
/// guide says to copy them), agents started from those configs alone: a healthy cluster
/// on a 3-member etcd. The primary's host then loses its network: etcd keeps its quorum on
/// the other two, a standby takes over with the rows, and the old primary rejoins when the
/// network is back.
#[test]
fn three_hosts_from_init_node_configs_fail_over_on_an_etcd_cluster() {
    let net = Net::new(3);
    let etcd = net.etcd_cluster();
    let endpoints = etcd.endpoints.join(",");
    let network = format!("{}/24", net.host_ip());
    let pg = pg_user();
    let c = net.cluster_from(|i, dir: &Path| {
        let node_dir = dir.join(format!("n{i}"));
        let (name, data, out, secrets) = (
            format!("n{i}"),
            node_dir.join("data"),
            node_dir.join("node.toml"),
            dir.join("secrets"),
        );
        let o = pgbaton(
            &[
                "init-node",
                "--cluster",
                "hosts",
                "--name",
                &name,
                "--address",
                &net.node_ip(i),
                "--etcd",
                &endpoints,
                "--network",
                &network,
                "--data-dir",
                data.to_str().unwrap(),
                "--secrets-dir",
                secrets.to_str().unwrap(),
                "--database",
                "app",
                "--out",
                out.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        );
        assert!(o.status.success(), "init-node for {name}: {}", text(&o));
        let said = text(&o);
        assert_eq!(
            said.contains("generated"),
            i == 1,
            "only the first host makes the secrets:\n{said}"
        );
        // What init-node made for the agent's OS user: the member's directory.
        let meta = std::fs::metadata(&node_dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            meta.uid(),
            pg.uid.as_raw(),
            "{} is postgres's",
            node_dir.display()
        );
    });
    let list = c.list();
    assert_eq!(list["members"].as_array().unwrap().len(), 3, "{list}");
    // Synchronous by default across hosts (init-node's choice): a standby is recorded as
    // having every acknowledged commit before the primary's host is lost.
    let sync = crate::synchronous::wait_synchronous(&c);
    assert_eq!(sync.len(), 1, "{sync:?}");
    let old = c.list()["leader"].as_str().unwrap().to_string();
    let old_i: u16 = old[1..].parse().unwrap();
    c.sql(
        None,
        "CREATE TABLE kept (id int primary key); INSERT INTO kept SELECT generate_series(1, 100)",
    )
    .expect("write on the primary");
    net.set_link(old_i, false);
    let new = with_logs_on_panic(&c, || c.failed_over_from(&old));
    assert_eq!(
        c.sql(Some(&new), "SELECT count(*) FROM kept").unwrap(),
        "100",
        "acknowledged rows lost across hosts"
    );
    assert_eq!(new, sync[0], "the synchronous standby takes over");
    net.set_link(old_i, true);
    with_logs_on_panic(&c, || wait_rejoined(&c, &old, &new));
    // The new primary's lease renewals found a live etcd member: it was never fenced (with a
    // client balanced over every endpoint, some went to the lost host's member and timed
    // out, and it fenced itself).
    let log = std::fs::read_to_string(c.dir.join(&new).join("agent.log")).unwrap();
    assert!(
        !log.contains("pgbaton fence:"),
        "{new} fenced itself after taking over:\n{log}"
    );
    drop(c);
    drop(etcd);
}

/// The shipped units pass `systemd-analyze verify` (with the binary where the unit
/// expects it: a copy of this build in a scratch root).
#[test]
fn the_systemd_units_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let s = scratch();
    let unit = std::fs::read_to_string(units.join("pgbaton.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/pgbaton agent -c /etc/pgbaton/node.toml"));
    assert!(
        unit.contains("KillMode=mixed"),
        "the agent stops PostgreSQL itself"
    );
    // The same unit, its binary pointed at this build.
    let here = s.path.join("pgbaton.service");
    std::fs::write(
        &here,
        unit.replace("/usr/bin/pgbaton", env!("CARGO_BIN_EXE_pgbaton")),
    )
    .unwrap();
    let o = run_with_timeout(
        std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&here),
        Duration::from_secs(60),
    );
    // verify prints problems on stderr; a unit it cannot load fails the command.
    let said = text(&o);
    assert!(
        o.status.success() && !said.contains("pgbaton.service:"),
        "systemd-analyze verify pgbaton.service:\n{said}"
    );
}

/// `scripts/build-deb.sh` makes a package that holds the binary, the unit and the config
/// directory (unpacked into a scratch root, not installed: the machine stays as it was).
#[test]
fn the_debian_package_holds_the_binary_the_unit_and_the_config_directory() {
    let s = scratch();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = run_with_timeout(
        std::process::Command::new("bash")
            .arg(repo.join("scripts/build-deb.sh"))
            // A debug binary is large: not worth compressing here.
            .env("DEB_COMPRESSION", "none")
            .arg(env!("CARGO_BIN_EXE_pgbaton"))
            .arg(s.path.join("out")),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "build-deb.sh: {}", text(&o));
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let root = s.path.join("root");
    let o = run_with_timeout(
        std::process::Command::new("dpkg-deb")
            .args(["-x", &deb])
            .arg(&root),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "dpkg-deb -x: {}", text(&o));
    for f in [
        "usr/bin/pgbaton",
        "lib/systemd/system/pgbaton.service",
        "usr/share/doc/pgbaton/three-hosts.md",
        "usr/share/doc/pgbaton/examples/etcd.default",
    ] {
        assert!(root.join(f).is_file(), "{f} is not in the package");
    }
    assert!(root.join("etc/pgbaton").is_dir());
    let o = run_with_timeout(
        std::process::Command::new(root.join("usr/bin/pgbaton")).arg("--version"),
        Duration::from_secs(10),
    );
    assert!(text(&o).contains("pgbaton"), "{}", text(&o));
    let info = run_with_timeout(
        std::process::Command::new("dpkg-deb").args(["-f", &deb, "Package", "Depends"]),
        Duration::from_secs(10),
    );
    let info = text(&info);
    assert!(
        info.contains("Package: pgbaton") && info.contains("postgresql"),
        "{info}"
    );
}
