//! pg_rewind: bring a former primary's data directory back onto the new primary's timeline.

use crate::Binaries;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewind {
    /// The data directory had not diverged: it can stream as it is.
    NotNeeded,
    /// It had diverged at `diverged_at` and was rewound.
    Rewound { diverged_at: String },
}

async fn pg_rewind(
    bins: &Binaries,
    data_dir: &Path,
    source: &str,
    dry_run: bool,
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

/// The WAL location where the servers diverged, from pg_rewind's output.
pub fn diverged_at(output: &str) -> Option<String> {
    let rest = output.split("servers diverged at WAL location ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// Ask pg_rewind (dry run) whether the data directory diverged from `source`, and rewind it
/// when it did. PostgreSQL must be stopped. `source` is a libpq connection string to the
/// new primary (pg_rewind reads files through SQL functions granted to the replication user).
pub async fn rewind_if_diverged(bins: &Binaries, data_dir: &Path, source: &str) -> Result<Rewind> {
    let dry = pg_rewind(bins, data_dir, source, true).await?;
    if dry.contains("no rewind required") {
        return Ok(Rewind::NotNeeded);
    }
    let real = pg_rewind(bins, data_dir, source, false).await?;
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
}
