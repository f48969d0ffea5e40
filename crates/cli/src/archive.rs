//! `pgbaton wal-push`, `wal-fetch` (PostgreSQL's archive and restore commands) and
//! `archive check`.

use anyhow::Result;
use pgbaton_pg::archive::{self, ArchiveCheck, Fetched, Pushed};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// PostgreSQL's archive and restore commands (flattened into the top-level commands).
#[derive(clap::Subcommand)]
pub enum WalCmd {
    /// Archive one WAL file (PostgreSQL's archive_command: `pgbaton wal-push --dir DIR %p %f`):
    /// fsynced, never overwriting; an identical file already archived is a success.
    WalPush {
        /// The archive directory.
        #[arg(long)]
        dir: PathBuf,
        /// The file to archive (%p).
        path: PathBuf,
        /// Its name in the archive (%f).
        name: String,
    },
    /// Archive one WAL file with pgBackRest (PostgreSQL's archive_command with [backup]):
    /// `archive-push` under a lock in the repository, so that members never push at once.
    #[command(hide = true, name = "backrest-push")]
    BackrestPush {
        #[arg(long)]
        bin: PathBuf,
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        stanza: String,
        #[arg(long)]
        lock: PathBuf,
        /// The file to archive (%p).
        path: PathBuf,
    },
    /// Restore one WAL file (restore_command: `pgbaton wal-fetch --dir DIR %f %p`); exits 1
    /// when the archive does not have it.
    WalFetch {
        #[arg(long)]
        dir: PathBuf,
        /// The file's name in the archive (%f).
        name: String,
        /// Where PostgreSQL wants it (%p).
        path: PathBuf,
    },
}

/// Run one: its exit code is what PostgreSQL sees.
pub fn run(cmd: WalCmd) -> ExitCode {
    match cmd {
        WalCmd::WalPush { dir, path, name } => wal_push(&dir, &path, &name),
        WalCmd::BackrestPush {
            bin,
            config,
            stanza,
            lock,
            path,
        } => backrest_push(&bin, &config, &stanza, &lock, &path),
        WalCmd::WalFetch { dir, name, path } => wal_fetch(&dir, &name, &path),
    }
}

/// archive_command: 0 when the file is in the archive (copied now or already there).
pub fn wal_push(dir: &Path, path: &Path, name: &str) -> ExitCode {
    match archive::push(dir, path, name) {
        // Already there: the normal case on standbys (every member archives what it has).
        Ok(Pushed::Copied | Pushed::AlreadyThere | Pushed::KeptAside(_)) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgbaton wal-push: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// archive_command with pgBackRest: pgBackRest's own exit code (0 too for a former
/// primary's diverged segment, kept aside).
pub fn backrest_push(bin: &Path, conf: &Path, stanza: &str, lock: &Path, wal: &Path) -> ExitCode {
    let spec = pgbaton_pg::backrest_push::PushSpec {
        bin,
        conf,
        stanza,
        lock,
        wal,
    };
    match pgbaton_pg::backrest_push::push_locked(&spec) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("pgbaton backrest-push: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// restore_command: 0 when copied; 1 when the archive does not have it or it cannot be read
/// (PostgreSQL then tries streaming; a code above 125 would abort its recovery).
pub fn wal_fetch(dir: &Path, name: &str, path: &Path) -> ExitCode {
    match archive::fetch(dir, name, path) {
        Ok(Fetched::Copied) => ExitCode::SUCCESS,
        Ok(Fetched::NotThere) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pgbaton wal-fetch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `archive check`: exit 0 when the archive is whole, 1 when something is missing.
pub fn check(dir: &Path, json: bool) -> Result<ExitCode> {
    let c = archive::check(dir, None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", describe(dir, &c));
    }
    Ok(if c.whole() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `archive check --repo R --stanza S`: the same over a pgBackRest repository (read only,
/// with a config of its own in a scratch directory). Segments of 16 MiB, the default.
pub fn check_repo(bin: &Path, repo: &Path, stanza: &str, json: bool) -> Result<ExitCode> {
    if !repo.is_dir() {
        anyhow::bail!(
            "{} is not a directory: name the pgBackRest repository (backup.repo_path)",
            repo.display()
        );
    }
    let scratch = tempfile::tempdir()?;
    let conf = scratch.path().join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\nlog-level-file=off\nlog-level-console=warn\nlock-path={}\n",
            repo.display(),
            scratch.path().display()
        ),
    )?;
    let br = pgbaton_pg::backrest::BackRest {
        bin: bin.to_path_buf(),
        conf,
        stanza: stanza.to_string(),
        repo: repo.to_path_buf(),
        timeout: pgbaton_pg::backrest::DEFAULT_TIMEOUT,
    };
    let c = crate::runtime()?.block_on(br.archive_check(16 << 20))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        let place = format!("stanza {stanza} in {}", repo.display());
        print!("{}", describe(Path::new(&place), &c));
    }
    Ok(if c.whole() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn describe(dir: &Path, c: &ArchiveCheck) -> String {
    let mut s = String::new();
    let (Some(first), Some(last)) = (&c.first, &c.last) else {
        s += &format!("{}: no WAL segment archived yet\n", dir.display());
        return s;
    };
    let tls: Vec<String> = c.timelines.iter().map(|t| t.to_string()).collect();
    s += &format!(
        "{}: timelines {}, {first} .. {last}: {} segments present, {} missing\n",
        dir.display(),
        tls.join(" -> "),
        c.present,
        c.missing()
    );
    for h in &c.holes {
        if h.count == 1 {
            s += &format!("  missing on timeline {}: {}\n", h.timeline, h.first);
        } else {
            s += &format!(
                "  missing on timeline {}: {} .. {} ({} segments)\n",
                h.timeline, h.first, h.last, h.count
            );
        }
    }
    for t in &c.missing_history {
        s += &format!("  missing: {t:08X}.history (timeline {t}'s history)\n");
    }
    for n in &c.wrong_size {
        s += &format!(
            "  {n} is not {} bytes long (cut short?): it counts as missing\n",
            c.segment_size
        );
    }
    if c.whole() {
        s += "  no hole: every segment recovery needs is there\n";
    }
    s
}
