//! Holes in a WAL archive, across timelines.
//!
//! Recovery reads segment `s` from the newest timeline of the history that had begun by `s`
//! (timeline `t+1` begins in the segment holding `t`'s switch point, which it copies). So
//! the archive is whole when, from its first segment to the newest timeline's last, each
//! segment exists on the timeline that recovery would read it from, and every timeline after
//! the first has its `.history` file. Extra files (a former primary's WAL past the switch
//! point, `.partial` segments) are fine. A segment file whose size is not the segment size
//! (a copy cut short by a disk fault) is no segment: it counts as missing, and is named.

use super::valid_wal_name;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What `pgbaton archive check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveCheck {
    pub segment_size: u64,
    /// The timelines of the history that recovery follows, oldest first.
    pub timelines: Vec<u32>,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Segments present on the timeline recovery reads them from.
    pub present: u64,
    pub holes: Vec<Hole>,
    /// Timelines after the first whose `.history` file is not archived.
    pub missing_history: Vec<u32>,
    /// Segment files whose size is not the segment size (counted among the holes).
    pub wrong_size: Vec<String>,
}

impl ArchiveCheck {
    pub fn whole(&self) -> bool {
        self.holes.is_empty() && self.missing_history.is_empty() && self.wrong_size.is_empty()
    }

    /// How many segments are missing.
    pub fn missing(&self) -> u64 {
        self.holes.iter().map(|h| h.count).sum()
    }
}

/// A run of missing segments on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hole {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub count: u64,
}

/// The WAL segment size of an archive: the largest size of its segment files that is a
/// segment size (a file cut short is smaller).
pub fn segment_size_of(dir: &Path) -> Result<Option<u64>> {
    let mut size = None;
    for name in names(dir)?.iter().filter(|n| n.len() == 24) {
        let len = std::fs::metadata(dir.join(name))?.len();
        if len.is_power_of_two() && size.is_none_or(|s| len > s) {
            size = Some(len);
        }
    }
    Ok(size)
}

fn names(dir: &Path) -> Result<Vec<String>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("read the WAL archive directory {}", dir.display()))?;
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| valid_wal_name(n))
        .collect();
    v.sort();
    Ok(v)
}

fn segments_per_id(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

pub(super) fn parse_segment(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, log * segments_per_id(seg_size) + seg))
}

pub fn segment_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per = segments_per_id(seg_size);
    format!("{tli:08X}{:08X}{:08X}", segno / per, segno % per)
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The history of timeline `tli` from its `.history` text: (timeline, switch point) for each
/// ancestor, oldest first.
pub fn parse_history(text: &str) -> Result<Vec<(u32, u64)>> {
    let mut v = vec![];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(t), Some(lsn)) = (f.next(), f.next()) else {
            bail!("malformed history line {line:?}");
        };
        let t: u32 = t
            .parse()
            .with_context(|| format!("malformed history line {line:?}"))?;
        let lsn = parse_lsn(lsn).with_context(|| format!("malformed history line {line:?}"))?;
        v.push((t, lsn));
    }
    Ok(v)
}

/// Check the archive in `dir`. `seg_size`: the cluster's WAL segment size (from
/// pg_controldata); `None` takes it from the archive itself (16 MiB when it has no segment).
pub fn check(dir: &Path, seg_size: Option<u64>) -> Result<ArchiveCheck> {
    let seg_size = match seg_size {
        Some(s) => s,
        None => segment_size_of(dir)?.unwrap_or(16 << 20),
    };
    let mut files = vec![];
    for n in names(dir)? {
        let path = dir.join(&n);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("read the size of {}", path.display()))?
            .len();
        files.push((n, Some(len)));
    }
    check_listing(&files, seg_size, &mut |name| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    })
}

/// The same check over an archive's listing: WAL file names with their sizes (`None`: the
/// archive vouches for the file, as pgBackRest's repository does with its checksums), and
/// how to read a `.history` file by name.
pub fn check_listing(
    files: &[(String, Option<u64>)],
    seg_size: u64,
    read_history: &mut dyn FnMut(&str) -> Result<String>,
) -> Result<ArchiveCheck> {
    if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
        bail!("{seg_size} bytes is not a WAL segment size (a power of two, 1 MB to 1 GB)");
    }
    let all: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    let mut segments: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut wrong_size = vec![];
    for (n, len) in files {
        let Some(s) = parse_segment(n, seg_size) else {
            continue;
        };
        if len.is_none_or(|l| l == seg_size) {
            segments.insert(s);
        } else {
            wrong_size.push(n.clone());
        }
    }
    let histories: BTreeSet<u32> = all
        .iter()
        .filter_map(|n| n.strip_suffix(".history"))
        .filter_map(|t| u32::from_str_radix(t, 16).ok())
        .collect();
    let newest = segments
        .iter()
        .map(|(t, _)| *t)
        .chain(histories.iter().copied())
        .max();
    let Some(newest) = newest else {
        return Ok(ArchiveCheck {
            segment_size: seg_size,
            timelines: vec![],
            first: None,
            last: None,
            present: 0,
            holes: vec![],
            missing_history: vec![],
            wrong_size,
        });
    };
    // Where each timeline of the newest one's history begins (a segment number).
    let mut begins: BTreeMap<u32, u64> = BTreeMap::new();
    let mut missing_history = vec![];
    if histories.contains(&newest) {
        let name = format!("{newest:08X}.history");
        let text = read_history(&name)?;
        let history = parse_history(&text).with_context(|| format!("in {name}"))?;
        let mut begin = 0;
        for (t, switch) in &history {
            begins.insert(*t, begin);
            begin = switch / seg_size;
            if *t > 1 && !histories.contains(t) {
                missing_history.push(*t);
            }
        }
        begins.insert(newest, begin);
    } else {
        if newest > 1 {
            missing_history.push(newest);
        }
        // Without the history, assume each timeline seen begins at its first segment.
        for (t, s) in &segments {
            begins.entry(*t).or_insert(*s);
        }
    }
    // The timeline recovery reads segment `s` from.
    let timeline_of = |s: u64| {
        begins
            .iter()
            .filter(|(_, b)| **b <= s)
            .map(|(t, _)| *t)
            .max()
    };
    let ours: Vec<u64> = segments
        .iter()
        .filter(|(t, s)| timeline_of(*s) == Some(*t))
        .map(|(_, s)| *s)
        .collect();
    let (Some(&start), Some(&end)) = (ours.iter().min(), ours.iter().max()) else {
        return Ok(ArchiveCheck {
            segment_size: seg_size,
            timelines: begins.keys().copied().collect(),
            first: None,
            last: None,
            present: 0,
            holes: vec![],
            missing_history,
            wrong_size,
        });
    };
    // Runs of missing segments: (timeline, first, last).
    let mut runs: Vec<(u32, u64, u64)> = vec![];
    for s in start..=end {
        let Some(t) = timeline_of(s) else { continue };
        if segments.contains(&(t, s)) {
            continue;
        }
        match runs.last_mut() {
            Some((rt, _, last)) if *rt == t && *last + 1 == s => *last = s,
            _ => runs.push((t, s, s)),
        }
    }
    let holes = runs
        .into_iter()
        .map(|(t, a, b)| Hole {
            timeline: t,
            first: segment_name(t, a, seg_size),
            last: segment_name(t, b, seg_size),
            count: b - a + 1,
        })
        .collect();
    let first_t = timeline_of(start).unwrap_or(newest);
    let last_t = timeline_of(end).unwrap_or(newest);
    Ok(ArchiveCheck {
        segment_size: seg_size,
        timelines: begins.keys().copied().collect(),
        first: Some(segment_name(first_t, start, seg_size)),
        last: Some(segment_name(last_t, end, seg_size)),
        present: ours.len() as u64,
        holes,
        missing_history,
        wrong_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    /// An archive with these files; a segment's content is ignored: it is made a (sparse)
    /// whole segment.
    fn archive(files: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = t.path().join(name);
            if name.len() == 24 {
                std::fs::File::create(&path).unwrap().set_len(MB16).unwrap();
            } else {
                std::fs::write(path, content).unwrap();
            }
        }
        t
    }

    #[test]
    fn a_segment_cut_short_is_missing_and_named() {
        let names: Vec<String> = [1, 2, 3].iter().map(|s| seg(1, *s)).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let a = archive(&files);
        std::fs::File::create(a.path().join(seg(1, 2)))
            .unwrap()
            .set_len(MB16 / 2)
            .unwrap();
        for size in [Some(MB16), None] {
            let c = check(a.path(), size).unwrap();
            assert_eq!(
                c.segment_size, MB16,
                "the size is not taken from the short file"
            );
            assert!(!c.whole());
            assert_eq!(c.wrong_size, vec![seg(1, 2)]);
            assert_eq!(c.missing(), 1);
            assert_eq!(c.present, 2);
        }
    }

    fn seg(tli: u32, segno: u64) -> String {
        segment_name(tli, segno, MB16)
    }

    #[test]
    fn names_and_numbers_round_trip_across_a_log_id() {
        assert_eq!(seg(1, 255), "0000000100000000000000FF");
        assert_eq!(seg(2, 256), "000000020000000100000000");
        assert_eq!(
            parse_segment("000000020000000100000000", MB16),
            Some((2, 256))
        );
        assert_eq!(parse_lsn("1/2A000028"), Some(0x1_2A00_0028));
    }

    #[test]
    fn an_empty_archive_is_whole() {
        let a = archive(&[]);
        let c = check(a.path(), Some(MB16)).unwrap();
        assert!(c.whole());
        assert_eq!(c.present, 0);
    }

    #[test]
    fn a_gap_on_one_timeline_is_a_hole_with_its_names() {
        let names: Vec<String> = [1, 2, 5, 6].iter().map(|s| seg(1, *s)).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let a = archive(&files);
        let c = check(a.path(), Some(MB16)).unwrap();
        assert_eq!(
            c.holes,
            vec![Hole {
                timeline: 1,
                first: seg(1, 3),
                last: seg(1, 4),
                count: 2
            }]
        );
        assert_eq!(c.present, 4);
        assert_eq!(c.missing(), 2);
    }

    /// After a failover at 0/5000060 (segment 5): timeline 1 to segment 4, timeline 2 from
    /// segment 5 on. Timeline 1's segment 5 (partial, or a former primary's diverged WAL)
    /// is not needed.
    #[test]
    fn timelines_switch_where_the_history_says() {
        let (s1, s2, s3, s4, s5, s6) = (
            seg(1, 3),
            seg(1, 4),
            seg(1, 5),
            seg(2, 5),
            seg(2, 6),
            seg(2, 7),
        );
        let p = format!("{s3}.partial");
        let hist = "1\t0/5000060\tno recovery target specified\n";
        let a = archive(&[
            (&s1, "x"),
            (&s2, "x"),
            (&p, "x"),
            (&s4, "x"),
            (&s5, "x"),
            (&s6, "x"),
            ("00000002.history", hist),
        ]);
        let c = check(a.path(), Some(MB16)).unwrap();
        assert!(c.whole(), "{c:?}");
        assert_eq!(c.timelines, vec![1, 2]);
        assert_eq!(c.first.as_deref(), Some(s1.as_str()));
        assert_eq!(c.last.as_deref(), Some(s6.as_str()));
        assert_eq!(c.present, 5);
        // Without timeline 1's last whole segment, that is a hole; without the new
        // timeline's first, too.
        std::fs::remove_file(a.path().join(&s2)).unwrap();
        std::fs::remove_file(a.path().join(&s4)).unwrap();
        let c = check(a.path(), Some(MB16)).unwrap();
        let holes: Vec<(u32, String)> = c
            .holes
            .iter()
            .map(|h| (h.timeline, h.first.clone()))
            .collect();
        assert_eq!(holes, vec![(1, s2.clone()), (2, s4.clone())]);
    }

    #[test]
    fn a_missing_history_file_is_reported() {
        let a = archive(&[(&seg(1, 1), "x"), (&seg(2, 2), "x"), (&seg(2, 3), "x")]);
        let c = check(a.path(), Some(MB16)).unwrap();
        assert_eq!(c.missing_history, vec![2]);
        assert!(!c.whole());
        // Three timelines, the middle history lost: the newest names its ancestors.
        let hist = "1\t0/2000000\tx\n2\t0/3000000\tx\n";
        let a = archive(&[
            (&seg(1, 1), "x"),
            (&seg(2, 2), "x"),
            (&seg(3, 3), "x"),
            ("00000003.history", hist),
        ]);
        let c = check(a.path(), Some(MB16)).unwrap();
        assert_eq!(c.missing_history, vec![2]);
        assert!(c.holes.is_empty(), "{c:?}");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let a = archive(&[("00000002.history", "garbage line\n"), (&seg(2, 1), "x")]);
        let e = format!("{:#}", check(a.path(), Some(MB16)).unwrap_err());
        assert!(
            e.contains("00000002.history") && e.contains("malformed"),
            "{e}"
        );
        assert!(check(a.path(), Some(1000)).is_err());
        let e = format!(
            "{:#}",
            check(Path::new("/nonexistent/archive"), None).unwrap_err()
        );
        assert!(e.contains("/nonexistent/archive"), "{e}");
    }
}
