//! The fence watchdog: a process apart from the agent that fences PostgreSQL when the
//! leader's fence deadline passes without a renewal, and the agent's handle on it.
//!
//! The agent starts it as `pgbaton fence-watchdog DATA_DIR` (its own binary, through
//! /proc/self/exe: that works after privileges were dropped even when the binary lives where
//! the OS user cannot enter, and after the file was replaced on disk) and talks to it over
//! its stdin, one line per command:
//! - `arm <ms>`: the deadline is `<ms>` from now (each successful lease renewal sends one);
//! - `disarm`: no deadline (PostgreSQL no longer runs as this member's primary);
//! - `exit`: the agent stops cleanly (PostgreSQL stopped, lease released).
//!
//! When an armed deadline passes, the watchdog ends every process of the instance
//! ([`crate::fence::fence`]). Because it is its own process, a frozen agent (SIGSTOP, a
//! stuck loop) is fenced too; if the agent dies, the watchdog keeps the last deadline,
//! fences at it, then exits.
//!
//! The other way round: the watchdog never writes to its stdout, so the agent's end of that
//! pipe reads end-of-file the moment the watchdog dies. A thread of the agent waits for it
//! and, if the watchdog was armed, fences PostgreSQL before anything else happens, then
//! starts a new watchdog: a primary never runs without a live fence. (A disarmed watchdog
//! guards nothing: it is only replaced.)

use crate::fence;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tracing::{error, warn};

/// The hidden subcommand of `pgbaton` that runs [`watchdog_main`].
pub const SUBCOMMAND: &str = "fence-watchdog";

/// How to start a watchdog process.
#[derive(Clone, Debug)]
pub struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Launcher {
    /// This very binary, `pgbaton fence-watchdog DATA_DIR`.
    pub fn this_binary(data_dir: &Path) -> Launcher {
        Launcher {
            program: "/proc/self/exe".into(),
            args: vec![SUBCOMMAND.into(), data_dir.into()],
        }
    }

    /// Any program speaking the protocol (tests use stand-ins).
    pub fn command(program: impl Into<PathBuf>, args: &[&str]) -> Launcher {
        Launcher {
            program: program.into(),
            args: args.iter().map(OsString::from).collect(),
        }
    }

    fn start(&self) -> Result<(Child, ChildStdin, ChildStdout)> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C in the agent's terminal is the agent's to
            // handle (stop PostgreSQL, then say `exit`); the watchdog must not vanish first.
            .process_group(0);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "start the fence watchdog ({} {:?})",
                self.program.display(),
                self.args
            )
        })?;
        let stdin = child.stdin.take().context("the watchdog's stdin")?;
        let stdout = child.stdout.take().context("the watchdog's stdout")?;
        Ok((child, stdin, stdout))
    }
}

/// The agent's handle on its watchdog (replaced behind it when it dies).
pub struct Watchdog {
    state: Arc<Mutex<State>>,
}

struct State {
    data_dir: PathBuf,
    launcher: Launcher,
    child: Child,
    stdin: ChildStdin,
    /// The deadline of the last `arm` (until a `disarm`): PostgreSQL may run as this
    /// member's primary. A successor is armed with what is left of it.
    armed: Option<Instant>,
    /// Which child the monitor thread watches; a stale monitor's notice is ignored.
    generation: u64,
    exiting: bool,
    /// Why no watchdog could be started again: nothing can be armed any more.
    broken: Option<String>,
    deaths: u64,
    /// Itself, for the monitor of a successor.
    me: Weak<Mutex<State>>,
}

impl Watchdog {
    /// Start the watchdog for `data_dir` and watch it.
    pub fn spawn(launcher: Launcher, data_dir: &Path) -> Result<Watchdog> {
        let (child, stdin, stdout) = launcher.start()?;
        let state = Arc::new_cyclic(|me| {
            Mutex::new(State {
                data_dir: data_dir.to_path_buf(),
                launcher,
                child,
                stdin,
                armed: None,
                generation: 0,
                exiting: false,
                broken: None,
                deaths: 0,
                me: me.clone(),
            })
        });
        monitor(Arc::downgrade(&state), 0, stdout)?;
        Ok(Watchdog { state })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> i32 {
        self.lock().child.id() as i32
    }

    /// How many times the watchdog died and was replaced.
    pub fn deaths(&self) -> u64 {
        self.lock().deaths
    }

    /// Fence at `deadline` unless armed again before. The time left is worked out under the
    /// lock, right before it is sent (a wait for the lock does not move the deadline).
    pub fn arm(&mut self, deadline: Instant) -> Result<()> {
        self.lock().send(Some(deadline))
    }

    pub fn disarm(&mut self) -> Result<()> {
        self.lock().send(None)
    }

    /// The agent stops cleanly: the watchdog exits without fencing.
    pub fn exit(&mut self) {
        let mut s = self.lock();
        s.exiting = true;
        let _ = s.stdin.write_all(b"exit\n");
        let t = Instant::now();
        while matches!(s.child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = s.child.kill();
        let _ = s.child.wait();
    }
}

impl State {
    /// Send one command; a watchdog found dead is handled (and replaced) first, then the
    /// command goes to its successor.
    fn send(&mut self, deadline: Option<Instant>) -> Result<()> {
        for _ in 0..2 {
            if let Some(why) = &self.broken {
                bail!("no fence watchdog: {why}");
            }
            // A stopped watchdog (SIGSTOP, a debugger) looks alive and fences nothing.
            if fence::is_stopped(self.child.id() as i32) {
                self.died("it is stopped");
                continue;
            }
            let line = match deadline {
                Some(d) => format!(
                    "arm {}\n",
                    d.saturating_duration_since(Instant::now()).as_millis()
                ),
                None => "disarm\n".to_string(),
            };
            if self.stdin.write_all(line.as_bytes()).is_ok() {
                self.armed = deadline;
                return Ok(());
            }
            self.died("its pipe is closed");
        }
        bail!("the fence watchdog died twice in a row")
    }

    /// The watchdog is gone: fence PostgreSQL if it guarded a primary, then start another.
    fn died(&mut self, how: &str) {
        let pid = self.child.id();
        // Reap it (it closed its pipe: it is dead or dying; make sure).
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.deaths += 1;
        let was_armed = self.armed.take();
        if was_armed.is_some() {
            error!(
                "the fence watchdog (pid {pid}) died ({how}) while this member may run a primary: \
                 stopping PostgreSQL before anything else (a primary never runs unfenced)"
            );
            if let Err(e) = fence::fence(&self.data_dir, "the fence watchdog died") {
                error!("{e:#}");
            }
        } else {
            warn!("the fence watchdog (pid {pid}) died ({how}): starting another");
        }
        let started = self.launcher.start().and_then(|(child, stdin, stdout)| {
            self.child = child;
            self.stdin = stdin;
            self.generation += 1;
            // Its monitor waits for this lock before it acts on anything.
            monitor(self.me.clone(), self.generation, stdout)
        });
        match started {
            Ok(()) => {
                warn!("started a new fence watchdog (pid {})", self.child.id());
                // What was left of the old deadline still holds (PostgreSQL was ended, but
                // nothing may outlive the fence if that missed a process).
                if let Some(d) = was_armed.filter(|d| *d > Instant::now()) {
                    let left = d.saturating_duration_since(Instant::now()).as_millis();
                    if self
                        .stdin
                        .write_all(format!("arm {left}\n").as_bytes())
                        .is_ok()
                    {
                        self.armed = Some(d);
                    }
                }
            }
            Err(e) => {
                error!("{e:#}: this member cannot run a primary any more");
                self.broken = Some(format!("{e:#}"));
            }
        }
    }
}

/// Wait, on a thread of its own, for the watchdog of `generation` to close its stdout (it
/// dies); then handle it. Holds only a weak handle: a dropped [`Watchdog`] ends the thread.
fn monitor(state: Weak<Mutex<State>>, generation: u64, mut stdout: ChildStdout) -> Result<()> {
    std::thread::Builder::new()
        .name("fence-monitor".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            // The watchdog never writes: end-of-file (or an error other than an
            // interruption) is its end.
            loop {
                match stdout.read(&mut buf) {
                    Ok(n) if n > 0 => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
            let Some(state) = state.upgrade() else { return };
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            if s.exiting || s.generation != generation {
                return;
            }
            s.died("it exited");
        })
        .context("start the thread that watches the fence watchdog")?;
    Ok(())
}

// ---- The watchdog process -------------------------------------------------------------

enum Msg {
    Arm(Duration),
    Disarm,
    Exit,
    Eof,
}

fn parse(line: &str) -> Option<Msg> {
    let line = line.trim();
    match line.split_once(' ') {
        Some(("arm", ms)) => ms
            .parse()
            .ok()
            .map(|ms| Msg::Arm(Duration::from_millis(ms))),
        _ if line == "disarm" => Some(Msg::Disarm),
        _ if line == "exit" => Some(Msg::Exit),
        _ => None,
    }
}

/// The body of `pgbaton fence-watchdog DATA_DIR`: commands on stdin; stdout is held open
/// and never written (its end tells the agent this process died).
pub fn watchdog_main(data_dir: &Path) -> Result<()> {
    // A terminal's Ctrl-C or hang-up is the agent's to handle (it stops PostgreSQL, then
    // says `exit`): blocked here, before any thread exists, so in every thread.
    let mut quiet = nix::sys::signal::SigSet::empty();
    quiet.add(Signal::SIGINT);
    quiet.add(Signal::SIGHUP);
    // A service manager's SIGTERM to the whole group, too: the agent stops PostgreSQL
    // (fast) and then says `exit`; a watchdog gone first would end a primary at once.
    quiet.add(Signal::SIGTERM);
    let _ = quiet.thread_block();
    close_inherited_fds();
    let _ = nix::sys::prctl::set_name(c"pgbaton-fence");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if let Some(m) = parse(&l) {
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Msg::Eof);
    });
    run_loop(rx, data_dir.to_path_buf());
    Ok(())
}

/// Fence until it succeeds (a process stuck in the kernel may take a while to die).
fn fence_now(dir: &Path) {
    let why = "the leader lease was not renewed in time";
    while let Err(e) = fence::fence_in(dir, why) {
        eprintln!("pgbaton fence watchdog: {e:#}; trying again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_loop(rx: mpsc::Receiver<Msg>, data_dir: PathBuf) {
    // The directory's path as /proc shows it, resolved while nothing is at stake (at start,
    // or at the first `arm`, when PostgreSQL runs): the fence itself must not touch the
    // data directory's file system, which may be the thing that hangs.
    let mut dir = fence::resolve(&data_dir);
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Msg::Eof),
            },
            None => Some(rx.recv().unwrap_or(Msg::Eof)),
        };
        let target = |dir: &Option<PathBuf>| dir.clone().unwrap_or_else(|| data_dir.clone());
        match msg {
            Some(Msg::Arm(after)) => {
                deadline = Some(Instant::now() + after);
                if dir.is_none() {
                    dir = fence::resolve(&data_dir);
                }
            }
            Some(Msg::Disarm) => deadline = None,
            Some(Msg::Exit) => return,
            Some(Msg::Eof) => {
                // The agent is gone: keep the deadline, fence at it, then exit.
                if let Some(d) = deadline {
                    std::thread::sleep(d.saturating_duration_since(Instant::now()));
                    fence_now(&target(&dir));
                }
                return;
            }
            None => {
                fence_now(&target(&dir));
                deadline = None;
            }
        }
    }
}

/// Close every descriptor but 0, 1 and 2 (the watchdog must not hold the agent's sockets or
/// database files open).
fn close_inherited_fds() {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 {
            let _ = nix::unistd::close(fd);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert!(matches!(parse("arm 1500"), Some(Msg::Arm(d)) if d == Duration::from_millis(1500)));
        assert!(matches!(parse("disarm\n"), Some(Msg::Disarm)));
        assert!(matches!(parse("exit"), Some(Msg::Exit)));
        assert!(parse("arm x").is_none());
        assert!(parse("bogus").is_none());
    }

    /// A stand-in "postmaster": a copy of sleep named postgres, working in the data directory.
    pub(crate) fn fake_instance(scratch: &Path) -> (PathBuf, Child) {
        let data = scratch.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let bin = scratch.join("postgres");
        std::fs::copy("/bin/sleep", &bin).unwrap();
        let child =
            crate::fence::tests::spawn_fresh_copy(Command::new(&bin).arg("30").current_dir(&data));
        std::fs::write(data.join("postmaster.pid"), format!("{}\n", child.id())).unwrap();
        (data, child)
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_watchdog_fences_at_its_deadline_and_not_before() {
        let scratch = tempfile::tempdir().unwrap();
        let (data, mut child) = fake_instance(scratch.path());
        let (tx, rx) = mpsc::channel();
        let dir = data.clone();
        let h = std::thread::spawn(move || run_loop(rx, dir));
        tx.send(Msg::Arm(Duration::from_millis(300))).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        tx.send(Msg::Arm(Duration::from_millis(300))).unwrap(); // a renewal moves it
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "fenced before the deadline"
        );
        wait_until("fenced", || child.try_wait().unwrap().is_some());
        tx.send(Msg::Exit).unwrap();
        h.join().unwrap();
    }

    /// A stand-in watchdog process: `sleep` holds its stdout open until killed.
    fn stand_in() -> Launcher {
        Launcher::command("sleep", &["600"])
    }

    fn alive(pid: i32) -> bool {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
    }

    /// Issue 14: killing the watchdog of a primary left PostgreSQL running unfenced.
    #[test]
    fn a_killed_armed_watchdog_fences_postgresql_at_once_and_is_replaced() {
        let scratch = tempfile::tempdir().unwrap();
        let (data, mut pg) = fake_instance(scratch.path());
        let mut w = Watchdog::spawn(stand_in(), &data).unwrap();
        w.arm(Instant::now() + Duration::from_secs(60)).unwrap();
        let first = w.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
        wait_until("PostgreSQL fenced", || pg.try_wait().unwrap().is_some());
        wait_until("a new watchdog", || w.pid() != first);
        assert!(alive(w.pid()));
        assert_eq!(w.deaths(), 1);
        // The successor holds what was left of the deadline.
        wait_until("the successor armed", || w.lock().armed.is_some());
        // The successor is watched too.
        let second = w.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(second), Signal::SIGKILL).unwrap();
        wait_until("a third watchdog", || w.pid() != second);
        assert_eq!(w.deaths(), 2);
        w.exit();
    }

    #[test]
    fn a_stopped_watchdog_counts_as_dead_at_the_next_arm() {
        let scratch = tempfile::tempdir().unwrap();
        let (data, mut pg) = fake_instance(scratch.path());
        let mut w = Watchdog::spawn(stand_in(), &data).unwrap();
        w.arm(Instant::now() + Duration::from_secs(60)).unwrap();
        let first = w.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGSTOP).unwrap();
        wait_until("stopped", || fence::is_stopped(first));
        w.arm(Instant::now() + Duration::from_secs(60)).unwrap();
        assert_ne!(w.pid(), first);
        wait_until("PostgreSQL fenced", || pg.try_wait().unwrap().is_some());
        w.exit();
    }

    #[test]
    fn a_killed_disarmed_watchdog_is_replaced_and_postgresql_left_alone() {
        let scratch = tempfile::tempdir().unwrap();
        let (data, mut pg) = fake_instance(scratch.path());
        let mut w = Watchdog::spawn(stand_in(), &data).unwrap();
        w.arm(Instant::now() + Duration::from_secs(60)).unwrap();
        w.disarm().unwrap();
        let first = w.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
        wait_until("a new watchdog", || w.pid() != first);
        assert!(pg.try_wait().unwrap().is_none(), "a standby was stopped");
        // Arming goes to the new watchdog.
        w.arm(Instant::now() + Duration::from_secs(60)).unwrap();
        pg.kill().unwrap();
        pg.wait().unwrap();
        w.exit();
    }

    #[test]
    fn a_watchdog_that_cannot_be_started_again_refuses_to_arm() {
        let scratch = tempfile::tempdir().unwrap();
        let (data, mut pg) = fake_instance(scratch.path());
        let mut w = Watchdog::spawn(stand_in(), &data).unwrap();
        w.lock().launcher = Launcher::command(scratch.path().join("missing"), &[]);
        w.arm(Instant::now() + Duration::from_secs(60)).unwrap();
        let first = w.pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
        wait_until("PostgreSQL fenced", || pg.try_wait().unwrap().is_some());
        wait_until("broken", || w.lock().broken.is_some());
        let e = w
            .arm(Instant::now() + Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no fence watchdog"), "{e}");
    }
}
