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

/// What `pg_controldata` said last, per data directory, and the identity of the
/// `global/pg_control` it read (inode, size, modification time): PostgreSQL rewrites that
/// file at every checkpoint and state change, so while it is the same file unchanged, its
/// answer is too. The agent looks twice a loop; running the program each time was most
/// of an idle agent's CPU.
type Seen = (u64, u64, std::time::SystemTime);
static LAST: std::sync::Mutex<Option<HashMap<std::path::PathBuf, (Seen, ControlData)>>> =
    std::sync::Mutex::new(None);

fn control_file_identity(dir: &Path) -> Option<Seen> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir.join("global/pg_control")).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// Run `pg_controldata` (works while PostgreSQL is down), or give its last answer for the
/// same, unchanged control file.
pub fn controldata(bins: &Binaries, dir: &Path) -> Result<ControlData> {
    let before = control_file_identity(dir);
    if let Some(seen) = before {
        let last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, cd)) = last.as_ref().and_then(|m| m.get(dir)) {
            if *s == seen {
                return Ok(cd.clone());
            }
        }
    }
    let cd = run_controldata(bins, dir)?;
    // Kept only when the file had not changed for a second before the program read it and
    // did not change while it did: a later write then has a later modification time even
    // on a file system whose clock ticks coarsely.
    let settled = |s: &Seen| {
        s.2.elapsed()
            .is_ok_and(|age| age >= std::time::Duration::from_secs(1))
            && control_file_identity(dir) == Some(*s)
    };
    if let Some(seen) = before.filter(settled) {
        LAST.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(dir.to_path_buf(), (seen, cd.clone()));
    }
    Ok(cd)
}

fn run_controldata(bins: &Binaries, dir: &Path) -> Result<ControlData> {
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

    /// `pg_controldata` runs again only when the control file changed (or changed less
    /// than a second before it was read): a fake program counts its runs.
    #[test]
    fn controldata_runs_again_only_for_a_changed_control_file() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let runs = t.path().join("runs");
        let script = format!(
            "#!/bin/sh\necho run >> {}\necho 'Database system identifier: 42'\n\
             echo \"Latest checkpoint's TimeLineID: $(cat \"$2/global/pg_control\")\"\n",
            runs.display()
        );
        std::fs::write(bin.join("pg_controldata"), script).unwrap();
        std::fs::set_permissions(bin.join("pg_controldata"), PermissionsExt::from_mode(0o755))
            .unwrap();
        let bins = Binaries { dir: bin };
        let data = t.path().join("data");
        std::fs::create_dir_all(data.join("global")).unwrap();
        let control = data.join("global/pg_control");
        let age = |secs_ago: u64| {
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(secs_ago);
            std::fs::File::options()
                .write(true)
                .open(&control)
                .unwrap()
                .set_modified(when)
                .unwrap();
        };
        let count = || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count()
        };
        std::fs::write(&control, "1").unwrap();
        // Just written: not kept.
        assert_eq!(controldata(&bins, &data).unwrap().timeline, Some(1));
        assert_eq!(controldata(&bins, &data).unwrap().timeline, Some(1));
        assert_eq!(count(), 2);
        // Settled: kept.
        age(10);
        controldata(&bins, &data).unwrap();
        assert_eq!(controldata(&bins, &data).unwrap().timeline, Some(1));
        assert_eq!(count(), 3);
        // Rewritten (a new timeline): read again.
        std::fs::write(&control, "2").unwrap();
        age(5);
        assert_eq!(controldata(&bins, &data).unwrap().timeline, Some(2));
        assert_eq!(count(), 4);
    }
}
