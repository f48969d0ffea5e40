//! Fencing: end every process of this member's PostgreSQL instance at once, so that nothing
//! it runs can acknowledge a commit afterwards, frozen or not.
//!
//! Stopping only the postmaster is not enough. A postmaster frozen by SIGSTOP (a VM pause, a
//! storage stall, a debugger) does not act on SIGQUIT until it runs again, and a backend
//! frozen in the middle of a commit finishes it and answers its client when it resumes, even
//! if its postmaster was killed meanwhile: that write would be acknowledged beside a new
//! primary, and lost. So the fence asks for an immediate shutdown and, unless the instance
//! is gone almost at once (or any of its processes is stopped), sends SIGKILL to each of its
//! processes. The kernel delivers SIGKILL to a stopped process too, and a process that
//! returns from the kernel with it pending dies before it runs another instruction, so no
//! reply leaves it.
//!
//! "The instance" is every `postgres` process whose working directory is the data
//! directory: PostgreSQL changes into it before forking any child, so backends are found
//! even after their postmaster is gone (orphans reparented elsewhere). Fencing reads only
//! /proc, never the data directory itself (no postmaster.pid, no path resolution): on a
//! stalled storage device that would block the fence exactly when it is needed. The
//! directory's resolved path is taken beforehand ([`resolve`]).

use anyhow::{bail, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long an immediate shutdown may take before the processes left are killed. Short: the
/// fence fires `fence_margin_ms` (at least 100 ms, validated) before the lease can expire.
pub const FENCE_GRACE: Duration = Duration::from_millis(50);

/// The postmaster running on `data_dir`, if any: the PID in postmaster.pid, alive, a
/// `postgres` process, with its working directory in `data_dir` (a stale PID file or a
/// reused PID is not ours). Reads the data directory: not for the fence itself.
pub fn postmaster_of(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let dir = std::fs::canonicalize(data_dir).ok()?;
    (cwd_of(pid).as_deref() == Some(dir.as_path()) && is_postgres(pid)).then_some(pid)
}

/// The path /proc shows as the working directory of processes in `data_dir` (symbolic
/// links resolved), when the directory exists.
pub fn resolve(data_dir: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(data_dir).ok()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cwd_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Is `pid` a PostgreSQL server process (postmaster or a child of one)? Its executable is
/// named `postgres` (or `postmaster`), possibly marked deleted after an upgrade.
fn is_postgres(pid: i32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.as_deref().unwrap_or("");
    let name = name.strip_suffix(" (deleted)").unwrap_or(name);
    name == "postgres" || name == "postmaster"
}

/// Every live process of the instance on `data_dir`. See [`instance_pids_in`].
pub fn instance_pids(data_dir: &Path) -> Vec<i32> {
    resolve(data_dir).map_or_else(Vec::new, |d| instance_pids_in(&d))
}

/// Every live `postgres` process working in `dir` (a path from [`resolve`]), the
/// postmaster first (the one whose parent is not one of them). Reads only /proc. A zombie
/// has no working directory any more and is not listed: it can do nothing.
pub fn instance_pids_in(dir: &Path) -> Vec<i32> {
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut pids: Vec<i32> = proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| cwd_of(*pid).as_deref() == Some(dir) && is_postgres(*pid))
        .collect();
    let orphan_or_root = |p: &i32| parent_of(*p).is_none_or(|pp| !pids.contains(&pp));
    if let Some(i) = pids.iter().position(orphan_or_root) {
        let pm = pids.remove(i);
        pids.insert(0, pm);
    }
    pids
}

/// Is `pid` stopped (SIGSTOP, or traced)? Such a process acts on no signal but SIGKILL.
pub fn is_stopped(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')' (comm may contain one).
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|s| s == 'T' || s == 't')
}

/// End every process of the PostgreSQL instance on `data_dir` (see [`fence_in`]).
pub fn fence(data_dir: &Path, why: &str) -> Result<()> {
    match resolve(data_dir) {
        Some(dir) => fence_in(&dir, why),
        None => Ok(()), // no directory: no process can work in it
    }
}

/// End every process of the PostgreSQL instance working in `dir` (from [`resolve`]): SIGQUIT
/// to the postmaster (immediate shutdown); whatever is left after [`FENCE_GRACE`], or at
/// once when any process is stopped, gets SIGKILL. Returns when none is left (an error
/// after 10 s: a process that SIGKILL does not end is stuck in the kernel, where it cannot
/// answer a client either). Nothing running is not an error. Reads only /proc.
pub fn fence_in(dir: &Path, why: &str) -> Result<()> {
    let pids = instance_pids_in(dir);
    if pids.is_empty() {
        return Ok(());
    }
    eprintln!(
        "pgbaton fence: {why}: ending PostgreSQL on {} (processes {pids:?})",
        dir.display()
    );
    let start = Instant::now();
    if !pids.iter().any(|p| is_stopped(*p)) {
        let _ = kill(Pid::from_raw(pids[0]), Signal::SIGQUIT);
        while start.elapsed() < FENCE_GRACE && !instance_pids_in(dir).is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    loop {
        let left = instance_pids_in(dir);
        if left.is_empty() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "PostgreSQL processes {left:?} on {} do not exit after SIGKILL",
                dir.display()
            );
        }
        // The postmaster first (listed first), so that it forks nothing new.
        for pid in &left {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stand-in instance: copies of `sleep` named `postgres`, working in `dir`.
    fn fake_postgres(dir: &Path, bin: &Path) -> std::process::Child {
        spawn_fresh_copy(std::process::Command::new(bin).arg("30").current_dir(dir))
    }

    /// Spawn a binary just copied: another test thread forking meanwhile may still hold the
    /// copy's write descriptor for an instant (ETXTBSY), so try again briefly.
    pub(crate) fn spawn_fresh_copy(cmd: &mut std::process::Command) -> std::process::Child {
        let mut tries = 0;
        loop {
            match cmd.spawn() {
                Ok(c) => return c,
                Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("spawn {cmd:?}: {e}"),
            }
        }
    }

    fn sleep_named_postgres(scratch: &Path) -> PathBuf {
        let bin = scratch.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let p = bin.join("postgres");
        std::fs::copy("/bin/sleep", &p).unwrap();
        p
    }

    fn wait_exit(c: &mut std::process::Child) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn fencing_a_directory_without_a_postmaster_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_of(d.path()), None);
        std::fs::write(d.path().join("postmaster.pid"), "999999999\n").unwrap();
        assert_eq!(postmaster_of(d.path()), None);
        assert!(instance_pids(d.path()).is_empty());
        fence(d.path(), "test").unwrap();
    }

    #[test]
    fn only_postgres_processes_working_in_the_data_directory_belong_to_the_instance() {
        let scratch = tempfile::tempdir().unwrap();
        let data = scratch.path().join("data");
        let other = scratch.path().join("other");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let pg = sleep_named_postgres(scratch.path());
        let mut mine = fake_postgres(&data, &pg);
        let mut elsewhere = fake_postgres(&other, &pg);
        let mut not_postgres = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&data)
            .spawn()
            .unwrap();
        let pids = instance_pids(&data);
        assert_eq!(pids, vec![mine.id() as i32]);
        for c in [&mut mine, &mut elsewhere, &mut not_postgres] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The bug this pins (issue 14): a frozen postmaster ignores SIGQUIT until it resumes,
    /// and killing it alone leaves frozen backends that finish their commits on resume.
    #[test]
    fn the_fence_kills_a_frozen_postmaster_and_its_orphaned_backends() {
        let scratch = tempfile::tempdir().unwrap();
        let data = scratch.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let pg = sleep_named_postgres(scratch.path());
        let mut postmaster = fake_postgres(&data, &pg);
        let mut backend = fake_postgres(&data, &pg);
        std::fs::write(
            data.join("postmaster.pid"),
            format!("{}\n", postmaster.id()),
        )
        .unwrap();
        for c in [&postmaster, &backend] {
            kill(Pid::from_raw(c.id() as i32), Signal::SIGSTOP).unwrap();
        }
        let t = Instant::now();
        fence(&data, "test").unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the fence waited on frozen processes"
        );
        assert!(instance_pids(&data).is_empty());
        for c in [&mut postmaster, &mut backend] {
            assert!(!wait_exit(c).success());
        }
    }

    #[test]
    fn a_stopped_process_is_seen_as_stopped() {
        assert!(!is_stopped(std::process::id() as i32));
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        kill(Pid::from_raw(c.id() as i32), Signal::SIGSTOP).unwrap();
        let t = Instant::now();
        while !is_stopped(c.id() as i32) {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        c.kill().unwrap();
        c.wait().unwrap();
    }
}
