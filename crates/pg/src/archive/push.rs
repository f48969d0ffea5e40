//! Copying one file into the archive and back out, crash-safe.

use super::valid_wal_name;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Copied,
    /// The archive already had this file, byte for byte (a retry, or another member).
    AlreadyThere,
    /// The archive has another file under this name, and this one is WAL that the cluster's
    /// history left behind (a former primary's, past its timeline's switch point): it is
    /// kept beside it under this name, and the archive's own file stays.
    KeptAside(PathBuf),
}

/// What a fetch found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Copied,
    /// The archive has no such file (PostgreSQL asks for files that may not exist).
    NotThere,
}

/// A temporary file this old is left over from a push that died (a power cut, kill -9).
const STALE_TEMP: Duration = Duration::from_secs(600);

/// Archive `src` (PostgreSQL's `%p`, relative to the data directory it runs in) as
/// `dir/name` (`%f`): copy to a temporary name, fsync, link to the final name (which never
/// replaces a file), fsync the directory. A crash at any point leaves either no file under
/// the final name or the whole one.
pub fn push(dir: &Path, src: &Path, name: &str) -> Result<Pushed> {
    if !valid_wal_name(name) {
        bail!("{name:?} is not a WAL file name: refusing to archive it");
    }
    let dest = dir.join(name);
    if dest.exists() {
        return already_there(src, &dest);
    }
    remove_stale_temps(dir, name);
    // Unique across the hosts sharing an archive, too.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{name}.pgbaton-tmp.{}.{nanos}",
        std::process::id()
    ));
    if let Err(e) = copy_synced(src, &tmp) {
        let _ = std::fs::remove_file(&tmp); // a full disk must not fill up further
        return Err(e).with_context(|| format!("copy {} to {}", src.display(), tmp.display()));
    }
    let linked = std::fs::hard_link(&tmp, &dest);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        // Another member pushed the same name meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return already_there(src, &dest)
        }
        Err(e) => {
            return Err(e).with_context(|| format!("link {} into the archive", dest.display()))
        }
    }
    sync_dir(dir)?;
    Ok(Pushed::Copied)
}

fn already_there(src: &Path, dest: &Path) -> Result<Pushed> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    if same_content(src, dest)? {
        // Another push may have been ended between its link and its fsyncs: make the file
        // durable before saying it is archived.
        File::open(dest)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", dest.display()))?;
        sync_dir(dir)?;
        return Ok(Pushed::AlreadyThere);
    }
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    if let Some(switch) = past_switch_point(src, dest, &name)? {
        // A former primary's segment that holds WAL past the point where its timeline
        // ended (it was written after the failover, or not streamed before it): it is on
        // no timeline recovery follows, so it must not stop the archiver; it is not thrown
        // away either.
        let aside = dir.join(format!(
            "{name}.diverged.{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        copy_synced(src, &aside)
            .with_context(|| format!("keep {} as {}", src.display(), aside.display()))?;
        sync_dir(dir)?;
        eprintln!(
            "pgbaton wal-push: {name} differs from the archived one, and its timeline ended at \
             {switch} (a later timeline's history says so): it holds WAL of a former primary \
             that the failover left behind. The archive keeps its own {name}; this one is kept \
             as {}",
            aside.display()
        );
        return Ok(Pushed::KeptAside(aside));
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    bail!(
        "the archive already has {} ({} bytes) and it differs from {} ({} bytes): not \
         overwriting it. Two clusters (or a diverged member) archive into the same directory, \
         or the archived file is damaged: compare them, and point each cluster at its own \
         archive",
        dest.display(),
        size(dest),
        src.display(),
        size(src)
    )
}

/// When `src` (segment `name`, archived as `dest` with other content) holds WAL past the
/// point where its timeline ended, according to the newest timeline's history file in the
/// archive: that switch point. Only for the same cluster (the system identifier in both
/// files' first page header matches) and, for the segment holding the switch point, only
/// when both agree up to it: WAL before a switch point is shared by every timeline after it,
/// so a difference there is a real conflict.
pub(crate) fn past_switch_point(src: &Path, dest: &Path, name: &str) -> Result<Option<String>> {
    let seg_size = std::fs::metadata(src)?.len();
    if !seg_size.is_power_of_two() || std::fs::metadata(dest)?.len() != seg_size {
        return Ok(None);
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let Some((tli, segno)) = super::check::parse_segment(name, seg_size) else {
        return Ok(None);
    };
    // The pushing member's own pg_wal counts too: a former primary rewound onto the new
    // timeline has its history file there (pg_rewind copied it) and may push its old
    // segment before the new primary's archiver has archived that history.
    let own = src
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(history) = newest_history(&[dir, own])? else {
        return Ok(None);
    };
    let Some(&(_, switch)) = history.iter().find(|(t, _)| *t == tli) else {
        return Ok(None);
    };
    let start = segno.saturating_mul(seg_size);
    if start.saturating_add(seg_size) <= switch {
        return Ok(None); // wholly before the switch point: shared WAL
    }
    let shared = switch.saturating_sub(start) as usize;
    let (a, b) = (head(src, shared.max(32))?, head(dest, shared.max(32))?);
    // XLogLongPageHeaderData: xlp_sysid at bytes 24..32 of a segment's first page.
    if a.len() < 32 || b.len() < 32 || a[24..32] != b[24..32] || a[..shared] != b[..shared] {
        return Ok(None);
    }
    Ok(Some(format!(
        "{:X}/{:X}",
        switch >> 32,
        switch & 0xFFFF_FFFF
    )))
}

/// The history in the newest `.history` file found in `dirs` (it lists every ancestor).
fn newest_history(dirs: &[&Path]) -> Result<Option<Vec<(u32, u64)>>> {
    let mut newest: Option<(u32, std::path::PathBuf)> = None;
    for dir in dirs {
        for e in std::fs::read_dir(dir)?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let Some(t) = n
                .strip_suffix(".history")
                .and_then(|t| u32::from_str_radix(t, 16).ok())
            else {
                continue;
            };
            if newest.as_ref().is_none_or(|(best, _)| t > *best) {
                newest = Some((t, e.path()));
            }
        }
    }
    let Some((_, path)) = newest else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path)?;
    Ok(super::check::parse_history(&text).ok())
}

/// The first `n` bytes of a file (fewer when it is shorter).
fn head(p: &Path, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let got = read_full(&mut File::open(p)?, &mut buf)?;
    buf.truncate(got);
    Ok(buf)
}

/// Copy `archived` (`dir/name`, PostgreSQL's `%f`) to `dest` (`%p`): to a temporary name
/// beside it, then renamed, so PostgreSQL never reads half a file.
pub fn fetch(dir: &Path, name: &str, dest: &Path) -> Result<Fetched> {
    if !valid_wal_name(name) {
        bail!("{name:?} is not a WAL file name: refusing to fetch it");
    }
    let src = dir.join(name);
    // An archive that cannot be read is an error that says so, not "not archived".
    if !src
        .try_exists()
        .with_context(|| format!("look for {} in the archive", src.display()))?
    {
        return Ok(Fetched::NotThere);
    }
    let file_name = dest
        .file_name()
        .with_context(|| format!("{} names no file", dest.display()))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".pgbaton-tmp");
    let tmp = dest.with_file_name(tmp_name);
    std::fs::copy(&src, &tmp)
        .with_context(|| format!("copy {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("rename {} to {}", tmp.display(), dest.display()))?;
    Ok(Fetched::Copied)
}

fn copy_synced(src: &Path, tmp: &Path) -> Result<()> {
    let mut from = File::open(src)?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    std::io::copy(&mut from, &mut to)?;
    to.flush()?;
    to.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync the archive directory {}", dir.display()))
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| File::open(p).with_context(|| format!("read {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Temporary files of earlier pushes of `name` that died long ago. Young ones are left: they
/// may belong to another member pushing the same segment right now.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.pgbaton-tmp.");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let stale: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > STALE_TEMP)
        })
        .map(|e| e.path())
        .collect();
    for p in stale {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000001";

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let archive = t.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let src = t.path().join("seg");
        std::fs::write(&src, vec![7u8; 100_000]).unwrap();
        (t, archive, src)
    }

    #[test]
    fn a_push_copies_and_a_second_identical_push_succeeds() {
        let (_t, archive, src) = setup();
        assert_eq!(push(&archive, &src, SEG).unwrap(), Pushed::Copied);
        assert_eq!(
            std::fs::read(archive.join(SEG)).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(push(&archive, &src, SEG).unwrap(), Pushed::AlreadyThere);
        // Only the file: no temporary left beside it.
        assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 1);
    }

    #[test]
    fn a_different_file_under_an_archived_name_is_refused_and_kept() {
        let (t, archive, src) = setup();
        push(&archive, &src, SEG).unwrap();
        let other = t.path().join("other");
        let mut bytes = vec![7u8; 100_000];
        bytes[99_999] = 8;
        std::fs::write(&other, &bytes).unwrap();
        let e = push(&archive, &other, SEG).unwrap_err().to_string();
        assert!(
            e.contains("differs") && e.contains(SEG) && e.contains("other"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(archive.join(SEG)).unwrap(),
            vec![7u8; 100_000]
        );
    }

    /// Issue 11: a rewound former primary that became primary again archived its own copy
    /// of the segment its old timeline ended in; the archive had the standby's, and the
    /// archiver stopped on it for good.
    #[test]
    fn a_former_primarys_segment_past_its_timelines_end_is_kept_aside_not_refused() {
        let t = tempfile::tempdir().unwrap();
        let archive = t.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let seg_size = 1 << 20;
        // Timeline 1 ended at 0/650060, in segment 6 (1 MB segments).
        std::fs::write(archive.join("00000002.history"), "1\t0/650060\tx\n").unwrap();
        let (six, five) = ("000000010000000000000006", "000000010000000000000005");
        let archived = t.path().join("archived");
        std::fs::write(&archived, vec![1u8; seg_size]).unwrap();
        push(&archive, &archived, six).unwrap();
        push(&archive, &archived, five).unwrap();
        // The former primary's copy: the same WAL up to the switch point (0x50060 into the
        // segment), its own after it.
        let write = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = vec![1u8; seg_size];
            b[0x50060..].fill(2);
            f(&mut b);
            let p = t.path().join(name);
            std::fs::write(&p, &b).unwrap();
            (p, b)
        };
        // Another cluster's (its system identifier differs), or one that differs before the
        // switch point: real conflicts, refused.
        let (other, _) = write("other", &|b| b[24] = 9);
        assert!(push(&archive, &other, six).is_err());
        let (early, _) = write("early", &|b| b[100] = 9);
        assert!(push(&archive, &early, six).is_err());
        let (mine, bytes) = write("mine", &|_| {});
        match push(&archive, &mine, six).unwrap() {
            Pushed::KeptAside(p) => assert_eq!(std::fs::read(p).unwrap(), bytes),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read(archive.join(six)).unwrap(),
            vec![1u8; seg_size]
        );
        // Before the switch point, timelines share their WAL: a difference there is refused.
        assert!(push(&archive, &mine, five).is_err());
        // The kept file is no WAL name: recovery and the check never take it for a segment.
        let c = super::super::check(&archive, Some(seg_size as u64)).unwrap();
        assert_eq!(c.present, 1);
    }

    /// A former primary rewound onto timeline 2 pushes its old segment before the new
    /// primary archived 00000002.history: its own pg_wal has that history (pg_rewind copied
    /// it), so the push keeps its segment aside instead of failing (a failed push stops the
    /// archiver for a while and counts in pg_stat_archiver for good).
    #[test]
    fn the_history_in_the_pushers_own_pg_wal_is_enough() {
        let t = tempfile::tempdir().unwrap();
        let (archive, pg_wal) = (t.path().join("archive"), t.path().join("pg_wal"));
        std::fs::create_dir(&archive).unwrap();
        std::fs::create_dir(&pg_wal).unwrap();
        let seg_size = 1 << 20;
        let six = "000000010000000000000006";
        std::fs::write(archive.join(six), vec![1u8; seg_size]).unwrap();
        let mut mine = vec![1u8; seg_size];
        mine[0x50060..].fill(2);
        std::fs::write(pg_wal.join(six), &mine).unwrap();
        // Without a history anywhere: a conflict, refused.
        assert!(push(&archive, &pg_wal.join(six), six).is_err());
        std::fs::write(pg_wal.join("00000002.history"), "1\t0/650060\tx\n").unwrap();
        match push(&archive, &pg_wal.join(six), six).unwrap() {
            Pushed::KeptAside(p) => assert_eq!(std::fs::read(p).unwrap(), mine),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read(archive.join(six)).unwrap(),
            vec![1u8; seg_size]
        );
    }

    #[test]
    fn names_that_are_not_wal_are_refused() {
        let (_t, archive, src) = setup();
        for bad in ["../escape", "x", ""] {
            assert!(push(&archive, &src, bad).is_err());
            assert!(fetch(&archive, bad, &src).is_err());
        }
    }

    #[test]
    fn a_missing_source_is_an_error_and_leaves_nothing() {
        let (t, archive, _src) = setup();
        assert!(push(&archive, &t.path().join("nope"), SEG).is_err());
        assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 0);
    }

    #[test]
    fn fetch_copies_what_is_there_and_says_what_is_not() {
        let (t, archive, src) = setup();
        push(&archive, &src, SEG).unwrap();
        let dest = t.path().join("RECOVERYXLOG");
        assert_eq!(fetch(&archive, SEG, &dest).unwrap(), Fetched::Copied);
        assert_eq!(std::fs::read(&dest).unwrap(), vec![7u8; 100_000]);
        assert_eq!(
            fetch(&archive, "00000002.history", &dest).unwrap(),
            Fetched::NotThere
        );
    }

    #[test]
    fn stale_temporaries_go_and_young_ones_stay() {
        let (_t, archive, src) = setup();
        let old = archive.join(format!(".{SEG}.pgbaton-tmp.1"));
        let young = archive.join(format!(".{SEG}.pgbaton-tmp.2"));
        std::fs::write(&old, b"half").unwrap();
        std::fs::write(&young, b"half").unwrap();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        push(&archive, &src, SEG).unwrap();
        assert!(!old.exists());
        assert!(young.exists());
    }
}
