//! PostgreSQL's archive_command with pgBackRest (`pgbaton backrest-push`): `archive-push`
//! under a lock in the repository, bounded, and a former primary's diverged segment kept
//! aside instead of failing for good.
//!
//! Every member archives (archive_mode = always), and two pushes of the same segment at
//! once collided in pgBackRest's temporary file (the second one's rename failed: "unable to
//! move ... .pgbackrest.tmp", a failed archive command, seen in the integration test);
//! pgBackRest counts on a single archiver. A lock on a file in the repository serializes
//! the pushes of every member that shares it (fcntl locks work over NFS too); the second
//! push then finds the segment there with the same checksum, a success.

use anyhow::{Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a push waits for another member's to finish before it fails (PostgreSQL
/// tries again), and how long pgBackRest may take with one segment.
const LOCK_WAIT: Duration = Duration::from_secs(60);
const PUSH_LIMIT: Duration = Duration::from_secs(300);

/// pgBackRest's exit code for "already in the archive with a different checksum".
const ARCHIVE_DUPLICATE: i32 = 45;

pub struct PushSpec<'a> {
    pub bin: &'a Path,
    pub conf: &'a Path,
    pub stanza: &'a str,
    pub lock: &'a Path,
    /// `%p`: the segment, relative to the data directory PostgreSQL runs it from.
    pub wal: &'a Path,
}

/// Push one file; the exit code PostgreSQL gets (0: archived, or kept aside).
pub fn push_locked(s: &PushSpec<'_>) -> Result<i32> {
    let _held = lock(s.lock)?;
    let code = run_bounded(
        std::process::Command::new(s.bin)
            .arg(format!("--config={}", s.conf.display()))
            .arg(format!("--stanza={}", s.stanza))
            .arg("archive-push")
            .arg(s.wal),
        PUSH_LIMIT,
    )?;
    if code == ARCHIVE_DUPLICATE {
        return keep_aside_if_diverged(s);
    }
    Ok(code)
}

/// The repository's push lock, waited for at most `LOCK_WAIT`.
fn lock(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::OpenOptionsExt;
    let t0 = Instant::now();
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("open the archive lock {}", path.display()))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(held) => return Ok(held),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if t0.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, e)) => {
                return Err(e).with_context(|| {
                    format!(
                        "lock {} (another member's push held it for {} s?)",
                        path.display(),
                        t0.elapsed().as_secs()
                    )
                })
            }
        }
    }
}

/// Run `cmd` (stdin closed, output to PostgreSQL's log) for at most `limit`; its exit code.
fn run_bounded(cmd: &mut std::process::Command, limit: Duration) -> Result<i32> {
    let mut child = cmd
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("run pgbackrest")?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st.code().unwrap_or(1));
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "pgbaton backrest-push: pgbackrest took over {} s: stopped it (PostgreSQL tries again)",
                limit.as_secs()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The repository has another file under this segment's name. When this one is a former
/// primary's, holding WAL past the point where its timeline ended (the history file a
/// rewind left in pg_wal says so), it is on no timeline recovery follows: kept aside in
/// the member's pgBackRest directory, and the archiver goes on (with `wal-push`, the same
/// case is kept aside in the archive directory). Anything else stays pgBackRest's refusal.
fn keep_aside_if_diverged(s: &PushSpec<'_>) -> Result<i32> {
    let Some(name) = s.wal.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(ARCHIVE_DUPLICATE);
    };
    let base = s.conf.parent().unwrap_or(Path::new("/")).join("pgbackrest");
    let scratch = base
        .join("spool")
        .join(format!("archived.{}", std::process::id()));
    let fetched = run_bounded(
        std::process::Command::new(s.bin)
            .arg(format!("--config={}", s.conf.display()))
            .arg(format!("--stanza={}", s.stanza))
            .arg("archive-get")
            .arg(&name)
            .arg(&scratch),
        PUSH_LIMIT,
    )?;
    let verdict = if fetched == 0 {
        crate::archive::past_switch_point(s.wal, &scratch, &name)
    } else {
        Ok(None)
    };
    let _ = std::fs::remove_file(&scratch);
    let Some(switch) = verdict? else {
        return Ok(ARCHIVE_DUPLICATE);
    };
    let aside_dir = base.join("diverged");
    crate::files::ensure_dir(&aside_dir, 0o700)?;
    let aside = aside_dir.join(format!("{name}.diverged.{}", pgbaton_store::now_ms()));
    std::fs::copy(s.wal, &aside)
        .and_then(|_| std::fs::File::open(&aside)?.sync_all())
        .with_context(|| format!("keep {} as {}", s.wal.display(), aside.display()))?;
    eprintln!(
        "pgbaton backrest-push: {name} differs from the archived one, and its timeline ended at \
         {switch} (a later timeline's history says so): it holds WAL of a former primary that \
         the failover left behind. The repository keeps its own {name}; this one is kept as {}",
        aside.display()
    );
    Ok(0)
}
