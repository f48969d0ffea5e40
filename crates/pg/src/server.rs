//! initdb, start, stop, reload, and whether a postmaster runs.

use crate::Binaries;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

async fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<String> {
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .with_context(|| format!("{what}: no answer within {} s", timeout.as_secs()))?
        .with_context(|| format!("{what}: could not run it"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// initdb with data checksums, scram-sha-256 and the given superuser. The directory must be
/// missing or empty (initdb itself refuses anything else).
pub async fn initdb(bins: &Binaries, data_dir: &Path, superuser: &str) -> Result<()> {
    let mut cmd = Command::new(bins.path("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-U")
        .arg(superuser)
        .args([
            "--data-checksums",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .env("LC_ALL", "C");
    run(cmd, "initdb", Duration::from_secs(300))
        .await
        .map(|_| ())
}

/// Start PostgreSQL with pg_ctl, logging to `log_file`, and wait until it accepts connections.
pub async fn start(
    bins: &Binaries,
    data_dir: &Path,
    log_file: &Path,
    timeout: Duration,
) -> Result<()> {
    let mut cmd = Command::new(bins.path("pg_ctl"));
    cmd.arg("start")
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(log_file)
        .arg("-w")
        .arg("-t")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-s");
    run(cmd, "pg_ctl start", timeout + Duration::from_secs(5))
        .await
        .map(|_| ())
        .with_context(|| {
            format!(
                "PostgreSQL did not start{}: see its log {}",
                last_fatal(log_file)
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default(),
                log_file.display()
            )
        })
}

/// The lines of this start's part of PostgreSQL's log (its last 16 kB) that contain one
/// of `needles`, without their prefix.
pub fn log_lines_matching(log_file: &Path, needles: &[&str]) -> Vec<String> {
    let Some(text) = this_start(log_file) else {
        return vec![];
    };
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(|l| l.split_once(']').map_or(l, |(_, r)| r).trim().to_string())
        .collect();
    out.dedup();
    out
}

/// The end of PostgreSQL's log (16 kB) from the last start on: an older failure is not
/// this start's reason.
fn this_start(log_file: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log_file).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))
        .ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some(match text.rfind("starting PostgreSQL") {
        Some(i) => text[i..].to_string(),
        None => text,
    })
}

/// The last `FATAL:` (or `PANIC:`) line of this start in PostgreSQL's log: why it did not
/// start (a recovery target past the archive's end, a bad setting), for the error and
/// `list`.
pub fn last_fatal(log_file: &Path) -> Option<String> {
    this_start(log_file)?.lines().rev().find_map(|l| {
        l.split_once("FATAL:")
            .or_else(|| l.split_once("PANIC:"))
            .map(|(_, m)| {
                format!(
                    "{}: {}",
                    if l.contains("PANIC:") {
                        "PANIC"
                    } else {
                        "FATAL"
                    },
                    m.trim()
                )
            })
    })
}

/// What the WAL receiver and the startup process last came to in this start, from
/// PostgreSQL's log: the text of their last FATAL line, or `None` when their last word was
/// progress (streaming started, a segment restored from the archive, a new timeline, a
/// promotion) or there is none. Other processes' FATAL lines (a client's failed login, too
/// many clients, the refusals clients get while it starts) are not its reason.
pub fn receiver_outcome(log_file: &Path) -> Option<String> {
    const PROGRESS: [&str; 4] = [
        "started streaming WAL",
        "restored log file",
        "selected new timeline ID",
        "database system is ready to accept connections",
    ];
    const RECEIVER: [&str; 5] = [
        "WAL stream",
        "primary server",
        "replication slot",
        "timeline",
        "requested WAL segment",
    ];
    let text = this_start(log_file)?;
    let last = text.lines().rev().find(|l| {
        PROGRESS.iter().any(|p| l.contains(p))
            || ((l.contains("FATAL:") || l.contains("PANIC:"))
                && RECEIVER.iter().any(|r| l.contains(r)))
    })?;
    if PROGRESS.iter().any(|p| last.contains(p)) {
        return None;
    }
    let said = last
        .split_once("FATAL:")
        .or_else(|| last.split_once("PANIC:"))
        .map_or(last, |(_, m)| m);
    Some(said.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Whether the receiver's last word is that its upstream removed the WAL it asked for (and
/// no archive gave it since): starting it again cannot help.
pub fn upstream_wal_gone(log_file: &Path) -> Option<String> {
    receiver_outcome(log_file).filter(|s| s.contains("has already been removed"))
}

/// Why a standby that refuses connections or does not stream is stuck, for its message:
/// the receiver's last outcome; the removed-WAL case names `reinit`.
pub fn why_not_ready(log_file: &Path, member: &str) -> Option<String> {
    let said = receiver_outcome(log_file)?;
    Some(if said.contains("has already been removed") {
        format!(
            "{said}: its upstream no longer has WAL this member needs, and no archive gave it; \
             `pgbaton reinit {member}` makes a fresh copy"
        )
    } else {
        said
    })
}

/// Stop PostgreSQL in fast mode (clients disconnected, shutdown checkpoint) and wait.
pub async fn stop(bins: &Binaries, data_dir: &Path, timeout: Duration) -> Result<()> {
    if postmaster_pid(data_dir).is_none() {
        return Ok(());
    }
    let mut cmd = Command::new(bins.path("pg_ctl"));
    cmd.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "fast", "-w", "-s", "-t"])
        .arg(timeout.as_secs().max(1).to_string());
    run(cmd, "pg_ctl stop", timeout + Duration::from_secs(5))
        .await
        .map(|_| ())
}

/// Make PostgreSQL re-read its configuration files.
pub async fn reload(bins: &Binaries, data_dir: &Path) -> Result<()> {
    let mut cmd = Command::new(bins.path("pg_ctl"));
    cmd.arg("reload").arg("-D").arg(data_dir).arg("-s");
    run(cmd, "pg_ctl reload", Duration::from_secs(30))
        .await
        .map(|_| ())
}

/// The PID of the postmaster running on `data_dir`, if one runs: postmaster.pid names a live
/// process that is a postgres (a stale file after a crash does not count).
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let exe = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let exe = String::from_utf8_lossy(exe);
    (exe.ends_with("postgres") || exe.ends_with("postmaster")).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_fatal_line_is_found() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("postgres.log");
        std::fs::write(&log, "LOG: x\n2026 UTC [1] FATAL:  first\nLOG: y\n2026 UTC [2] FATAL:  recovery ended before configured recovery target was reached\nLOG: shut down\n").unwrap();
        assert_eq!(
            last_fatal(&log).as_deref(),
            Some("FATAL: recovery ended before configured recovery target was reached")
        );
        std::fs::write(
            &log,
            "FATAL:  old\nLOG:  starting PostgreSQL 15\nLOG: fine\n",
        )
        .unwrap();
        assert_eq!(last_fatal(&log), None);
        assert_eq!(last_fatal(&d.path().join("missing")), None);
    }

    #[test]
    fn why_a_standby_is_not_ready() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("postgres.log");
        std::fs::write(
            &log,
            "LOG:  starting PostgreSQL 15\n\
             2026 UTC [7] FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000010 has already been removed\n\
             2026 UTC [8] FATAL:  the database system is not yet accepting connections\n",
        )
        .unwrap();
        let why = why_not_ready(&log, "n1").unwrap();
        assert!(
            why.starts_with("could not receive data from WAL stream: ERROR: requested WAL segment 000000010000000000000010")
                && why.ends_with("`pgbaton reinit n1` makes a fresh copy"),
            "{why}"
        );
        std::fs::write(
            &log,
            "LOG:  starting PostgreSQL 15\n2026 UTC [8] FATAL:  the database system is starting up\n\
             2026 UTC [9] FATAL:  password authentication failed for user \"app\"\n",
        )
        .unwrap();
        assert_eq!(why_not_ready(&log, "n1"), None);
        // Gone, then restored from the archive (or streaming again): not its outcome.
        for progress in [
            "LOG:  restored log file \"000000010000000000000010\" from archive",
            "LOG:  started streaming WAL from primary at 0/11000000 on timeline 1",
        ] {
            std::fs::write(
                &log,
                format!(
                    "LOG:  starting PostgreSQL 15\n\
                     2026 UTC [7] FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000010 has already been removed\n\
                     2026 UTC [9] {progress}\n"
                ),
            )
            .unwrap();
            assert_eq!(upstream_wal_gone(&log), None, "{progress}");
            assert_eq!(why_not_ready(&log, "n1"), None, "{progress}");
        }
    }
}
