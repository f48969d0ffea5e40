//! Test harness: scratch directories PostgreSQL's OS user can enter, free ports, running
//! the real binary with a timeout, and clusters that are torn down even when a test fails.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgbaton");

/// A scratch directory under /tmp that the postgres OS user can enter (tempfile makes 0700).
pub struct Scratch {
    tmp: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

/// `PGBATON_IT_KEEP=1` keeps the directory of a failed test (logs, data) for a post-mortem;
/// `PGBATON_IT_KEEP=all` keeps every test's.
impl Drop for Scratch {
    fn drop(&mut self) {
        let keep = std::env::var("PGBATON_IT_KEEP").ok();
        if keep.as_deref() == Some("all") || (keep.is_some() && std::thread::panicking()) {
            if let Some(t) = self.tmp.take() {
                eprintln!("kept {}", t.keep().display());
            }
        }
    }
}

pub fn scratch() -> Scratch {
    let tmp = tempfile::Builder::new()
        .prefix("pgbaton-it-")
        .tempdir_in("/tmp")
        .expect("make a scratch dir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = tmp.path().to_path_buf();
    Scratch {
        tmp: Some(tmp),
        path,
    }
}

/// The OS user PostgreSQL runs as in these tests: `postgres` as root, else ourselves.
pub fn pg_user() -> nix::unistd::User {
    let me = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .unwrap()
        .unwrap();
    if me.uid.is_root() {
        nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("an OS user named postgres")
    } else {
        me
    }
}

/// A scratch directory owned by the PostgreSQL OS user (for a standalone agent's files).
pub fn scratch_for_pg() -> Scratch {
    let s = scratch();
    let u = pg_user();
    nix::unistd::chown(&s.path, Some(u.uid), Some(u.gid)).unwrap();
    s
}

/// Is `port` free on 127.0.0.1?
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

static NEXT: AtomicU16 = AtomicU16::new(0);
static PICK: Mutex<()> = Mutex::new(());

/// A port base whose PostgreSQL ports (base..base+n) and API ports (base+1000..) are free.
pub fn free_port_base(n: u16) -> u16 {
    let _g = PICK.lock().unwrap();
    let start = 20000 + (std::process::id() % 97) as u16 * 40;
    for _ in 0..400 {
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = start + (k % 250) * 20;
        if (0..n).all(|i| port_free(base + i) && port_free(base + 1000 + i)) {
            return base;
        }
    }
    panic!("no free port range found");
}

/// Run a command, bounded by `timeout`; kill it when the time is up.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn pgbaton(args: &[&str], timeout: Duration) -> Output {
    run_with_timeout(
        Command::new(BIN).args(args).env_remove("PGBATON_CONFIG"),
        timeout,
    )
}

/// psql's flags for one statement in database `app`, unadorned output, stopping at an error.
pub const PSQL_APP: [&str; 6] = ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", "app"];

/// Ok(stdout, trimmed) when the command succeeded, else Err(all it printed).
pub fn stdout_or_err(o: &Output) -> Result<String, String> {
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(text(o))
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Poll `f` until it returns true or `timeout` passes; then panic with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {} s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The live PID a `postmaster.pid` or `agent.pid` file names, if its command line matches.
pub fn live_pid(pid_file: &Path, cmd_contains: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .contains(cmd_contains)
        .then_some(pid)
}

/// A cluster made by `pgbaton up` in a scratch directory; torn down on drop.
pub struct Cluster {
    pub scratch: Scratch,
    pub dir: PathBuf,
    pub nodes: u16,
    pub port_base: u16,
    /// Extra flags for `pgbaton up`.
    pub extra: Vec<String>,
}

impl Cluster {
    pub fn up(nodes: u16) -> Cluster {
        Self::up_with(nodes, &[])
    }

    /// `up` with `extra`, in the clear unless `extra` says `--tls`: most tests speak plain
    /// HTTP to the API (`http`) and check other things; `up_default` and the TLS tests run
    /// `up`'s default, TLS everywhere.
    pub fn up_with(nodes: u16, extra: &[&str]) -> Cluster {
        let mut args = extra.to_vec();
        if !args.contains(&"--tls") {
            args.push("--no-tls");
        }
        Self::up_default(nodes, &args)
    }

    /// `up` with `extra` and nothing else: TLS everywhere unless `extra` says `--no-tls`.
    pub fn up_default(nodes: u16, extra: &[&str]) -> Cluster {
        let scratch = scratch();
        let dir = scratch.path.join("cluster");
        let port_base = free_port_base(nodes);
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let c = Cluster {
            scratch,
            dir,
            nodes,
            port_base,
            extra,
        };
        let o = c.up_again();
        assert!(o.status.success(), "pgbaton up failed:\n{}", text(&o));
        c
    }

    /// Run `pgbaton up` on this cluster's directory (fresh or existing).
    pub fn up_again(&self) -> Output {
        let (nodes, port_base) = (self.nodes.to_string(), self.port_base.to_string());
        let mut args = vec![
            "up",
            "--dir",
            self.dir.to_str().unwrap(),
            "--nodes",
            &nodes,
            "--port-base",
            &port_base,
            "--database",
            "app",
            "--timeout",
            "150",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        pgbaton(&args, Duration::from_secs(180))
    }

    /// Replace `from` (which must be there) by `to` in every member's node.toml (with the
    /// cluster down: an agent reads it at start).
    pub fn edit_node_configs(&self, from: &str, to: &str) {
        for m in self.member_names() {
            let p = self.dir.join(&m).join("node.toml");
            let cfg = std::fs::read_to_string(&p).unwrap();
            assert!(cfg.contains(from), "{m}'s node.toml has no {from}:\n{cfg}");
            std::fs::write(&p, cfg.replace(from, to)).unwrap();
        }
    }

    pub fn down(&self, purge: bool) -> Output {
        let mut args = vec!["down", "--dir", self.dir.to_str().unwrap()];
        if purge {
            args.push("--purge");
        }
        pgbaton(&args, Duration::from_secs(180))
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("pgbaton.toml")
    }

    pub fn member_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("n{i}")).collect()
    }

    pub fn data_dir(&self, member: &str) -> PathBuf {
        self.dir.join(member).join("data")
    }

    /// `pgbaton -c CONFIG ARGS...`
    pub fn cmd(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = vec!["-c", config.to_str().unwrap()];
        all.extend_from_slice(args);
        pgbaton(&all, Duration::from_secs(60))
    }

    pub fn list(&self) -> serde_json::Value {
        let o = self.cmd(&["list", "--json"]);
        assert!(o.status.success(), "list --json failed:\n{}", text(&o));
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("list --json is not JSON ({e}):\n{}", text(&o)))
    }

    /// What the member's agent last said it waits for or failed at ("" when nothing).
    pub fn message(&self, name: &str) -> String {
        self.member(name)["message"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn member(&self, name: &str) -> serde_json::Value {
        self.list()["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_default()
    }

    /// Run SQL through `pgbaton psql [MEMBER]`; Ok(stdout) or Err(all output).
    pub fn sql(&self, member: Option<&str>, sql: &str) -> Result<String, String> {
        let mut args = vec!["psql"];
        if let Some(m) = member {
            args.push(m);
        }
        args.push("--");
        args.extend_from_slice(&PSQL_APP);
        args.extend_from_slice(&["-c", sql]);
        stdout_or_err(&self.cmd(&args))
    }

    pub fn password(&self) -> String {
        std::fs::read_to_string(self.dir.join("replication.password"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn postmaster_pid(&self, member: &str) -> Option<i32> {
        live_pid(&self.data_dir(member).join("postmaster.pid"), "postgres")
    }

    pub fn agent_pid(&self, member: &str) -> Option<i32> {
        live_pid(&self.dir.join(member).join("agent.pid"), "agent")
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_healthy_quietly(timeout)
        }));
        if let Err(e) = r {
            // What each member says, and the end of its logs: a CI failure tells its cause.
            let mut tails = String::new();
            for m in self.member_names() {
                for log in ["agent.log", "postgres.log"] {
                    let t =
                        std::fs::read_to_string(self.dir.join(&m).join(log)).unwrap_or_default();
                    let lines: Vec<&str> = t.lines().collect();
                    let from = lines.len().saturating_sub(15);
                    tails += &format!("\n--- {m}/{log} (last lines)\n{}", lines[from..].join("\n"));
                }
            }
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{why}\n{}\n{tails}", self.list());
        }
    }

    fn wait_healthy_quietly(&self, timeout: Duration) {
        wait_for("a running primary and streaming standbys", timeout, || {
            let l = self.list();
            let ms = l["members"].as_array().cloned().unwrap_or_default();
            ms.len() == self.nodes as usize
                && ms
                    .iter()
                    .filter(|m| m["role"] == "primary" && m["state"] == "running")
                    .count()
                    == 1
                && ms
                    .iter()
                    .filter(|m| m["role"] == "standby" && m["state"] == "streaming")
                    .count()
                    == self.nodes as usize - 1
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.dir.join("pgbaton.toml").exists() {
            return;
        }
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.down(false).status.success()
        }))
        .unwrap_or(false);
        // If `down` could not stop everything, end what this test started, by PID.
        for m in self.member_names() {
            if !ok {
                if let Some(pid) = self.agent_pid(&m) {
                    kill9(pid);
                }
            }
            if let Some(pid) = self.postmaster_pid(&m) {
                kill9(pid);
            }
        }
    }
}

/// `f`, and when it panics, the last lines of every member's agent log and PostgreSQL log
/// first (a failure in CI leaves no directory behind to read).
pub fn with_logs_on_panic<T>(c: &Cluster, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|e| {
        for m in c.member_names() {
            for (file, lines) in [("agent.log", 30), ("postgres.log", 15)] {
                let log = std::fs::read_to_string(c.dir.join(&m).join(file)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(lines).collect();
                eprintln!("--- {m}'s {file} (newest first):\n{}", tail.join("\n"));
            }
        }
        std::panic::resume_unwind(e)
    })
}

pub fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A lost host: the member's agent, its watchdog, the postmaster and every backend, and
/// then, until none is left, every process still running in its data directory: a backend
/// forked between listing the postmaster's children and killing it survived as an orphan
/// (a lost host keeps nothing running; an orphan holds PostgreSQL's shared memory).
pub fn lose_host(c: &Cluster, member: &str) {
    let agent = c.agent_pid(member).expect("the member's agent");
    let pm = c.postmaster_pid(member).expect("the member's postmaster");
    let mut pids = vec![agent, pm];
    pids.extend(children(agent));
    pids.extend(children(pm));
    for p in pids {
        kill9(p);
    }
    let data = std::fs::canonicalize(c.data_dir(member)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rest: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == data)
                    && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
                    })
            })
            .collect();
        if rest.is_empty() || Instant::now() > deadline {
            return;
        }
        rest.into_iter().for_each(kill9);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `cmd` as the PostgreSQL OS user (when we are root), from `/`.
pub fn as_pg(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let u = pg_user();
    if nix::unistd::Uid::effective().is_root() {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    cmd.current_dir("/")
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Cluster {
    /// `pgbaton -c CONFIG ARGS...` with a longer bound, for operations.
    pub fn op(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut all = vec!["-c", config.to_str().unwrap()];
        all.extend_from_slice(args);
        pgbaton(&all, Duration::from_secs(200))
    }

    /// The slots on `member`'s PostgreSQL, as `name:active` lines.
    pub fn slots_on(&self, member: &str) -> Vec<String> {
        self.sql(
            Some(member),
            "SELECT slot_name || ':' || active FROM pg_replication_slots ORDER BY 1",
        )
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
    }

    /// Run SQL on `member` with psql over its socket, without asking the store where it is
    /// (for tests where the store does not answer). Ok(stdout) or Err(all output).
    pub fn sql_direct(&self, member: &str, sql: &str) -> Result<String, String> {
        let port = (self.port_base + member[1..].parse::<u16>().unwrap() - 1).to_string();
        let sock = self.dir.join(member).join("run");
        let out = run_with_timeout(
            as_pg(
                Command::new(format!("{PG_BIN}/psql"))
                    .arg("-h")
                    .arg(&sock)
                    .args([
                        "-p",
                        &port,
                        "-d",
                        "app",
                        "-X",
                        "-At",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-c",
                        sql,
                    ]),
            ),
            Duration::from_secs(30),
        );
        stdout_or_err(&out)
    }

    /// Start and stop `member`'s PostgreSQL by hand, outside pgbaton, running `sql` on it
    /// while it runs (as a primary when its data directory is a primary's).
    pub fn run_by_hand(&self, member: &str, sql: &str) -> String {
        let data = self.data_dir(member);
        let log = self.dir.join(member).join("by-hand.log");
        let o = run_with_timeout(
            as_pg(
                Command::new(format!("{PG_BIN}/pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(&log)
                    .args(["-w", "-t", "60", "start"]),
            ),
            Duration::from_secs(90),
        );
        assert!(o.status.success(), "pg_ctl start {member}: {}", text(&o));
        let out = self.sql_direct(member, sql);
        let o = run_with_timeout(
            as_pg(
                Command::new(format!("{PG_BIN}/pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "fast", "-w", "-t", "60", "stop"]),
            ),
            Duration::from_secs(90),
        );
        assert!(o.status.success(), "pg_ctl stop {member}: {}", text(&o));
        out.unwrap_or_else(|e| panic!("psql on {member}: {e}"))
    }
}

impl Cluster {
    /// After the primary `old` was lost: wait for the automatic failover and return the
    /// member that took over (a running primary holding the lease).
    pub fn failed_over_from(&self, old: &str) -> String {
        let mut who = String::new();
        wait_for(
            &format!("a new primary after losing {old}"),
            Duration::from_secs(60),
            || {
                let l = self.list();
                let Some(leader) = l["leader"].as_str().filter(|n| *n != old) else {
                    return false;
                };
                let m = self.member(leader);
                who = leader.to_string();
                m["role"] == "primary" && m["state"] == "running"
            },
        );
        who
    }

    /// Run `pgbaton pause` and check that it says so.
    pub fn pause(&self) {
        let t = text(&self.cmd(&["pause"]));
        assert!(t.contains("paused"), "{t}");
    }
}

/// Signal a process (SIGSTOP / SIGCONT for freezing), ignoring a process already gone.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// A process frozen with SIGSTOP; thawed (SIGCONT) when dropped, so a failing test never
/// leaves it stopped.
pub struct Frozen(pub i32);
impl Frozen {
    pub fn new(pid: i32) -> Frozen {
        signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Frozen(pid)
    }
}
impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

const ETCD_BIN: &str = "/usr/bin/etcd";

/// One etcd server for a test (its own ports and data directory); killed when dropped.
pub struct Etcd {
    pub child: std::process::Child,
    pub endpoint: String,
    _dir: Scratch,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

impl Etcd {
    pub fn new() -> Etcd {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: install etcd-server (CI does)"
        );
        let mut last = String::new();
        for _ in 0..5 {
            match Etcd::start() {
                Ok(e) => return e,
                Err(e) => last = e,
            }
        }
        panic!("could not start etcd: {last}");
    }

    /// An etcd listening for clients on `host` (an address of this namespace).
    pub fn on(host: &str) -> Etcd {
        let mut last = String::new();
        for _ in 0..5 {
            match Etcd::start_on(host) {
                Ok(e) => return e,
                Err(e) => last = e,
            }
        }
        panic!("could not start etcd on {host}: {last}");
    }

    fn start() -> Result<Etcd, String> {
        Etcd::start_on("127.0.0.1")
    }

    fn start_on(host: &str) -> Result<Etcd, String> {
        Etcd::start_with(host, None)
    }

    /// An etcd on 127.0.0.1 over TLS, with client certificates required, made by
    /// `pgbaton certs` in `tls_dir` (`ca.crt`, `etcd.crt`, `etcd.key`: the server's and the
    /// clients' certificate alike).
    pub fn with_tls(tls_dir: &Path) -> Etcd {
        let o = pgbaton(
            &[
                "certs",
                "--dir",
                tls_dir.to_str().unwrap(),
                "--member",
                "etcd",
                "--host",
                "127.0.0.1",
            ],
            Duration::from_secs(30),
        );
        assert!(o.status.success(), "pgbaton certs: {}", text(&o));
        let mut last = String::new();
        for _ in 0..5 {
            match Etcd::start_with("127.0.0.1", Some(tls_dir)) {
                Ok(e) => return e,
                Err(e) => last = e,
            }
        }
        panic!("could not start etcd with TLS: {last}");
    }

    fn start_with(host: &str, tls: Option<&Path>) -> Result<Etcd, String> {
        let dir = scratch();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{host}:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path.join("etcd.log")).expect("etcd log file");
        let mut cmd = Command::new(ETCD_BIN);
        if let Some(t) = tls {
            cmd.arg("--cert-file")
                .arg(t.join("etcd.crt"))
                .arg("--key-file")
                .arg(t.join("etcd.key"))
                .arg("--trusted-ca-file")
                .arg(t.join("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {ETCD_BIN}: {e}"))?;
        let mut etcd = Etcd {
            child,
            endpoint: client,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!("etcd exited with {status}"));
            }
            let hostport = etcd.endpoint.split_once("://").unwrap().1.to_string();
            if std::net::TcpStream::connect(&hostport).is_ok() {
                return Ok(etcd);
            }
            if Instant::now() > deadline {
                return Err("etcd did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        signal(self.pid(), nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Network namespaces for a multi-host test: a bridge in this namespace (the "switch", with
/// the address etcd listens on) and one namespace per node, each with a veth pair to the
/// bridge. Deleted when dropped, also when the test fails.
pub struct Net {
    pub id: u8,
    pub nodes: u16,
    /// `name_hosts` made /etc/netns (it was not there): teardown removes it when empty.
    made_etc_netns: std::cell::Cell<bool>,
}

static NET_IDS: AtomicU16 = AtomicU16::new(0);

fn ip(args: &[&str]) {
    let o = run_with_timeout(Command::new("ip").args(args), Duration::from_secs(10));
    assert!(o.status.success(), "ip {}: {}", args.join(" "), text(&o));
}

impl Net {
    pub fn new(nodes: u16) -> Net {
        let n = NET_IDS.fetch_add(1, Ordering::SeqCst) as u32;
        let id = ((std::process::id() * 7 + n * 31) % 200 + 20) as u8;
        let net = Net {
            id,
            nodes,
            made_etc_netns: std::cell::Cell::new(false),
        };
        // Leftovers of an earlier run that died with this id.
        net.teardown();
        let br = net.bridge();
        ip(&["link", "add", &br, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", net.host_ip()), "dev", &br]);
        ip(&["link", "set", &br, "up"]);
        for i in 1..=nodes {
            let (ns, host_if) = (net.ns(i), net.host_if(i));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.node_ip(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["link", "set", &host_if, "master", &br]);
            ip(&["link", "set", &host_if, "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("pgbt{}br", self.id)
    }
    pub fn ns(&self, i: u16) -> String {
        format!("pgbt{}n{i}", self.id)
    }
    fn host_if(&self, i: u16) -> String {
        format!("pgbt{}h{i}", self.id)
    }
    pub fn host_ip(&self) -> String {
        format!("10.231.{}.1", self.id)
    }
    pub fn node_ip(&self, i: u16) -> String {
        format!("10.231.{}.{}", self.id, 10 + i)
    }

    /// Cut node `i` off from everything (store and peers), or connect it again.
    pub fn set_link(&self, i: u16, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_if(i),
            if up { "up" } else { "down" },
        ]);
    }

    /// Node i's DNS name, as every namespace resolves it once [`Net::name_hosts`] ran.
    pub fn host_name(&self, i: u16) -> String {
        format!("n{i}.pgbt{}.test", self.id)
    }

    /// Give every node a DNS name ([`Net::host_name`]): an /etc/hosts for each namespace
    /// (`ip netns exec` mounts `/etc/netns/NS/hosts` over /etc/hosts), removed on drop.
    pub fn name_hosts(&self) {
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for i in 1..=self.nodes {
            hosts.push_str(&format!("{} {}\n", self.node_ip(i), self.host_name(i)));
        }
        let etc = Path::new("/etc/netns");
        if std::fs::create_dir(etc).is_ok() {
            self.made_etc_netns.set(true);
        }
        for i in 1..=self.nodes {
            let dir = etc.join(self.ns(i));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("hosts"), &hosts).unwrap();
        }
    }

    fn teardown(&self) {
        for i in 1..=self.nodes {
            // The hosts file `name_hosts` wrote, and its directory.
            let etc = Path::new("/etc/netns").join(self.ns(i));
            let _ = std::fs::remove_file(etc.join("hosts"));
            let _ = std::fs::remove_dir(etc);
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_if(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
        // Made by `name_hosts` when there was none (fails while another test's files are
        // in it; only one test names hosts today).
        if self.made_etc_netns.get() {
            let _ = std::fs::remove_dir("/etc/netns");
        }
    }

    /// A cluster whose node i runs `pgbaton agent` inside namespace i, PostgreSQL listening on
    /// the namespace's address, the state in `etcd`. Stopped by `pgbaton down` when dropped.
    pub fn cluster(&self, etcd: &Etcd) -> Cluster {
        self.cluster_with(etcd, |_, _| String::new())
    }

    /// The same, node i's config ending with `extra(i, DIR)` (more tables).
    pub fn cluster_with(&self, etcd: &Etcd, extra: impl Fn(u16, &Path) -> String) -> Cluster {
        let scratch = scratch();
        let dir = scratch.path.join("cluster");
        let port_base = free_port_base(self.nodes);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = pg_user();
        let secret = |name: &str, value: &str| {
            let p = dir.join(name);
            std::fs::write(&p, format!("{value}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            nix::unistd::chown(&p, Some(pg.uid), Some(pg.gid)).unwrap();
        };
        let id = format!("{}-{}", std::process::id(), self.id);
        secret("replication.password", &format!("repl-{id}-secret"));
        secret("api.token", &format!("token-{id}-secret"));
        let store = format!(
            "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n",
            etcd.endpoint
        );
        std::fs::write(
            dir.join("pgbaton.toml"),
            format!("cluster = \"netns\"\n\n{store}"),
        )
        .unwrap();
        let c = Cluster {
            scratch,
            dir: dir.clone(),
            nodes: self.nodes,
            port_base,
            extra: vec![],
        };
        for i in 1..=self.nodes {
            let name = format!("n{i}");
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir).unwrap();
            std::fs::set_permissions(&node_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            // The agent writes its passfile here as the OS user (as `up` sets it up).
            nix::unistd::chown(&node_dir, Some(pg.uid), Some(pg.gid)).unwrap();
            let ip = self.node_ip(i);
            let cfg = format!(
                "cluster = \"netns\"\nname = \"{name}\"\ndata_dir = \"{data}\"\n\n\
                 [postgresql]\nlisten_host = \"{ip}\"\nport = {port}\n\
                 allowed_networks = [\"10.231.{id}.0/24\"]\ndatabases = [\"app\"]\n\n\
                 [replication]\npassword_file = \"{dir}/replication.password\"\n\n\
                 [api]\nlisten = \"{ip}:8008\"\nauth_token_file = \"{dir}/api.token\"\n\n{store}\n{more}",
                data = node_dir.join("data").display(),
                port = port_base + i - 1,
                id = self.id,
                dir = dir.display(),
                more = extra(i, &dir),
            );
            let cfg_path = node_dir.join("node.toml");
            std::fs::write(&cfg_path, cfg).unwrap();
        }
        self.start_agents(&c);
        c
    }

    /// A cluster whose node i's config is `DIR/ni/node.toml`, written by `write_config(i,
    /// DIR)` (DIR made here, owned so that the agents' OS user reaches it); the client
    /// config `DIR/pgbaton.toml` is node 1's. Agents started in their namespaces.
    pub fn cluster_from(&self, write_config: impl Fn(u16, &Path)) -> Cluster {
        let scratch = scratch();
        let dir = scratch.path.join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = Cluster {
            scratch,
            dir: dir.clone(),
            nodes: self.nodes,
            port_base: 5432,
            extra: vec![],
        };
        for i in 1..=self.nodes {
            write_config(i, &dir);
        }
        std::fs::copy(dir.join("n1/node.toml"), dir.join("pgbaton.toml")).unwrap();
        self.start_agents(&c);
        c
    }

    /// `pgbaton agent` for each node in its namespace (config `DIR/ni/node.toml`); returns
    /// when the cluster is healthy, or panics with the agents' last log lines.
    fn start_agents(&self, c: &Cluster) {
        let dir = &c.dir;
        for i in 1..=self.nodes {
            let node_dir = dir.join(format!("n{i}"));
            let cfg_path = node_dir.join("node.toml");
            let log = std::fs::File::create(node_dir.join("agent.log")).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(i)])
                .arg(env!("CARGO_BIN_EXE_pgbaton"))
                .args(["agent", "-c"])
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start an agent in its namespace");
            // `ip netns exec` execs the agent in place: this PID is the agent's.
            std::fs::write(node_dir.join("agent.pid"), format!("{}\n", child.id())).unwrap();
            // The agent is reaped by `pgbaton down` (it is not waited for here).
            std::mem::forget(child);
        }
        let healthy = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.wait_healthy(Duration::from_secs(90))
        }));
        if let Err(e) = healthy {
            for i in 1..=self.nodes {
                let log = std::fs::read_to_string(dir.join(format!("n{i}/agent.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!(
                    "--- n{i}'s agent log (last lines, newest first):\n{}",
                    tail.join("\n")
                );
            }
            std::panic::resume_unwind(e);
        }
    }

    /// A 3-member etcd cluster, member i in namespace i on the node's address (ports 2379
    /// and 2380), as on three hosts that each run etcd beside PostgreSQL.
    pub fn etcd_cluster(&self) -> EtcdCluster {
        let scratch = scratch();
        let peers: Vec<String> = (1..=self.nodes)
            .map(|i| format!("e{i}=http://{}:2380", self.node_ip(i)))
            .collect();
        let mut children = Vec::new();
        for i in 1..=self.nodes {
            let ip = self.node_ip(i);
            let log = std::fs::File::create(scratch.path.join(format!("etcd{i}.log"))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &self.ns(i), ETCD_BIN])
                .args(["--name", &format!("e{i}"), "--data-dir"])
                .arg(scratch.path.join(format!("e{i}")))
                .args(["--listen-client-urls", &format!("http://{ip}:2379")])
                .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
                .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{ip}:2380"),
                ])
                .args(["--initial-cluster", &peers.join(",")])
                .args(["--initial-cluster-state", "new"])
                // As the guide configures it (etcd 3.5's default): a member whose host comes
                // back does not force an election with the term it raised while cut off.
                .arg("--pre-vote")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start an etcd member in its namespace");
            children.push(child);
        }
        let cluster = EtcdCluster {
            children,
            endpoints: (1..=self.nodes)
                .map(|i| format!("http://{}:2379", self.node_ip(i)))
                .collect(),
            _dir: scratch,
        };
        // Healthy when every member says so (a leader elected, the member part of it).
        wait_for(
            "the etcd cluster to be healthy",
            Duration::from_secs(30),
            || {
                cluster.endpoints.iter().all(|e| {
                    let hostport = e.trim_start_matches("http://");
                    etcd_health(hostport)
                })
            },
        );
        cluster
    }
}

/// Wait until `old` streams from `new` as a standby (it rejoined after losing the lease).
pub fn wait_rejoined(c: &Cluster, old: &str, new: &str) {
    wait_for(
        "the old primary to rejoin as a standby",
        Duration::from_secs(90),
        || {
            let m = c.member(old);
            m["state"] == "streaming" && m["upstream"] == new
        },
    );
}

/// `GET /health` of an etcd member answers `"health":"true"`.
fn etcd_health(hostport: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(addr) = hostport.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains("\"health\":\"true\"")
}

/// etcd members started by [`Net::etcd_cluster`]; killed when dropped.
pub struct EtcdCluster {
    children: Vec<std::process::Child>,
    pub endpoints: Vec<String>,
    _dir: Scratch,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A tiny HTTP/1.1 client (no dependency): (status, body).
pub fn http(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the API on {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The API port of a member of a cluster made by `up` (or `Net::cluster`'s layout).
pub fn api_port(c: &Cluster, member: &str) -> u16 {
    c.port_base + 1000 + member[1..].parse::<u16>().unwrap() - 1
}

/// The direct children of `pid` (from /proc).
pub fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Every process of a PostgreSQL instance: `postgres` processes working in its data
/// directory (the postmaster and its backends, orphaned ones too).
pub fn instance_pids(data_dir: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::canonicalize(data_dir) else {
        return vec![];
    };
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if cwd.as_deref() == Some(dir.as_path())
            && exe.is_some_and(|x| x.to_string_lossy().contains("postgres"))
        {
            pids.push(pid);
        }
    }
    pids
}

/// The fence watchdog process of the agent `agent` (its child running `fence-watchdog`).
pub fn watchdog_of(agent: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<i32>().ok()));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(agent)
            && state != Some("Z")
            && String::from_utf8_lossy(&cmdline).contains("fence-watchdog")
        {
            return Some(pid);
        }
    }
    None
}

/// Every process in the list frozen with SIGSTOP; thawed when dropped.
pub struct FrozenAll(pub Vec<Frozen>);
impl FrozenAll {
    pub fn new(pids: &[i32]) -> FrozenAll {
        FrozenAll(pids.iter().map(|p| Frozen::new(*p)).collect())
    }
}
