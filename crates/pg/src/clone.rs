//! Cloning a standby with pg_basebackup, with progress.
//!
//! The backup goes into a scratch directory beside the data directory and is renamed into
//! place only when complete, so an interrupted clone never leaves a half-written data
//! directory behind. The scratch directory carries a marker file beside it; only a scratch
//! directory with that marker (one pgbaton itself started) is ever removed, and only to
//! retry the clone.

use crate::Binaries;
use anyhow::{bail, Context, Result};
use pgbaton_core::model::Progress;
use pgbaton_core::render::conninfo;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;

/// No output from pg_basebackup for this long: it is considered stuck and stopped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(600);

pub struct CloneSpec<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub passfile: &'a Path,
    pub slot: &'a str,
    pub application_name: &'a str,
    pub data_dir: &'a Path,
    /// Replace an existing data directory once the copy is complete (reinit, asked for by the
    /// operator). Otherwise the data directory must be missing or empty.
    pub replace: bool,
    /// How the connection uses TLS (`sslmode`, `sslrootcert`: `render::ssl_params`).
    pub ssl: &'a [(&'static str, String)],
}

fn scratch_dir(data_dir: &Path) -> PathBuf {
    let mut s = data_dir.as_os_str().to_owned();
    s.push(".pgbaton-clone");
    PathBuf::from(s)
}

fn marker(scratch: &Path) -> PathBuf {
    let mut s = scratch.as_os_str().to_owned();
    s.push(".incomplete");
    PathBuf::from(s)
}

/// Parse the last "done/total kB" of pg_basebackup's progress output.
pub fn parse_progress(chunk: &str) -> Option<Progress> {
    chunk.split(['\r', '\n']).rev().find_map(|line| {
        let (nums, _) = line.trim().split_once(" kB")?;
        let (done, total) = nums.split_once('/')?;
        Some(Progress {
            done_kb: done.trim().parse().ok()?,
            total_kb: total.trim().parse().ok()?,
        })
    })
}

/// Run pg_basebackup from the primary, streaming WAL through the member's slot; publish
/// progress on `progress`. On success the data directory holds the copy (no standby.signal
/// or connection settings yet: the caller writes its own config).
pub async fn clone(
    bins: &Binaries,
    spec: &CloneSpec<'_>,
    progress: &watch::Sender<Option<Progress>>,
) -> Result<()> {
    let scratch = scratch_dir(spec.data_dir);
    let mark = marker(&scratch);
    if scratch.exists() {
        if mark.exists() {
            #[expect(
                clippy::disallowed_methods,
                reason = "an interrupted pgbaton clone, proven by its marker file"
            )]
            tokio::fs::remove_dir_all(&scratch)
                .await
                .with_context(|| format!("remove the incomplete clone {}", scratch.display()))?;
        } else {
            bail!(
                "{} exists and was not made by an interrupted pgbaton clone: move it away",
                scratch.display()
            );
        }
    }
    std::fs::write(
        &mark,
        b"an interrupted pgbaton clone: safe to delete with the directory beside it\n",
    )
    .with_context(|| format!("write {}", mark.display()))?;
    let port = spec.port.to_string();
    let passfile = spec.passfile.to_string_lossy();
    let mut pairs = vec![
        ("host", spec.host),
        ("port", port.as_str()),
        ("user", spec.user),
        ("passfile", &passfile),
        ("application_name", spec.application_name),
        ("connect_timeout", "10"),
    ];
    pairs.extend(spec.ssl.iter().map(|(k, v)| (*k, v.as_str())));
    let dsn = conninfo(&pairs);
    // The primary's agent drops and creates again a slot PostgreSQL invalidated. The fast
    // checkpoint pg_basebackup asks for can be what invalidates it (a member down long
    // enough), and pg_basebackup then finds no slot: the slot made again is fresh, so try
    // again (seen in CI: `a_standby_whose_upstream_recycled_its_wal_says_reinit_and_waits`).
    let mut attempt = 1;
    loop {
        match basebackup(bins, spec, &dsn, &scratch, progress).await {
            Err(e) if attempt < SLOT_ATTEMPTS && slot_missing(&e, spec.slot) => {
                tracing::warn!("{e:#}; trying again in {} s", SLOT_RETRY.as_secs());
                attempt += 1;
                tokio::time::sleep(SLOT_RETRY).await;
            }
            r => break r?,
        }
    }
    // Move the complete copy into place. Without `replace`, only an empty data directory is
    // replaced (remove_dir refuses a non-empty one). With it (reinit, asked for), the old
    // directory is moved aside first and deleted only once the new one is in place.
    let mut old = None;
    if spec.data_dir.exists() {
        if spec.replace {
            let mut aside = spec.data_dir.as_os_str().to_owned();
            aside.push(".pgbaton-old");
            let aside = PathBuf::from(aside);
            if aside.exists() {
                #[expect(
                    clippy::disallowed_methods,
                    reason = "the old data directory of an earlier reinit (asked for) that was interrupted before deleting it"
                )]
                tokio::fs::remove_dir_all(&aside)
                    .await
                    .with_context(|| format!("remove {}", aside.display()))?;
            }
            std::fs::rename(spec.data_dir, &aside)
                .with_context(|| format!("move {} aside", spec.data_dir.display()))?;
            old = Some(aside);
        } else {
            std::fs::remove_dir(spec.data_dir).with_context(|| {
                format!(
                    "replace the empty data directory {}",
                    spec.data_dir.display()
                )
            })?;
        }
    }
    std::fs::rename(&scratch, spec.data_dir)
        .with_context(|| format!("move the clone into {}", spec.data_dir.display()))?;
    let _ = std::fs::remove_file(&mark);
    if let Some(old) = old {
        #[expect(
            clippy::disallowed_methods,
            reason = "the replaced data directory, once its replacement is in place (reinit)"
        )]
        tokio::fs::remove_dir_all(&old)
            .await
            .with_context(|| format!("remove the replaced data directory {}", old.display()))?;
    }
    Ok(())
}

/// How many times a clone is tried when the member's slot is missing on the primary, and how
/// long it waits between tries (the primary's agent makes the slot again within a loop).
const SLOT_ATTEMPTS: u32 = 3;
const SLOT_RETRY: Duration = Duration::from_secs(2);

/// pg_basebackup failed because `slot` does not exist on the primary.
fn slot_missing(e: &anyhow::Error, slot: &str) -> bool {
    format!("{e:#}").contains(&format!("replication slot \"{slot}\" does not exist"))
}

/// One run of pg_basebackup into `scratch` (which it removes itself when it fails).
async fn basebackup(
    bins: &Binaries,
    spec: &CloneSpec<'_>,
    dsn: &str,
    scratch: &Path,
    progress: &watch::Sender<Option<Progress>>,
) -> Result<()> {
    let mut child = Command::new(bins.path("pg_basebackup"))
        .arg("-d")
        .arg(dsn)
        .arg("-D")
        .arg(scratch)
        .args(["-X", "stream", "-c", "fast", "-P", "-w", "-S", spec.slot])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run pg_basebackup")?;
    let mut stderr = child.stderr.take().context("pg_basebackup stderr")?;
    let mut all = String::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(STALL_TIMEOUT, stderr.read(&mut buf)).await {
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "pg_basebackup made no progress for {} s; stopped it",
                    STALL_TIMEOUT.as_secs()
                );
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(p) = parse_progress(&text) {
                    progress.send_replace(Some(p));
                }
                if all.len() < 64 * 1024 {
                    all.push_str(&text);
                }
            }
            Ok(Err(e)) => return Err(e).context("read pg_basebackup output"),
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .context("pg_basebackup did not exit")??;
    if !status.success() {
        let msg: Vec<&str> = all
            .split(['\r', '\n'])
            .filter(|l| !l.contains(" kB (") && !l.trim().is_empty())
            .collect();
        bail!("pg_basebackup failed ({status}): {}", msg.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_slot_is_told_from_other_failures() {
        let e = anyhow::anyhow!(
            "pg_basebackup failed (exit status: 1): waiting for checkpoint; pg_basebackup: error: \
             could not send replication command \"START_REPLICATION\": ERROR:  replication slot \
             \"pgbaton_n2\" does not exist"
        );
        assert!(slot_missing(&e, "pgbaton_n2"));
        assert!(!slot_missing(&e, "pgbaton_n3"), "another member's slot");
        let other = anyhow::anyhow!("pg_basebackup failed (exit status: 1): could not connect");
        assert!(!slot_missing(&other, "pgbaton_n2"));
    }

    #[test]
    fn parses_basebackup_progress() {
        let s = "waiting for checkpoint\r    0/22931 kB (0%), 0/1 tablespace\r22941/22941 kB (100%), 1/1 tablespace\n";
        assert_eq!(
            parse_progress(s),
            Some(Progress {
                done_kb: 22941,
                total_kb: 22941
            })
        );
        assert_eq!(parse_progress("nothing here"), None);
        assert_eq!(
            parse_progress(" 12/100 kB (12%), 0/1 tablespace (...base/5/1234)"),
            Some(Progress {
                done_kb: 12,
                total_kb: 100
            })
        );
    }
}
