//! The fence watchdog: a process apart from the agent that stops PostgreSQL when the
//! leader's fence deadline passes without a renewal.
//!
//! The agent forks it at start (before any thread exists, after dropping privileges) and
//! talks to it over a pipe, one line per command:
//! - `arm <ms>`: the deadline is `<ms>` from now (each successful lease renewal sends one);
//! - `disarm`: no deadline (PostgreSQL no longer runs as this member's primary);
//! - `exit`: the agent stops cleanly (PostgreSQL stopped, lease released).
//!
//! When an armed deadline passes, the watchdog sends SIGQUIT (immediate shutdown) to the
//! postmaster of the data directory — the postmaster takes its backends down with it, so
//! no further write is acknowledged — and waits for it to go, escalating to SIGKILL.
//! Because it is its own process, a frozen agent (SIGSTOP, a stuck loop) is fenced too;
//! if the agent dies, the watchdog keeps the last deadline, fences at it, then exits.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The agent's end of the pipe to its watchdog.
pub struct Watchdog {
    pipe: std::fs::File,
    pid: i32,
}

impl Watchdog {
    /// Fork the watchdog for `data_dir`. Call before any thread exists (fork copies only the
    /// calling thread).
    pub fn spawn(data_dir: &Path) -> Result<Watchdog> {
        let (read, write) = nix::unistd::pipe().context("create the fence watchdog's pipe")?;
        // SAFETY: called before the runtime starts: the process has a single thread, so the
        // child's memory is consistent; the child only runs `child_main` and exits.
        match unsafe { nix::unistd::fork() }.context("fork the fence watchdog")? {
            nix::unistd::ForkResult::Child => {
                drop(write);
                let code = match child_main(read, data_dir) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("pgbaton fence watchdog: {e:#}");
                        1
                    }
                };
                std::process::exit(code);
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read);
                Ok(Watchdog {
                    pipe: std::fs::File::from(write),
                    pid: child.as_raw(),
                })
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.pipe
            .write_all(format!("{line}\n").as_bytes())
            .context("talk to the fence watchdog (did it die?)")
    }

    /// Fence `remaining` from now unless armed again before.
    pub fn arm(&mut self, remaining: Duration) -> Result<()> {
        self.send(&format!("arm {}", remaining.as_millis()))
    }

    pub fn disarm(&mut self) -> Result<()> {
        self.send("disarm")
    }

    /// The agent stops cleanly: the watchdog exits without fencing.
    pub fn exit(mut self) {
        let _ = self.send("exit");
        let _ = nix::sys::wait::waitpid(Pid::from_raw(self.pid), None);
    }
}

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

fn child_main(read: OwnedFd, data_dir: &Path) -> Result<()> {
    // Ctrl-C in a terminal goes to the whole process group: the agent handles it (stops
    // PostgreSQL, then says `exit`); the watchdog must not vanish first.
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe {
        let _ = nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn);
        let _ = nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn);
    }
    close_inherited_fds(read.as_raw_fd());
    let _ = nix::sys::prctl::set_name(c"pgbaton-fence");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: `read` is an owned descriptor moved into this File.
        let file = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(read)) };
        for line in std::io::BufReader::new(file).lines() {
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
    run_loop(rx, data_dir.to_path_buf())
}

fn run_loop(rx: mpsc::Receiver<Msg>, data_dir: PathBuf) -> Result<()> {
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
        match msg {
            Some(Msg::Arm(after)) => deadline = Some(Instant::now() + after),
            Some(Msg::Disarm) => deadline = None,
            Some(Msg::Exit) => return Ok(()),
            Some(Msg::Eof) => {
                // The agent is gone: keep the deadline, fence at it, then exit.
                if deadline.is_none() {
                    return Ok(());
                }
                if let Some(d) = deadline {
                    std::thread::sleep(d.saturating_duration_since(Instant::now()));
                }
                fence(&data_dir)?;
                return Ok(());
            }
            None => {
                fence(&data_dir)?;
                deadline = None;
            }
        }
    }
}

/// The postmaster running on `data_dir`, if any: the PID in postmaster.pid, alive, with its
/// working directory in `data_dir` (a stale PID file or a reused PID is not ours).
pub fn postmaster_of(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let dir = std::fs::canonicalize(data_dir).ok()?;
    (cwd == dir).then_some(pid)
}

/// Stop the postmaster of `data_dir` at once: SIGQUIT (immediate shutdown), then SIGKILL
/// after 2 s. Nothing running is not an error.
pub fn fence(data_dir: &Path) -> Result<()> {
    let Some(pid) = postmaster_of(data_dir) else {
        return Ok(());
    };
    eprintln!(
        "pgbaton fence watchdog: the leader lease could not be renewed in time: stopping PostgreSQL \
         (postmaster {pid}, {}) with an immediate shutdown",
        data_dir.display()
    );
    let raw = pid;
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGQUIT);
    let start = Instant::now();
    while postmaster_of(data_dir) == Some(raw) {
        if start.elapsed() > Duration::from_secs(2) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("postmaster {pid} does not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Close every descriptor but 0, 1, 2 and `keep` (the child must not hold the agent's
/// sockets or database files open).
fn close_inherited_fds(keep: i32) {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && fd != keep {
            let _ = nix::unistd::close(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert!(matches!(parse("arm 1500"), Some(Msg::Arm(d)) if d == Duration::from_millis(1500)));
        assert!(matches!(parse("disarm\n"), Some(Msg::Disarm)));
        assert!(matches!(parse("exit"), Some(Msg::Exit)));
        assert!(parse("arm x").is_none());
        assert!(parse("bogus").is_none());
    }

    #[test]
    fn fencing_a_directory_without_a_postmaster_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_of(d.path()), None);
        std::fs::write(d.path().join("postmaster.pid"), "999999999\n").unwrap();
        assert_eq!(postmaster_of(d.path()), None);
        fence(d.path()).unwrap();
    }

    #[test]
    fn the_watchdog_fences_a_process_at_its_deadline_and_not_before() {
        // A stand-in "postmaster": a sleep whose working directory is the data directory.
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(d.path())
            .spawn()
            .unwrap();
        std::fs::write(d.path().join("postmaster.pid"), format!("{}\n", child.id())).unwrap();
        assert_eq!(postmaster_of(d.path()), Some(child.id() as i32));
        let (tx, rx) = mpsc::channel();
        let dir = d.path().to_path_buf();
        let h = std::thread::spawn(move || run_loop(rx, dir));
        tx.send(Msg::Arm(Duration::from_millis(300))).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        tx.send(Msg::Arm(Duration::from_millis(300))).unwrap(); // a renewal moves it
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "fenced before the deadline"
        );
        let waited = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(waited.elapsed() < Duration::from_secs(10), "never fenced");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success());
        tx.send(Msg::Exit).unwrap();
        h.join().unwrap().unwrap();
    }
}
