//! The WAL archive in a directory: PostgreSQL's `archive_command` (`pgbaton wal-push`) and
//! `restore_command` (`pgbaton wal-fetch`), and the check that finds holes across timelines.
//!
//! Every member archives (`archive_mode = always`): a standby pushes each segment it
//! receives, so a segment the primary completed but had not archived when it died is still
//! archived by the member that takes over. Pushing a file that is already there with the same
//! content is a success, which is also what lets a new primary archive after a failover (the
//! old `test ! -f && cp` failed there, and the archiver retried that one segment forever while
//! pg_wal grew until the disk was full). A different file under an existing name is an error
//! that names both and is never overwritten.

mod check;
mod push;

pub use check::{
    check, check_listing, parse_history, parse_lsn, segment_size_of, ArchiveCheck, Hole,
};
pub(crate) use push::past_switch_point;
pub use push::{fetch, push, Fetched, Pushed};

/// WAL files waiting for the archiver in `data_dir` (`.ready` status files) and the age in
/// seconds of the oldest.
pub fn waiting(data_dir: &std::path::Path) -> (u64, Option<u64>) {
    let Ok(rd) = std::fs::read_dir(data_dir.join("pg_wal").join("archive_status")) else {
        return (0, None);
    };
    let now = std::time::SystemTime::now();
    let mut n = 0;
    let mut oldest: Option<u64> = None;
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().ends_with(".ready") {
            continue;
        }
        n += 1;
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs());
        oldest = oldest.max(age);
    }
    (n, oldest)
}

/// Is `name` a file name PostgreSQL archives (a segment, `.partial`, `.history`, `.backup`)?
/// Anything else (a path, `..`) is refused before it touches the file system.
pub fn valid_wal_name(name: &str) -> bool {
    let (stem, ext) = match name.split_once('.') {
        Some((s, e)) => (s, Some(e)),
        None => (name, None),
    };
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    match ext {
        None => stem.len() == 24 && hex(stem),
        Some("partial") => stem.len() == 24 && hex(stem),
        Some("history") => stem.len() == 8 && hex(stem),
        // 000000010000000000000002.00000028.backup
        Some(rest) => {
            stem.len() == 24
                && hex(stem)
                && rest
                    .strip_suffix(".backup")
                    .is_some_and(|off| off.len() == 8 && hex(off))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_names() {
        for ok in [
            "000000010000000000000001",
            "000000020000000A000000FF.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert!(valid_wal_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "00000001000000000000001",
            "000000010000000000000001.tmp",
            "00000002.history/..",
            "/etc/passwd",
            "0000000100000000000000GG",
        ] {
            assert!(!valid_wal_name(bad), "{bad}");
        }
    }
}
