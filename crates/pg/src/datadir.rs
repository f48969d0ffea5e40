//! Looking at a data directory without starting anything.

use crate::Binaries;
use anyhow::{bail, Context, Result};
use pgbaton_core::decide::DataDir;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// What `pg_controldata` says, the parts pgbaton uses.
#[derive(Clone, Debug, Default)]
pub struct ControlData {
    pub system_id: String,
    pub timeline: Option<u32>,
    /// "in production", "shut down", "in archive recovery", "shut down in recovery", ...
    pub state: String,
    pub checkpoint_lsn: Option<String>,
}

/// Classify the directory: missing/empty, a PostgreSQL data directory, or something else.
pub fn inspect(bins: &Binaries, dir: &Path) -> Result<DataDir> {
    inspect_with_timeline(bins, dir).map(|(d, _)| d)
}

/// [`inspect`], and the timeline of the latest checkpoint when it is a data directory.
pub fn inspect_with_timeline(bins: &Binaries, dir: &Path) -> Result<(DataDir, Option<u32>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((DataDir::Empty, None)),
        Err(e) => return Err(e).with_context(|| format!("read data directory {}", dir.display())),
    };
    if entries.is_empty() {
        return Ok((DataDir::Empty, None));
    }
    if !dir.join("PG_VERSION").is_file() || !dir.join("global/pg_control").is_file() {
        let mut some = entries.clone();
        some.sort();
        some.truncate(5);
        return Ok((
            DataDir::Foreign(format!("it holds {}", some.join(", "))),
            None,
        ));
    }
    let cd = controldata(bins, dir)?;
    Ok((
        DataDir::Initialized {
            system_id: cd.system_id,
            standby: dir.join("standby.signal").exists(),
        },
        cd.timeline,
    ))
}

/// Run `pg_controldata` (works while PostgreSQL is down).
pub fn controldata(bins: &Binaries, dir: &Path) -> Result<ControlData> {
    let out = Command::new(bins.path("pg_controldata"))
        .arg("-D")
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .context("run pg_controldata")?;
    if !out.status.success() {
        bail!(
            "pg_controldata {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_controldata(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_controldata(text: &str) -> Result<ControlData> {
    let map: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let system_id = map
        .get("Database system identifier")
        .context("pg_controldata output has no system identifier")?
        .to_string();
    Ok(ControlData {
        system_id,
        timeline: map
            .get("Latest checkpoint's TimeLineID")
            .and_then(|v| v.parse().ok()),
        state: map.get("Database cluster state").unwrap_or(&"").to_string(),
        checkpoint_lsn: map.get("Latest checkpoint location").map(|s| s.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_controldata() {
        let text = "pg_control version number:            1300\n\
                    Database system identifier:           7311870345698675340\n\
                    Database cluster state:               in archive recovery\n\
                    Latest checkpoint location:           0/3000060\n\
                    Latest checkpoint's TimeLineID:       2\n";
        let cd = parse_controldata(text).unwrap();
        assert_eq!(cd.system_id, "7311870345698675340");
        assert_eq!(cd.timeline, Some(2));
        assert_eq!(cd.state, "in archive recovery");
        assert!(parse_controldata("nothing").is_err());
    }

    #[test]
    fn empty_and_foreign_dirs() {
        let bins = Binaries {
            dir: "/nonexistent".into(),
        };
        let t = tempfile::tempdir().unwrap();
        assert_eq!(
            inspect(&bins, &t.path().join("missing")).unwrap(),
            DataDir::Empty
        );
        assert_eq!(inspect(&bins, t.path()).unwrap(), DataDir::Empty);
        std::fs::write(t.path().join("notes.txt"), "x").unwrap();
        assert!(
            matches!(inspect(&bins, t.path()).unwrap(), DataDir::Foreign(s) if s.contains("notes.txt"))
        );
    }
}
