//! Tests of the synchronous set: parsing, coverage, and a model check that every step the
//! leader plans keeps every acknowledged commit provable.
use super::*;
use crate::model::{MemberStatus, Role};
use std::collections::BTreeSet;

fn names(kind: &str, num: u32, n: &[&str]) -> SyncNames {
    let names = n.iter().map(|s| s.to_string()).collect();
    match kind {
        "FIRST" => SyncNames::First { num, names },
        _ => SyncNames::Any { num, names },
    }
}

fn record(m: &[&str], quorum: u32) -> SyncRecord {
    SyncRecord {
        leader: "p".into(),
        members: m.iter().map(|s| s.to_string()).collect(),
        quorum,
    }
}

#[test]
fn names_are_written_and_read_back() {
    for n in [
        SyncNames::Off,
        names("FIRST", 1, &["n2"]),
        names("ANY", 2, &["n2", "n-3", "n_4"]),
        names("FIRST", 1, &["*"]),
    ] {
        assert_eq!(SyncNames::parse(&n.to_string()), n, "{n}");
    }
    assert_eq!(
        names("ANY", 2, &["a", "b"]).to_string(),
        r#"ANY 2 ("a", "b")"#
    );
    assert_eq!(
        SyncNames::parse("n2, n3"),
        SyncNames::Other("n2, n3".into())
    );
    assert_eq!(SyncNames::parse("  "), SyncNames::Off);
}

#[test]
fn priorities_follow_postgresql() {
    let f = names("FIRST", 1, &["n2", "n3"]);
    assert_eq!(f.priority_of("n3"), 2);
    assert_eq!(f.priority_of("N2"), 1);
    assert_eq!(f.priority_of("n4"), 0);
    assert_eq!(names("ANY", 1, &["n2", "n3"]).priority_of("n3"), 1);
    assert_eq!(names("FIRST", 1, &["*"]).priority_of("x"), 1);
    assert_eq!(SyncNames::Off.priority_of("x"), 0);
}

#[test]
fn coverage() {
    // FIRST 1 (n2): the record {n2} q=1 covers it; {n3} does not.
    let f = names("FIRST", 1, &["n2"]);
    assert!(record(&["n2"], 1).covers(&f));
    assert!(!record(&["n3"], 1).covers(&f));
    // ANY 1 of three: a candidate must see all three.
    let any = names("ANY", 1, &["a", "b", "c"]);
    assert!(record(&["a", "b", "c"], 3).covers(&any));
    assert!(!record(&["a", "b", "c"], 2).covers(&any));
    // ANY 2 of three: two suffice.
    assert!(record(&["a", "b", "c"], 2).covers(&names("ANY", 2, &["a", "b", "c"])));
    // Asynchronous or wildcard: only a blocked record covers it.
    assert!(!record(&["a"], 1).covers(&SyncNames::Off));
    assert!(!record(&["a"], 1).covers(&names("FIRST", 1, &["*"])));
    assert!(record(&["a"], 2).covers(&SyncNames::Off));
    assert!(SyncRecord::blocked("p").is_blocked());
    assert!(
        record(&["a"], 0).is_blocked(),
        "a damaged quorum proves nobody"
    );
}

#[test]
fn for_names_is_exact() {
    let r = SyncRecord::for_names("p", &names("ANY", 2, &["a", "b", "c"]));
    assert_eq!((r.members.len(), r.quorum), (3, 2));
    assert!(SyncRecord::for_names("p", &SyncNames::Off).is_blocked());
    assert!(SyncRecord::for_names("p", &names("FIRST", 2, &["a"])).is_blocked());
}

#[test]
fn proof_rules() {
    let r = record(&["a", "b", "c"], 2);
    let l = |n: u64| Lsn(n);
    assert!(proof_refused(&r, "a", l(10), &[("b".into(), l(9))]).is_none());
    let e = proof_refused(&r, "a", l(10), &[]).unwrap();
    assert!(e.contains("sees 1 of the 2"), "{e}");
    let e = proof_refused(&r, "a", l(10), &[("b".into(), l(11))]).unwrap();
    assert!(e.contains("b of the synchronous set has more WAL"), "{e}");
    let e = proof_refused(&r, "d", l(99), &[("a".into(), l(1)), ("b".into(), l(1))]).unwrap();
    assert!(e.contains("not in the synchronous set"), "{e}");
    let e = proof_refused(&SyncRecord::blocked("p"), "a", l(1), &[]).unwrap();
    assert!(e.contains("proves no standby"), "{e}");
    // Reports of members outside the record do not count.
    let e = proof_refused(&r, "a", l(10), &[("x".into(), l(1))]).unwrap();
    assert!(e.contains("sees 1"), "{e}");
}

fn member(name: &str, nosync: bool) -> MemberState {
    MemberState {
        nosync,
        ..MemberState::sample(name, Role::Standby, MemberStatus::Streaming, 0)
    }
}

fn sender(name: &str, flush: u64) -> WalSender {
    WalSender {
        name: name.into(),
        streaming: true,
        flush: Some(Lsn(flush)),
        priority: 0,
    }
}

fn settings(mode: SyncMode, k: u32, strict: bool) -> SyncSettings {
    SyncSettings {
        mode,
        node_count: k,
        strict,
        max_lag_bytes: Some(100),
    }
}

#[test]
fn target_lists() {
    let members = vec![
        member("p", false),
        member("a", false),
        member("b", false),
        member("z", true),
    ];
    let senders = vec![
        sender("a", 1000),
        sender("b", 990),
        sender("z", 1000),
        sender("c", 1000),
    ];
    let s = settings(SyncMode::On, 1, false);
    let inputs =
        |s: &'_ SyncSettings, names: &'_ SyncNames, senders: &'_ [WalSender]| -> SyncNames {
            target_names(&SyncInputs {
                me: "p",
                settings: s,
                record: None,
                names,
                senders,
                members: &members,
                lsn: Some(Lsn(1000)),
                now_ms: 0,
                fresh_ms: 2_500,
            })
        };
    // nosync (z) and unregistered (c) standbys are never chosen; the most advanced is.
    assert_eq!(
        inputs(&s, &SyncNames::Off, &senders),
        names("FIRST", 1, &["a"])
    );
    // One already synchronous is kept (no churn).
    assert_eq!(
        inputs(&s, &names("FIRST", 1, &["b"]), &senders),
        names("FIRST", 1, &["b"])
    );
    // Too far behind: replaced.
    let lagging = vec![sender("a", 1000), sender("b", 800)];
    assert_eq!(
        inputs(&s, &names("FIRST", 1, &["b"]), &lagging),
        names("FIRST", 1, &["a"])
    );
    let q = settings(SyncMode::Quorum, 1, false);
    assert_eq!(
        inputs(&q, &SyncNames::Off, &senders),
        names("ANY", 1, &["a", "b"])
    );
    // Nobody eligible: asynchronous unless strict.
    assert_eq!(inputs(&s, &names("FIRST", 1, &["a"]), &[]), SyncNames::Off);
    let strict = settings(SyncMode::On, 1, true);
    assert_eq!(
        inputs(&strict, &names("FIRST", 1, &["a"]), &[]),
        names("FIRST", 1, &["a"])
    );
    assert_eq!(
        inputs(&strict, &SyncNames::Off, &[]),
        names("FIRST", 1, &["*"])
    );
    // Strict with fewer than asked: the count stays, commits wait.
    let strict2 = settings(SyncMode::On, 2, true);
    assert_eq!(
        inputs(&strict2, &SyncNames::Off, &[sender("a", 1000)]),
        names("FIRST", 2, &["a"])
    );
}

/// A commit and the standbys known to hold it.
struct Commit {
    holders: BTreeSet<String>,
}

struct Model {
    names: SyncNames,
    record: Option<SyncRecord>,
    commits: Vec<Commit>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The smallest set of standbys that may acknowledge a commit under `names` (chosen
/// adversarially), or `None` when it waits (too few connected).
fn ack_set(names: &SyncNames, up: &[String], rng: &mut Rng) -> Option<BTreeSet<String>> {
    let (num, listed) = match names {
        SyncNames::Off | SyncNames::Other(_) => return Some(BTreeSet::new()),
        SyncNames::First { num, names } | SyncNames::Any { num, names } => (*num as usize, names),
    };
    let mut pool: Vec<String> = up
        .iter()
        .filter(|u| listed.iter().any(|n| n == "*" || n == *u))
        .cloned()
        .collect();
    if pool.len() < num {
        return None;
    }
    let mut out = BTreeSet::new();
    while out.len() < num {
        let i = rng.below(pool.len());
        out.insert(pool.remove(i));
    }
    Some(out)
}

/// Every `quorum` members of the record overlap the holders of every commit.
fn provable(m: &Model) -> Result<(), String> {
    let Some(r) = m.record.as_ref().filter(|r| !r.is_blocked()) else {
        return Ok(());
    };
    for c in &m.commits {
        let inside = r.members.iter().filter(|x| c.holders.contains(*x)).count();
        // A quorum avoiding every holder exists iff the non-holders number `quorum` or more.
        if r.members.len() - inside >= r.quorum as usize {
            return Err(format!(
                "record {r:?} lets a quorum avoid the holders {:?} (list {})",
                c.holders, m.names
            ));
        }
    }
    Ok(())
}

#[test]
fn every_planned_step_keeps_acknowledged_commits_provable() {
    let all = ["a", "b", "c", "d"];
    for seed in 1..400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mode = if seed % 2 == 0 {
            SyncMode::On
        } else {
            SyncMode::Quorum
        };
        let mut s = settings(mode, 1 + (seed % 3) as u32, seed % 5 == 0);
        let members: Vec<MemberState> = std::iter::once(member("p", false))
            .chain(all.iter().map(|n| member(n, false)))
            .collect();
        let mut m = Model {
            names: SyncNames::Off,
            record: None,
            commits: vec![],
        };
        // Commits made before synchronous mode: nobody is proven yet.
        m.commits.push(Commit {
            holders: BTreeSet::new(),
        });
        for _ in 0..60 {
            let up: Vec<String> = all
                .iter()
                .filter(|_| rng.below(4) != 0)
                .map(|s| s.to_string())
                .collect();
            // Some commits under the current list, acknowledged by a minimal set.
            for _ in 0..rng.below(3) {
                if let Some(holders) = ack_set(&m.names, &up, &mut rng) {
                    m.commits.push(Commit { holders });
                }
            }
            // The operator changes the settings at any step (`edit-config`: the leader
            // decides with the new ones at its next loop), off included.
            if rng.below(8) == 0 {
                let mode = [SyncMode::Off, SyncMode::On, SyncMode::Quorum][rng.below(3)];
                s = settings(mode, 1 + rng.below(3) as u32, rng.below(4) == 0);
            }
            let senders: Vec<WalSender> = up.iter().map(|n| sender(n, 1000)).collect();
            let step = plan(&SyncInputs {
                me: "p",
                settings: &s,
                record: m.record.as_ref(),
                names: &m.names,
                senders: &senders,
                members: &members,
                lsn: Some(Lsn(1000)),
                now_ms: 0,
                fresh_ms: 2_500,
            });
            match step {
                None => {}
                Some(SyncStep::Clear) => {
                    assert_eq!(s.mode, SyncMode::Off, "seed {seed}: cleared while on");
                    // Nobody is proven any more: turning synchronous replication off gives
                    // its promise up, as documented.
                    m.record = None;
                }
                Some(SyncStep::Names(n)) => {
                    // Turned off: the list goes last, once the record is gone.
                    if n != SyncNames::Off || s.mode != SyncMode::Off {
                        let r = m.record.as_ref().expect("a record before a list");
                        assert!(r.covers(&n), "seed {seed}: {r:?} does not cover {n}");
                    } else {
                        assert!(
                            m.record.is_none(),
                            "seed {seed}: list off before the record"
                        );
                    }
                    m.names = n;
                }
                Some(SyncStep::Record { record, barrier }) => {
                    if barrier {
                        // The barrier: a commit acknowledged under the current list; its
                        // acknowledgers hold every earlier commit too.
                        let Some(holders) = ack_set(&m.names, &up, &mut rng) else {
                            continue; // it waits: the record is not written
                        };
                        for c in &mut m.commits {
                            c.holders.extend(holders.iter().cloned());
                        }
                        m.commits.push(Commit { holders });
                        assert!(record.covers(&m.names), "seed {seed}");
                    }
                    m.record = Some(record);
                }
            }
            provable(&m).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }
}

#[test]
fn a_listed_standby_reconnecting_stays_while_its_report_is_fresh() {
    let me = member("p", false);
    let mut a = member("a", false);
    a.upstream = Some("p".into());
    a.updated_ms = 10_000;
    let s = settings(SyncMode::On, 1, false);
    let listed = names("FIRST", 1, &["a"]);
    let target = |now: u64, a: &MemberState| {
        target_names(&SyncInputs {
            me: "p",
            settings: &s,
            record: None,
            names: &listed,
            senders: &[],
            members: &[me.clone(), a.clone()],
            lsn: Some(Lsn(1000)),
            now_ms: now,
            fresh_ms: 2_500,
        })
    };
    // Its WAL sender is gone (the primary restarted), its report is fresh: it stays.
    assert_eq!(target(11_000, &a), listed);
    // Its report is stale: it is gone, and the primary degrades.
    assert_eq!(target(13_000, &a), SyncNames::Off);
    // Following someone else, or stopped: gone.
    let mut other = a.clone();
    other.upstream = Some("q".into());
    assert_eq!(target(11_000, &other), SyncNames::Off);
    let mut stopped = a.clone();
    stopped.state = MemberStatus::Stopped;
    assert_eq!(target(11_000, &stopped), SyncNames::Off);
}

#[test]
fn turning_off_clears_the_record_then_the_list() {
    let s = SyncSettings::default();
    let r = record(&["a"], 1);
    let n = names("FIRST", 1, &["a"]);
    let i = |record, names| {
        plan(&SyncInputs {
            me: "p",
            settings: &s,
            record,
            names,
            senders: &[],
            members: &[],
            lsn: None,
            now_ms: 0,
            fresh_ms: 2_500,
        })
    };
    assert_eq!(i(Some(&r), &n), Some(SyncStep::Clear));
    assert_eq!(i(None, &n), Some(SyncStep::Names(SyncNames::Off)));
    assert_eq!(i(None, &SyncNames::Off), None);
}

#[test]
fn a_new_leader_blocks_first() {
    let s = settings(SyncMode::On, 1, false);
    let old = SyncRecord {
        leader: "old".into(),
        ..record(&["p", "a"], 1)
    };
    let step = plan(&SyncInputs {
        me: "p",
        settings: &s,
        record: Some(&old),
        names: &SyncNames::Off,
        senders: &[sender("a", 1)],
        members: &[member("p", false), member("a", false)],
        lsn: Some(Lsn(1)),
        now_ms: 0,
        fresh_ms: 2_500,
    });
    assert_eq!(
        step,
        Some(SyncStep::Record {
            record: SyncRecord::blocked("p"),
            barrier: false
        })
    );
}
