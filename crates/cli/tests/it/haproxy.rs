//! `examples/haproxy.cfg` in front of a real cluster: the write port reaches the primary, the
//! read port only the standbys (spread over them), and both follow a switchover and a
//! promotion after the primary's host is lost.

use crate::harness::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/haproxy.cfg");
const HAPROXY: &str = "haproxy";

/// Replace every whole number in `text` that `map` names (so 15432 never matches inside
/// 115432, and no replacement is replaced again).
fn substitute_ports(text: &str, map: &[(u16, u16)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        let new = digits
            .parse::<u16>()
            .ok()
            .and_then(|n| map.iter().find(|(from, _)| *from == n))
            .map(|(_, to)| to.to_string());
        out.push_str(new.as_deref().unwrap_or(digits));
        digits.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else {
            flush(&mut digits, &mut out);
            out.push(ch);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// HAProxy running in the foreground; killed and reaped on drop, its log shown on a failure.
struct Haproxy {
    child: Child,
    log: PathBuf,
}

impl Haproxy {
    fn start(cfg: &Path, log: &Path) -> Haproxy {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(cfg)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {HAPROXY}: {e}"));
        Haproxy {
            child,
            log: log.to_path_buf(),
        }
    }

    fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!(
                "haproxy exited ({st}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- haproxy log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// The test's client side: psql over TCP through HAProxy, as a login role with a password
/// (given through a passfile, never on a command line).
struct Client {
    passfile: PathBuf,
}

impl Client {
    /// (the PostgreSQL port the connection reached, whether that server is in recovery)
    fn via(&self, port: u16) -> Result<(u16, bool), String> {
        let conninfo =
            format!("host=127.0.0.1 port={port} user=app_user dbname=app connect_timeout=5");
        let o = run_with_timeout(
            Command::new(format!("{PG_BIN}/psql"))
                .arg(&conninfo)
                .args([
                    "-X",
                    "-w",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    "SELECT inet_server_port(), pg_is_in_recovery()",
                ])
                .env("PGPASSFILE", &self.passfile)
                .env_remove("PGPASSWORD")
                .env_remove("PGSERVICE")
                .env_remove("PGSSLMODE"),
            Duration::from_secs(20),
        );
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !o.status.success() {
            return Err(text(&o));
        }
        match out.split_once('|') {
            Some((p, r)) if r == "t" || r == "f" => Ok((
                p.parse()
                    .map_err(|_| format!("unexpected output {out:?}"))?,
                r == "t",
            )),
            _ => Err(format!("unexpected output {out:?}")),
        }
    }
}

/// Server states as HAProxy sees them, from its stats page: (proxy, server) -> "UP"/"DOWN"...
fn haproxy_states(stats_port: u16) -> Result<Vec<(String, String, String)>, String> {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", stats_port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /;csv HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no HTTP body")?;
    // HAProxy answers chunked even to HTTP/1.0.
    let csv = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV")?
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (px, sv, st) = (
        col("pxname").ok_or("no pxname")?,
        col("svname").ok_or("no svname")?,
        col("status").ok_or("no status")?,
    );
    Ok(lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > st && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
        .map(|f| (f[px].to_string(), f[sv].to_string(), f[st].to_string()))
        .collect())
}

/// The body of a chunked HTTP response.
fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("truncated chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.push_str(chunk);
        body = rest[size..]
            .strip_prefix("\r\n")
            .ok_or("no CRLF after a chunk")?;
    }
}

/// The servers HAProxy has UP in `proxy`.
fn up_in(stats_port: u16, proxy: &str) -> Option<BTreeSet<String>> {
    haproxy_states(stats_port).ok().map(|v| {
        v.into_iter()
            .filter(|(p, _, st)| p == proxy && st.starts_with("UP"))
            .map(|(_, s, _)| s)
            .collect()
    })
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Wait until three connections in a row through the write port reach `member`'s primary.
fn wait_write_reaches(
    client: &Client,
    write_port: u16,
    pg_port: u16,
    member: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let ok = (0..3).all(|_| match client.via(write_port) {
            Ok(got) => {
                last = format!("{got:?}");
                got == (pg_port, false)
            }
            Err(e) => {
                last = e;
                false
            }
        });
        if ok {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!(
                "the write port did not reach {member} (port {pg_port}, not in recovery) within {} s; last: {last}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The PostgreSQL ports `count` read connections reached; panics on a primary.
fn read_ports(client: &Client, read_port: u16, count: usize, tolerate_errors: bool) -> Vec<u16> {
    let mut ports = Vec::new();
    for _ in 0..count {
        match client.via(read_port) {
            Ok((port, in_recovery)) => {
                assert!(
                    in_recovery,
                    "the read port reached a primary (PostgreSQL port {port})"
                );
                ports.push(port);
            }
            Err(e) if tolerate_errors => eprintln!("read connection failed: {e}"),
            Err(e) => panic!("read connection failed: {e}"),
        }
    }
    ports
}

#[test]
fn haproxy_example_follows_switchover_and_failover() {
    // `up`'s default (TLS everywhere), as the example expects: its checks speak https.
    let c = Cluster::up_default(3, &[]);
    c.wait_healthy(Duration::from_secs(30));
    let pg = |i: u16| c.port_base + i - 1;
    let api = |i: u16| c.port_base + 1000 + i - 1;

    // The example's ports, replaced by this cluster's and free ones for HAProxy.
    let hp = free_port_base(3);
    let (write_port, read_port, stats_port) = (hp, hp + 1, hp + 2);
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let map = [
        (15432, pg(1)),
        (15433, pg(2)),
        (15434, pg(3)),
        (16432, api(1)),
        (16433, api(2)),
        (16434, api(3)),
        (5000, write_port),
        (5001, read_port),
        (7000, stats_port),
    ];
    for (from, _) in map {
        assert!(
            example.contains(&format!(":{from}")) || example.contains(&format!("port {from}")),
            "examples/haproxy.cfg no longer uses port {from}"
        );
    }
    let cfg = c.scratch.path.join("haproxy.cfg");
    let ca = "/var/tmp/pgbaton-demo/tls/ca.crt";
    assert!(
        example.contains(ca),
        "examples/haproxy.cfg no longer names {ca}"
    );
    let example = example.replace(ca, c.dir.join("tls/ca.crt").to_str().unwrap());
    std::fs::write(&cfg, substitute_ports(&example, &map)).unwrap();
    let o = run_with_timeout(
        Command::new(HAPROXY).arg("-c").arg("-f").arg(&cfg),
        Duration::from_secs(30),
    );
    assert!(
        o.status.success(),
        "haproxy -c rejects the config:\n{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("[WARNING]"),
        "haproxy -c warns about the config:\n{}",
        text(&o)
    );

    // A login role with a password: connections through HAProxy are TCP, and pg_hba asks
    // for scram-sha-256 there. The server hashes the password (a throwaway cluster).
    let password = format!("pw-{}-{}", std::process::id(), c.port_base);
    c.sql(
        None,
        &format!("CREATE ROLE app_user LOGIN PASSWORD '{password}'"),
    )
    .unwrap();
    for m in ["n2", "n3"] {
        wait_for(&format!("app_user on {m}"), Duration::from_secs(30), || {
            c.sql(
                Some(m),
                "SELECT count(*) FROM pg_roles WHERE rolname = 'app_user'",
            )
            .map(|o| o == "1")
            .unwrap_or(false)
        });
    }
    let passfile = c.scratch.path.join("pgpass");
    std::fs::write(&passfile, format!("127.0.0.1:*:app:app_user:{password}\n")).unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client = Client { passfile };

    let mut hap = Haproxy::start(&cfg, &c.scratch.path.join("haproxy.log"));
    // HAProxy starts every server UP; wait for the first checks to sort them out.
    wait_for(
        "HAProxy to see n1 as the primary and n2, n3 as the replicas",
        Duration::from_secs(20),
        || {
            up_in(stats_port, "primary") == Some(set(&["n1"]))
                && up_in(stats_port, "replicas") == Some(set(&["n2", "n3"]))
        },
    );
    hap.assert_running();

    // Writes reach the primary, reads only the standbys, over both of them.
    assert_eq!(client.via(write_port), Ok((pg(1), false)));
    let seen: BTreeSet<u16> = read_ports(&client, read_port, 10, false)
        .into_iter()
        .collect();
    assert_eq!(
        seen,
        [pg(2), pg(3)].into_iter().collect(),
        "the reads were not spread over both standbys"
    );

    // Switchover to n2: the write port follows within a few check intervals, and once
    // HAProxy has n2 DOWN for reads, reads never land on it.
    let o = c.op(&["switchover", "--to", "n2"]);
    assert!(o.status.success(), "switchover failed:\n{}", text(&o));
    let took = wait_write_reaches(&client, write_port, pg(2), "n2", Duration::from_secs(10));
    eprintln!(
        "write port reached n2 {} ms after the switchover returned",
        took.as_millis()
    );
    wait_for(
        "HAProxy to take n2 out of the replicas",
        Duration::from_secs(10),
        || {
            up_in(stats_port, "primary") == Some(set(&["n2"]))
                && up_in(stats_port, "replicas").is_some_and(|s| !s.contains("n2"))
        },
    );
    // The former primary rejoins as a standby and serves reads again.
    wait_for(
        "HAProxy to have n1 and n3 as the replicas",
        Duration::from_secs(60),
        || up_in(stats_port, "replicas") == Some(set(&["n1", "n3"])),
    );
    let seen: BTreeSet<u16> = read_ports(&client, read_port, 10, false)
        .into_iter()
        .collect();
    assert_eq!(seen, [pg(1), pg(3)].into_iter().collect());
    assert_eq!(client.via(write_port), Ok((pg(2), false)));
    hap.assert_running();

    // Lose the primary's host (n2): agent and postmaster together. A standby takes over
    // by itself once n2's lease runs out.
    let (agent, pm) = (c.agent_pid("n2").unwrap(), c.postmaster_pid("n2").unwrap());
    kill9(agent);
    kill9(pm);
    let promoted = c.failed_over_from("n2");
    let idx: u16 = promoted[1..].parse().unwrap();
    let took = wait_write_reaches(
        &client,
        write_port,
        pg(idx),
        &promoted,
        Duration::from_secs(15),
    );
    eprintln!(
        "write port reached {promoted} {} ms after the failover showed in `list`",
        took.as_millis()
    );
    wait_for(
        "HAProxy to have only the promoted member as the primary, and not among the replicas",
        Duration::from_secs(10),
        || {
            up_in(stats_port, "primary") == Some(set(&[promoted.as_str()]))
                && up_in(stats_port, "replicas").is_some_and(|s| !s.contains(promoted.as_str()))
        },
    );
    // Whatever reads get through now (n1 may be moving over to n3) reach no primary.
    read_ports(&client, read_port, 5, true);
    hap.assert_running();
}
