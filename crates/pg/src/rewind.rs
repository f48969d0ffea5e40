//! pg_rewind: bring a former primary's data directory back onto the new primary's timeline.

use crate::Binaries;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

pub use pgbaton_core::model::Rewind;

async fn pg_rewind(
    bins: &Binaries,
    data_dir: &Path,
    source: &str,
    dry_run: bool,
    restore_target_wal: bool,
) -> Result<String> {
    let mut cmd = Command::new(bins.path("pg_rewind"));
    cmd.arg("-D")
        .arg(data_dir)
        .arg(format!("--source-server={source}"))
        .arg("-P")
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    if dry_run {
        cmd.arg("--dry-run");
    }
    if restore_target_wal {
        // WAL the target no longer has in pg_wal comes from its restore_command (the archive).
        cmd.arg("--restore-target-wal");
    }
    let out = tokio::time::timeout(Duration::from_secs(3600), cmd.output())
        .await
        .context("pg_rewind did not finish within an hour")?
        .context("run pg_rewind")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text
        .split(['\r', '\n'])
        .filter(|l| !l.trim().is_empty() && !l.contains(" kB ("))
        .collect();
    if !out.status.success() {
        bail!("pg_rewind failed ({}): {}", out.status, lines.join("; "));
    }
    Ok(lines.join("\n"))
}

/// pg_rewind's output says it could not connect to the source server. pg_rewind connects
/// before it reads or changes anything of the target, and libpq names every failure to
/// connect ("connection to server at ... failed: FATAL: sorry, too many clients already",
/// "... the database system is starting up"), so this also tells a real run that changed
/// nothing; a connection lost later ("server closed the connection unexpectedly") is not
/// one of these. Once pg_rewind says it connected (`-P`: "connected to server"), nothing
/// counts: with --restore-target-wal the restore_command's own output (an archive on a
/// network mount: "Connection refused") is in the same text, and a rewind that failed
/// after it changed the target must never be run again (review finding).
pub fn source_unreachable(output: &str) -> bool {
    !output.contains("connected to server")
        && [
            "could not connect to server",
            "connection to server at",
            "connection to server on socket",
            "Connection refused",
            "timeout expired",
            "could not translate host name",
        ]
        .iter()
        .any(|needle| output.contains(needle))
}

/// The WAL location where the servers diverged, from pg_rewind's output.
pub fn diverged_at(output: &str) -> Option<String> {
    let rest = output.split("servers diverged at WAL location ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// A data directory of a PostgreSQL that crashed (or was fenced) is not "shut down": run
/// crash recovery in single-user mode so that pg_rewind can read it. pg_rewind does this
/// itself, but not in a dry run, which then fails with "must be shut down cleanly".
pub async fn ensure_clean_shutdown(bins: &Binaries, data_dir: &Path) -> Result<()> {
    let cd = crate::datadir::controldata(bins, data_dir)?;
    if cd.state == "shut down" || cd.state == "shut down in recovery" {
        return Ok(());
    }
    // wal_keep_size: the end-of-recovery checkpoint must not remove a segment. The last
    // checkpoint before the divergence may have its redo point in an older segment than its
    // record; pg_rewind finds the record and the rewound standby then replays from the redo
    // point, which only this directory still has once the new primary has checkpointed. A
    // removed segment left it "starting" for good, asking the new primary for WAL it no
    // longer had (CI, `synchronous::quorum_on_etcd_loses_no_acknowledged_commit_...`).
    // Patroni keeps them the same way (archive_command=false). About 1 TB, in MB.
    let mut cmd = Command::new(bins.path("postgres"));
    cmd.args(["--single", "-F", "-c", "archive_mode=off"])
        .args(["-c", "wal_keep_size=1000000", "-D"])
        .arg(data_dir)
        .arg("template1")
        .stdin(std::process::Stdio::null())
        .env("LC_ALL", "C")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(3600), cmd.output())
        .await
        .context("crash recovery (postgres --single) did not finish within an hour")?
        .context("run postgres --single for crash recovery")?;
    let after = crate::datadir::controldata(bins, data_dir)?;
    if !out.status.success() || after.state != "shut down" {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "crash recovery before pg_rewind failed (pg_control says {:?}): {}",
            after.state,
            tail.into_iter().rev().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(())
}

/// Ask pg_rewind (dry run) whether the data directory diverged from `source`, and rewind it
/// when it did. PostgreSQL must be stopped. `source` is a libpq connection string to the
/// new primary (pg_rewind reads files through SQL functions granted to the replication user).
/// `restore_target_wal`: the target has a restore_command (a WAL archive) to read WAL from.
pub async fn rewind_if_diverged(
    bins: &Binaries,
    data_dir: &Path,
    source: &str,
    restore_target_wal: bool,
) -> Result<Rewind> {
    ensure_clean_shutdown(bins, data_dir).await?;
    let dry = match pg_rewind(bins, data_dir, source, true, restore_target_wal).await {
        Ok(dry) => dry,
        // The dry run changes nothing: a source that cannot be reached is tried again later,
        // not taken for a data directory that cannot be rewound.
        Err(e) if source_unreachable(&format!("{e:#}")) => {
            return Ok(Rewind::SourceUnreachable(format!("{e:#}")))
        }
        Err(e) => return Err(e),
    };
    if dry.contains("no rewind required") {
        return Ok(Rewind::NotNeeded);
    }
    let kept = match diverged_at(&dry).and_then(|l| crate::archive::parse_lsn(&l)) {
        Some(fork) => Some(KeptWal::before(data_dir, fork)?),
        None => None,
    };
    let real = match pg_rewind(bins, data_dir, source, false, restore_target_wal).await {
        Ok(real) => real,
        // The source went between the two runs (a busy new primary: too many clients): the
        // real run failed to connect before it touched anything, so this is a wait too, not
        // a data directory that cannot be rewound (which waits for an operator's reinit).
        // The segments set aside are links or copies: the originals are still in pg_wal.
        Err(e) if source_unreachable(&format!("{e:#}")) => {
            return Ok(Rewind::SourceUnreachable(format!("{e:#}")))
        }
        Err(e) => return Err(e),
    };
    if let Some(k) = kept {
        k.put_back()?;
    }
    Ok(Rewind::Rewound {
        diverged_at: diverged_at(&real)
            .or_else(|| diverged_at(&dry))
            .unwrap_or_else(|| "?".into()),
    })
}

/// The target's WAL segments from before the fork, kept across pg_rewind. pg_rewind removes
/// every file of the target the source does not have, WAL segments too; the source (a new
/// primary that checkpointed since) may no longer have the segments from the last common
/// checkpoint's redo point on, and the rewound standby replays from that point first: it
/// then asked the new primary for a segment it had removed, "starting" for good (pinned:
/// `a_former_primary_whose_last_checkpoint_spans_two_segments_rejoins`). Segments before
/// the fork are the same on both sides, so the target's own copies are put back.
struct KeptWal {
    pg_wal: std::path::PathBuf,
    aside: std::path::PathBuf,
    names: Vec<String>,
}

impl KeptWal {
    /// Link (or copy) every segment of `data_dir` that ends before `fork` into a directory
    /// beside it.
    fn before(data_dir: &Path, fork: u64) -> Result<KeptWal> {
        let pg_wal = data_dir.join("pg_wal");
        let mut aside = data_dir.as_os_str().to_owned();
        aside.push(".pgbaton-wal-kept");
        let aside = std::path::PathBuf::from(aside);
        if aside.exists() {
            #[expect(
                clippy::disallowed_methods,
                reason = "copies of WAL segments an earlier rejoin set aside (the originals stay in pg_wal)"
            )]
            std::fs::remove_dir_all(&aside)
                .with_context(|| format!("remove {}", aside.display()))?;
        }
        crate::files::ensure_dir(&aside, 0o700)?;
        let seg_size = crate::archive::segment_size_of(&pg_wal)?.unwrap_or(16 << 20);
        let fork_seg = fork / seg_size;
        let mut names = vec![];
        for e in std::fs::read_dir(&pg_wal).with_context(|| format!("read {}", pg_wal.display()))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(seg) = segment_number(&name, seg_size) else {
                continue;
            };
            if seg >= fork_seg {
                continue;
            }
            let (from, to) = (pg_wal.join(&name), aside.join(&name));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            }
            names.push(name);
        }
        Ok(KeptWal {
            pg_wal,
            aside,
            names,
        })
    }

    /// Put back what pg_rewind removed (never over a file it left or brought), then drop
    /// the directory aside.
    fn put_back(self) -> Result<()> {
        for name in &self.names {
            let to = self.pg_wal.join(name);
            if !to.exists() {
                std::fs::rename(self.aside.join(name), &to)
                    .or_else(|_| std::fs::copy(self.aside.join(name), &to).map(|_| ()))
                    .with_context(|| format!("put {name} back into {}", self.pg_wal.display()))?;
            }
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "the links or copies set aside above, once put back"
        )]
        std::fs::remove_dir_all(&self.aside)
            .with_context(|| format!("remove {}", self.aside.display()))?;
        Ok(())
    }
}

/// The segment number of a WAL segment file name (`TTTTTTTTXXXXXXXXYYYYYYYY`).
fn segment_number(name: &str, seg_size: u64) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * (0x1_0000_0000 / seg_size) + seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_before_the_fork_is_put_back_after_pg_rewind_removed_it() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let wal = data.join("pg_wal");
        std::fs::create_dir_all(&wal).unwrap();
        let seg = 16u64 << 20;
        for n in [
            "000000010000000000000010",
            "000000010000000000000011",
            "000000010000000000000012",
        ] {
            std::fs::File::create(wal.join(n))
                .unwrap()
                .set_len(seg)
                .unwrap();
        }
        std::fs::write(wal.join("00000002.history"), "1\t0/120000D8\n").unwrap();
        let kept = KeptWal::before(&data, 0x1200_00D8).unwrap();
        assert_eq!(kept.names.len(), 2);
        // pg_rewind: removes what the source lacks, replaces the fork's segment.
        std::fs::remove_file(wal.join("000000010000000000000010")).unwrap();
        std::fs::remove_file(wal.join("000000010000000000000011")).unwrap();
        std::fs::write(wal.join("000000010000000000000012"), "the source's").unwrap();
        kept.put_back().unwrap();
        assert!(wal.join("000000010000000000000010").exists());
        assert_eq!(
            std::fs::metadata(wal.join("000000010000000000000011"))
                .unwrap()
                .len(),
            seg
        );
        assert_eq!(
            std::fs::read(wal.join("000000010000000000000012")).unwrap(),
            b"the source's"
        );
        assert!(!d.path().join("data.pgbaton-wal-kept").exists());
        assert_eq!(
            segment_number("0000000100000001000000FF", seg),
            Some(256 + 255)
        );
        assert_eq!(segment_number("00000002.history", seg), None);
    }

    #[test]
    fn finds_the_divergence_point() {
        let out = "pg_rewind: servers diverged at WAL location 0/3000148 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\npg_rewind: Done!";
        assert_eq!(diverged_at(out).as_deref(), Some("0/3000148"));
        assert_eq!(diverged_at("nothing"), None);
    }

    #[test]
    fn tells_an_unreachable_source_from_a_failed_rewind() {
        let down = "pg_rewind failed (exit status: 1): pg_rewind: error: connection to server at \"127.0.0.1\", port 5433 failed: Connection refused";
        assert!(source_unreachable(down));
        let busy = "pg_rewind failed (exit status: 1): pg_rewind: error: connection to server at \"10.0.0.2\", port 5432 failed: FATAL:  sorry, too many clients already";
        assert!(source_unreachable(busy));
        let socket = "pg_rewind failed (exit status: 1): pg_rewind: error: connection to server on socket \"/run/pg/.s.PGSQL.5432\" failed: FATAL:  the database system is starting up";
        assert!(source_unreachable(socket));
        let lost = "pg_rewind failed (exit status: 1): pg_rewind: error: unexpected result while fetching remote files: server closed the connection unexpectedly";
        assert!(!source_unreachable(lost));
        // Connected, then failed: whatever the restore_command said, not a wait.
        let after = "pg_rewind failed (exit status: 1): pg_rewind: connected to server; \
                     ERROR: archive-get: Connection refused; pg_rewind: error: could not \
                     restore file \"000000010000000000000003\" from archive";
        assert!(!source_unreachable(after));
        let failed = "pg_rewind failed (exit status: 1): pg_rewind: fatal: could not find common ancestor of the source and target cluster's timelines";
        assert!(!source_unreachable(failed));
    }
}
