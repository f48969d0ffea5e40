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

/// pg_rewind's output says it could not connect to the source server.
pub fn source_unreachable(output: &str) -> bool {
    [
        "could not connect to server",
        "connection to server at",
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
    let real = pg_rewind(bins, data_dir, source, false, restore_target_wal).await?;
    Ok(Rewind::Rewound {
        diverged_at: diverged_at(&real)
            .or_else(|| diverged_at(&dry))
            .unwrap_or_else(|| "?".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let failed = "pg_rewind failed (exit status: 1): pg_rewind: fatal: could not find common ancestor of the source and target cluster's timelines";
        assert!(!source_unreachable(failed));
    }
}
