//! The container image and `docker-compose.yml`, on a real Docker engine (Debian's docker.io
//! and docker-compose): the image built by `scripts/docker-image.sh` with no registry, the
//! compose file as shipped. The test starts its own dockerd that leaves iptables and
//! forwarding alone (`--iptables=false --ip-masq=false --ip-forward=false --bridge=none`:
//! the network-namespace tests on this machine keep working), on a network whose subnet it
//! picks, and takes everything down again, volumes included, also when it fails.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A dockerd of this test's own, with its data, state and socket in a scratch directory.
struct Dockerd {
    child: Child,
    dir: Scratch,
    forward_policy: String,
    ip_forward: String,
    /// dockerd writes its trust key there when there is none: removed again if so.
    key_file_made: bool,
}

const KEY_FILE: &str = "/etc/docker/key.json";

/// IPv4 forwarding as the kernel has it.
fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
}

/// The policy of iptables' FORWARD chain ("" when iptables is not there).
fn forward_policy() -> String {
    Command::new("iptables")
        .args(["-S", "FORWARD"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

impl Dockerd {
    fn start() -> Dockerd {
        let dir = scratch();
        let p = &dir.path;
        let log = std::fs::File::create(p.join("dockerd.log")).unwrap();
        let forward_policy = forward_policy();
        let ip_forward = ip_forward();
        let key_file_made = !Path::new(KEY_FILE).exists();
        // An empty config file: a host's /etc/docker/daemon.json cannot clash with the flags.
        std::fs::write(p.join("daemon.json"), "{}").unwrap();
        let child = Command::new("dockerd")
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--bridge=none",
            ])
            .arg("--config-file")
            .arg(p.join("daemon.json"))
            .arg("--data-root")
            .arg(p.join("root"))
            .arg("--exec-root")
            .arg(p.join("exec"))
            .arg("--pidfile")
            .arg(p.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", p.join("docker.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian's docker.io; scripts/install-deps.sh installs it)");
        let d = Dockerd {
            child,
            dir,
            forward_policy,
            ip_forward,
            key_file_made,
        };
        wait_for("dockerd to answer", Duration::from_secs(60), || {
            d.docker(&["info"]).status.success()
        });
        d
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path.join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("docker")
                .args(args)
                .env("DOCKER_HOST", self.host()),
            Duration::from_secs(120),
        )
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers, its containerd and unmounts what it mounted.
        signal(self.child.id() as i32, nix::sys::signal::Signal::SIGTERM);
        // Containers still up get their stop_grace_period (60 s) first.
        let deadline = Instant::now() + Duration::from_secs(100);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever is still mounted under the data root (a dockerd that was killed).
        let root = self.dir.path.to_string_lossy().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if self.key_file_made {
            let _ = std::fs::remove_file(KEY_FILE);
        }
    }
}

/// docker-compose.yml as shipped, as one project on this test's dockerd.
struct Compose<'a> {
    d: &'a Dockerd,
    project: String,
    subnet: String,
    write_port: u16,
    read_port: u16,
}

impl Compose<'_> {
    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_with_timeout(
            Command::new("docker-compose")
                .arg("-f")
                .arg(Path::new(REPO).join("docker-compose.yml"))
                .args(["-p", &self.project, "--ansi", "never"])
                .args(args)
                .env("DOCKER_HOST", self.d.host())
                .env("PGBATON_SUBNET", &self.subnet)
                .env("PGBATON_WRITE_PORT", self.write_port.to_string())
                .env("PGBATON_READ_PORT", self.read_port.to_string()),
            timeout,
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args, Duration::from_secs(180));
        assert!(
            o.status.success(),
            "docker-compose {}:\n{}",
            args.join(" "),
            text(&o)
        );
        text(&o)
    }

    /// `pgbaton list --json` inside the first member container that answers.
    fn list(&self) -> Option<serde_json::Value> {
        ["pg1", "pg2", "pg3"].iter().find_map(|m| {
            let o = self.run(
                &["exec", "-T", m, "pgbaton", "list", "--json"],
                Duration::from_secs(30),
            );
            o.status
                .success()
                .then(|| serde_json::from_slice(&o.stdout).ok())
                .flatten()
        })
    }

    fn member<'v>(l: &'v serde_json::Value, name: &str) -> &'v serde_json::Value {
        l["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name))
            .unwrap_or(&serde_json::Value::Null)
    }

    /// The leader, once there is one running primary and two streaming standbys.
    fn wait_healthy(&self, timeout: Duration) -> String {
        let mut leader = String::new();
        wait_for("1 primary and 2 streaming standbys", timeout, || {
            let Some(l) = self.list() else { return false };
            let ms = l["members"].as_array().cloned().unwrap_or_default();
            let primaries: Vec<_> = ms
                .iter()
                .filter(|m| m["role"] == "primary" && m["state"] == "running")
                .collect();
            let streaming = ms
                .iter()
                .filter(|m| m["role"] == "standby" && m["state"] == "streaming")
                .count();
            if primaries.len() == 1 && streaming == 2 {
                leader = primaries[0]["name"].as_str().unwrap_or("").to_string();
            }
            !leader.is_empty() && l["leader"] == leader.as_str()
        });
        leader
    }

    fn psql_in(&self, member: &str, sql: &str) -> Result<String, String> {
        let mut args = vec!["exec", "-T", member, "pgbaton", "psql", "--"];
        args.extend_from_slice(&PSQL_APP);
        args.extend_from_slice(&["-c", sql]);
        let o = self.run(&args, Duration::from_secs(60));
        stdout_or_err(&o)
    }

    fn logs(&self) -> String {
        text(&self.run(
            &["logs", "--no-color", "--tail", "40"],
            Duration::from_secs(60),
        ))
    }
}

/// A client on the host connecting through HAProxy's published ports.
struct Client {
    passfile: PathBuf,
}

impl Client {
    /// `sql` through `port`: Ok(output) or Err(what psql said).
    fn via(&self, port: u16, sql: &str) -> Result<String, String> {
        let o = run_with_timeout(
            Command::new(format!("{PG_BIN}/psql"))
                .arg(format!(
                    "host=127.0.0.1 port={port} user=app_user dbname=app connect_timeout=3"
                ))
                .args(["-X", "-w", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .env("PGPASSFILE", &self.passfile)
                .env_remove("PGPASSWORD"),
            Duration::from_secs(20),
        );
        stdout_or_err(&o)
    }
}

/// The system identifier of a member's data.
fn system_id(c: &Compose, member: &str) -> String {
    c.psql_in(member, "SELECT system_identifier FROM pg_control_system()")
        .unwrap_or_else(|e| panic!("system identifier of {member}: {e}"))
}

/// Everything the issue asks of the compose deployment, in one run (the image is built
/// once): up gives 1 primary and 2 streaming standbys; a row written through HAProxy's
/// write port is read on the read port; `docker kill` of the primary: a new primary, the
/// row kept, the write port follows; the killed member started again rejoins as a
/// standby; `down` then `up -d`: the same system, nothing re-cloned; `down -v` deletes.
#[test]
fn docker_compose_up_fails_over_and_keeps_its_data_across_down_and_up() {
    let d = Dockerd::start();
    let o = run_with_timeout(
        Command::new("bash")
            .arg(Path::new(REPO).join("scripts/docker-image.sh"))
            .args([BIN, "pgbaton:latest"])
            .env("DOCKER_HOST", d.host())
            .env(
                "PGBATON_BASE_CACHE",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("pgbaton-base-bookworm.tar"),
            ),
        Duration::from_secs(900),
    );
    assert!(o.status.success(), "docker-image.sh:\n{}", text(&o));
    let base = free_port_base(2);
    let c = Compose {
        d: &d,
        project: format!("pgbatonit{}", std::process::id()),
        subnet: format!("10.232.{}.0/24", std::process::id() % 200 + 20),
        write_port: base,
        read_port: base + 1,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exercise(&c)));
    if result.is_err() {
        eprintln!("--- docker-compose logs\n{}", c.logs());
    }
    let down = c.run(&["down", "-v", "--timeout", "30"], Duration::from_secs(180));
    let volumes = text(&d.docker(&["volume", "ls", "-q"]));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(down.status.success(), "down -v:\n{}", text(&down));
    assert!(
        !volumes.contains(&c.project),
        "down -v left volumes:\n{volumes}"
    );
    assert_eq!(
        forward_policy(),
        d.forward_policy,
        "dockerd changed iptables' FORWARD chain"
    );
    assert_eq!(
        ip_forward(),
        d.ip_forward,
        "dockerd changed net.ipv4.ip_forward"
    );
}

fn exercise(c: &Compose) {
    c.ok(&["up", "-d"]);
    let first = c.wait_healthy(Duration::from_secs(120));
    // Nothing secret in any container's environment.
    for m in ["pg1", "pg2", "pg3"] {
        let env = text(&c.run(&["exec", "-T", m, "env"], Duration::from_secs(30)));
        let token = text(&c.run(
            &["exec", "-T", m, "cat", "/etc/pgbaton/secrets/api.token"],
            Duration::from_secs(30),
        ));
        assert!(
            !token.trim().is_empty() && !env.contains(token.trim()),
            "{m}: {env}"
        );
    }

    // A login role for clients (connections through HAProxy are TCP: scram-sha-256).
    let password = format!("pw-docker-{}", std::process::id());
    c.psql_in(
        &first,
        &format!("CREATE ROLE app_user LOGIN PASSWORD '{password}'"),
    )
    .unwrap();
    c.psql_in(&first, "ALTER DATABASE app OWNER TO app_user")
        .unwrap();
    let scratch = scratch();
    let passfile = scratch.path.join("pgpass");
    std::fs::write(&passfile, format!("127.0.0.1:*:app:app_user:{password}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client = Client { passfile };

    // Written through the write port, read on the read port (from a standby).
    wait_for(
        "the write port to reach the primary",
        Duration::from_secs(30),
        || client.via(c.write_port, "SELECT pg_is_in_recovery()") == Ok("f".into()),
    );
    client
        .via(
            c.write_port,
            "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')",
        )
        .unwrap();
    wait_for("the row on the read port", Duration::from_secs(30), || {
        client.via(c.read_port, "SELECT v, pg_is_in_recovery() FROM kept") == Ok("before|t".into())
    });

    // The primary's container killed: a standby takes over with the row, the write port
    // follows it.
    let t0 = Instant::now();
    let o = c.d.docker(&["kill", &format!("{}_{first}_1", c.project)]);
    assert!(o.status.success(), "docker kill: {}", text(&o));
    let mut second = String::new();
    wait_for("a new primary", Duration::from_secs(60), || {
        let Some(l) = c.list() else { return false };
        second = l["leader"].as_str().unwrap_or("").to_string();
        !second.is_empty()
            && second != first
            && Compose::member(&l, &second)["state"] == "running"
            && Compose::member(&l, &second)["role"] == "primary"
    });
    eprintln!(
        "{second} took over {:?} after docker kill of {first}",
        t0.elapsed()
    );
    // Found by the write port first, then written once: a retried INSERT whose first try
    // committed after psql gave up would count twice.
    wait_for("the write port to follow", Duration::from_secs(30), || {
        client.via(c.write_port, "SELECT pg_is_in_recovery()") == Ok("f".into())
    });
    client
        .via(c.write_port, "INSERT INTO kept VALUES ('after')")
        .unwrap();
    eprintln!(
        "the write port reached {second} {:?} after docker kill",
        t0.elapsed()
    );
    assert_eq!(
        client.via(c.write_port, "SELECT count(*) FROM kept WHERE v = 'before'"),
        Ok("1".into())
    );

    // The killed member started again: it rejoins as a standby of the new primary.
    c.ok(&["start", &first]);
    wait_for(
        &format!("{first} to rejoin"),
        Duration::from_secs(90),
        || {
            c.list().is_some_and(|l| {
                let m = Compose::member(&l, &first);
                m["state"] == "streaming" && m["upstream"] == second.as_str()
            })
        },
    );

    // down, then up: the same system, the data kept, nothing re-cloned.
    let id = system_id(c, &second);
    c.ok(&["down"]);
    // docker stop (down) let each agent stop its PostgreSQL cleanly.
    for m in ["pg1", "pg2", "pg3"] {
        let cd = c.ok(&[
            "run",
            "--rm",
            "--no-deps",
            "--entrypoint",
            "/usr/lib/postgresql/15/bin/pg_controldata",
            m,
            "/var/lib/pgbaton/main/data",
        ]);
        assert!(
            cd.lines().any(|l| {
                let state = l.strip_prefix("Database cluster state:").map(str::trim);
                matches!(state, Some("shut down" | "shut down in recovery"))
            }),
            "{m} was not shut down cleanly by docker-compose down:\n{cd}"
        );
    }
    c.ok(&["up", "-d"]);
    c.wait_healthy(Duration::from_secs(120));
    for m in ["pg1", "pg2", "pg3"] {
        assert_eq!(system_id(c, m), id, "{m} after down and up");
    }
    let logs = text(&c.run(&["logs", "--no-color"], Duration::from_secs(60)));
    assert!(
        !logs.contains("base backup"),
        "a member was re-cloned after down and up:\n{logs}"
    );
    wait_for(
        "the rows through the write port",
        Duration::from_secs(30),
        || {
            client.via(
                c.write_port,
                "SELECT string_agg(v, ',' ORDER BY v) FROM kept",
            ) == Ok("after,before".into())
        },
    );
}
