//! The agent's decision: a pure function of what the agent sees, returning what to do.
//!
//! `decide(cluster, local, now)` looks at a snapshot of the store (`ClusterView`) and of the
//! local node (`LocalView`) and returns the actions for this loop, in order. The agent runs
//! them in order and stops at the first one that fails or whose compare-and-set is lost;
//! the next loop decides again from a fresh snapshot. Every action is idempotent.
//!
//! Safety rules encoded here:
//! - only the holder of the leader lease runs a writable primary (a running primary that
//!   is not the lease holder while someone else holds it is stopped);
//! - a standby never takes the lease (automatic failover is not part of this decision yet);
//! - a data directory of another cluster is never touched: the member fails with the reason;
//! - a data directory is never wiped: cloning only ever happens into an empty directory.

use crate::model::{slot_name_for, Leader, MemberState, Role};
use crate::render::Upstream;

/// What the store says about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    /// The `initialize` key: `claimed:<member>` during bootstrap, then the system identifier.
    pub initialize: Option<String>,
    /// The unexpired leader lease, if any.
    pub leader: Option<Leader>,
    pub members: Vec<MemberState>,
}

/// What is in the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: something may be created in it.
    Empty,
    /// A PostgreSQL data directory.
    Initialized {
        system_id: String,
        /// `standby.signal` is present.
        standby: bool,
    },
    /// Not empty, and not a PostgreSQL data directory pgbaton can read.
    Foreign(String),
}

/// Whether and how the local PostgreSQL runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgRun {
    Stopped,
    /// Running and answering SQL.
    Running {
        in_recovery: bool,
        /// Standby only: the upstream its configuration points at (member name), if any.
        upstream: Option<String>,
    },
    /// A postmaster runs but does not answer SQL (starting up, shutting down, overloaded).
    NotAnswering,
}

#[derive(Clone, Debug)]
pub struct LocalView {
    pub name: String,
    pub data: DataDir,
    pub pg: PgRun,
}

/// One step for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the `initialize` key as `value` (compare-and-set: lost if it exists).
    ClaimInitialize { value: String },
    /// initdb (when empty), start as primary, create roles and databases, then replace the
    /// claim with the system identifier. Resumable after a crash.
    Bootstrap,
    /// Take the leader lease (compare-and-set: lost if another member holds it).
    AcquireLease,
    /// Extend the lease (lost if it expired or was taken: then stop acting as leader).
    RenewLease,
    /// pg_basebackup from the primary into the empty data directory, using this member's slot.
    Clone { from: Upstream },
    /// Write pgbaton's config files and start PostgreSQL.
    Start { upstream: Option<Upstream> },
    /// Point a running standby at a new upstream (config rewrite and reload).
    Follow { upstream: Option<Upstream> },
    /// Stop PostgreSQL (fast mode), for the reason given.
    Stop { reason: String },
    /// On the primary: make sure these physical slots exist.
    EnsureSlots { names: Vec<String> },
    /// Nothing to do now but wait, for the reason given (shown to the operator).
    Wait { reason: String },
    /// A condition the agent must not resolve by itself: report it, do nothing else.
    Fail { reason: String },
}

/// The claim value a bootstrapping member writes into the `initialize` key.
pub fn claim_value(member: &str) -> String {
    format!("claimed:{member}")
}

fn member<'a>(view: &'a ClusterView, name: &str) -> Option<&'a MemberState> {
    view.members.iter().find(|m| m.name == name)
}

/// The leader as an upstream to stream from, when it has published where it is.
fn leader_upstream(view: &ClusterView, me: &str) -> Option<Upstream> {
    let l = view.leader.as_ref()?;
    if l.member == me {
        return None;
    }
    let m = member(view, &l.member)?;
    Some(Upstream {
        member: m.name.clone(),
        host: m.host.clone(),
        port: m.port,
    })
}

/// The decision for one loop. `now_ms` is wall-clock ms (lease expiry is compared with it).
pub fn decide(view: &ClusterView, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let me = local.name.as_str();
    let my_claim = claim_value(me);
    let lease = view.leader.as_ref().filter(|l| l.expires_ms > now_ms);
    let i_lead = lease.is_some_and(|l| l.member == me);
    let other_leader = lease.filter(|l| l.member != me).map(|l| l.member.clone());

    // The cluster's identity, once bootstrap has published it.
    let cluster_sysid = view
        .initialize
        .as_deref()
        .filter(|v| !v.starts_with("claimed:"));

    match &local.data {
        DataDir::Foreign(what) => vec![Action::Fail {
            reason: format!(
                "the data directory is not empty and is not a PostgreSQL data directory ({what}); \
                 pgbaton will not touch it: move it away or point data_dir elsewhere"
            ),
        }],
        DataDir::Initialized { system_id, .. } if cluster_sysid.is_some_and(|s| s != system_id) => {
            vec![Action::Fail {
                reason: format!(
                    "the data directory belongs to another cluster (system identifier {system_id}, \
                     this cluster's is {}); pgbaton will not touch it: move it away, or re-clone \
                     this member explicitly",
                    cluster_sysid.unwrap_or_default()
                ),
            }]
        }
        DataDir::Empty => match view.initialize.as_deref() {
            None => vec![
                Action::ClaimInitialize { value: my_claim },
                Action::Bootstrap,
            ],
            Some(v) if v == my_claim => vec![Action::Bootstrap],
            Some(v) if v.starts_with("claimed:") => vec![Action::Wait {
                reason: format!(
                    "member {} is bootstrapping the cluster",
                    &v["claimed:".len()..]
                ),
            }],
            Some(_) => match (other_leader, leader_upstream(view, me)) {
                (None, _) => vec![Action::Wait {
                    reason: "no primary holds the leader lease: nothing to clone from".into(),
                }],
                (Some(l), None) => vec![Action::Wait {
                    reason: format!("primary {l} has not published its address yet"),
                }],
                (Some(l), Some(up)) => {
                    let slot = slot_name_for(me);
                    let has_slot =
                        member(view, &l).is_some_and(|m| m.slots.iter().any(|s| s.name == slot));
                    if has_slot {
                        vec![Action::Clone { from: up }]
                    } else {
                        vec![Action::Wait {
                            reason: format!(
                                "waiting for primary {l} to create replication slot {slot}"
                            ),
                        }]
                    }
                }
            },
        },
        DataDir::Initialized { system_id, standby } => {
            if view.initialize.as_deref() == Some(my_claim.as_str()) {
                // Our own bootstrap was interrupted after initdb: resume it.
                return vec![Action::Bootstrap];
            }
            if view.initialize.is_none() {
                // A store that lost its keys (or a data directory brought to a new store):
                // the member whose data is a primary's re-establishes the cluster's identity.
                if *standby {
                    return vec![Action::Wait {
                        reason: "the store has no cluster identity yet; waiting for the primary"
                            .into(),
                    }];
                }
                return vec![Action::ClaimInitialize {
                    value: system_id.clone(),
                }];
            }
            if *standby {
                decide_standby(view, local, me)
            } else {
                decide_primary_data(view, local, i_lead, other_leader)
            }
        }
    }
}

fn decide_standby(view: &ClusterView, local: &LocalView, me: &str) -> Vec<Action> {
    let up = leader_upstream(view, me);
    match &local.pg {
        PgRun::Stopped => vec![Action::Start { upstream: up }],
        PgRun::NotAnswering => vec![Action::Wait {
            reason: "PostgreSQL is starting or busy".into(),
        }],
        PgRun::Running {
            in_recovery: true,
            upstream,
        } => {
            // Follow the leader when it is known and differs from what we stream from.
            match up {
                Some(u) if upstream.as_deref() != Some(u.member.as_str()) => {
                    vec![Action::Follow { upstream: Some(u) }]
                }
                _ => vec![],
            }
        }
        PgRun::Running {
            in_recovery: false, ..
        } => match view.leader.as_ref() {
            // standby.signal is there but PostgreSQL runs writable: someone promoted it by
            // hand. It must not stay writable beside the leader.
            Some(l) if l.member != me => vec![Action::Stop {
                reason: format!(
                    "PostgreSQL runs writable while {} holds the leader lease",
                    l.member
                ),
            }],
            _ => vec![Action::Wait {
                reason: "PostgreSQL runs writable on a standby's data directory".into(),
            }],
        },
    }
}

fn decide_primary_data(
    view: &ClusterView,
    local: &LocalView,
    i_lead: bool,
    other_leader: Option<String>,
) -> Vec<Action> {
    let me = local.name.as_str();
    let slots: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.name != me)
        .map(|m| slot_name_for(&m.name))
        .collect();
    if let Some(l) = other_leader {
        // A former primary while another member leads: it must not run writable.
        return match local.pg {
            PgRun::Running {
                in_recovery: false, ..
            }
            | PgRun::NotAnswering => vec![Action::Stop {
                reason: format!(
                    "{l} holds the leader lease; this member's data is a former primary's"
                ),
            }],
            _ => vec![Action::Fail {
                reason: format!(
                    "this member's data directory is a former primary's and {l} now leads: \
                     it must be rejoined as a standby (rewind) or re-cloned"
                ),
            }],
        };
    }
    let lease = if i_lead {
        Action::RenewLease
    } else {
        Action::AcquireLease
    };
    match local.pg {
        PgRun::Stopped => vec![lease, Action::Start { upstream: None }],
        PgRun::NotAnswering => vec![
            lease,
            Action::Wait {
                reason: "PostgreSQL is starting or busy".into(),
            },
        ],
        PgRun::Running {
            in_recovery: false, ..
        } => vec![lease, Action::EnsureSlots { names: slots }],
        PgRun::Running {
            in_recovery: true, ..
        } => {
            // A primary's data dir running in recovery: it is still finishing crash recovery or
            // replaying; hold the lease and wait.
            vec![
                lease,
                Action::Wait {
                    reason: "PostgreSQL is in recovery".into(),
                },
            ]
        }
    }
}

/// The role a member has, as seen from its data and PostgreSQL (for publishing).
pub fn role_of(local: &LocalView) -> Role {
    match (&local.pg, &local.data) {
        (PgRun::Running { in_recovery, .. }, _) => {
            if *in_recovery {
                Role::Standby
            } else {
                Role::Primary
            }
        }
        (_, DataDir::Initialized { standby, .. }) => {
            if *standby {
                Role::Standby
            } else {
                Role::Primary
            }
        }
        _ => Role::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MemberStatus, SlotInfo};

    const NOW: u64 = 1_000_000;

    fn ms(name: &str, slots: &[&str]) -> MemberState {
        MemberState {
            name: name.into(),
            role: Role::Unknown,
            state: MemberStatus::Running,
            host: "127.0.0.1".into(),
            port: 5432,
            socket_dir: "/tmp".into(),
            os_user: "postgres".into(),
            superuser: "postgres".into(),
            api_url: "http://127.0.0.1:8008".into(),
            timeline: Some(1),
            lsn: None,
            receive_lsn: None,
            system_id: Some("42".into()),
            upstream: None,
            slot_name: slot_name_for(name),
            slots: slots
                .iter()
                .map(|s| SlotInfo {
                    name: s.to_string(),
                    active: false,
                    restart_lsn: None,
                    retained_bytes: None,
                })
                .collect(),
            pg_version: None,
            message: None,
            progress: None,
            agent_pid: 1,
            updated_ms: NOW,
        }
    }

    fn view(init: Option<&str>, leader: Option<&str>, members: Vec<MemberState>) -> ClusterView {
        ClusterView {
            initialize: init.map(String::from),
            leader: leader.map(|m| Leader {
                member: m.into(),
                expires_ms: NOW + 10_000,
            }),
            members,
        }
    }

    fn local(name: &str, data: DataDir, pg: PgRun) -> LocalView {
        LocalView {
            name: name.into(),
            data,
            pg,
        }
    }

    fn init(standby: bool) -> DataDir {
        DataDir::Initialized {
            system_id: "42".into(),
            standby,
        }
    }

    #[test]
    fn empty_store_empty_dir_claims_and_bootstraps() {
        let a = decide(
            &view(None, None, vec![]),
            &local("n1", DataDir::Empty, PgRun::Stopped),
            NOW,
        );
        assert_eq!(
            a,
            vec![
                Action::ClaimInitialize {
                    value: "claimed:n1".into()
                },
                Action::Bootstrap
            ]
        );
    }

    #[test]
    fn interrupted_bootstrap_resumes() {
        let v = view(Some("claimed:n1"), None, vec![]);
        assert_eq!(
            decide(&v, &local("n1", DataDir::Empty, PgRun::Stopped), NOW),
            vec![Action::Bootstrap]
        );
        assert_eq!(
            decide(&v, &local("n1", init(false), PgRun::Stopped), NOW),
            vec![Action::Bootstrap]
        );
    }

    #[test]
    fn another_members_bootstrap_is_waited_for() {
        let v = view(Some("claimed:n1"), None, vec![]);
        let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
        assert!(
            matches!(&a[..], [Action::Wait { reason }] if reason.contains("n1 is bootstrapping"))
        );
    }

    #[test]
    fn clone_waits_for_slot_then_clones() {
        let v = view(Some("42"), Some("n1"), vec![ms("n1", &[]), ms("n2", &[])]);
        let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
        assert!(matches!(&a[..], [Action::Wait { reason }] if reason.contains("pgbaton_n2")));
        let v = view(
            Some("42"),
            Some("n1"),
            vec![ms("n1", &["pgbaton_n2"]), ms("n2", &[])],
        );
        let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
        assert_eq!(
            a,
            vec![Action::Clone {
                from: Upstream {
                    member: "n1".into(),
                    host: "127.0.0.1".into(),
                    port: 5432
                }
            }]
        );
    }

    #[test]
    fn no_leader_means_nothing_to_clone_from() {
        let v = view(Some("42"), None, vec![ms("n1", &[])]);
        let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
        assert!(matches!(&a[..], [Action::Wait { .. }]));
    }

    #[test]
    fn expired_lease_counts_as_free() {
        let mut v = view(Some("42"), Some("n1"), vec![ms("n1", &["pgbaton_n2"])]);
        v.leader.as_mut().unwrap().expires_ms = NOW;
        let a = decide(&v, &local("n2", DataDir::Empty, PgRun::Stopped), NOW);
        assert!(matches!(&a[..], [Action::Wait { .. }]));
    }

    #[test]
    fn foreign_system_id_is_a_failure_and_nothing_else() {
        let v = view(Some("42"), Some("n1"), vec![ms("n1", &[])]);
        let d = DataDir::Initialized {
            system_id: "7".into(),
            standby: true,
        };
        let a = decide(&v, &local("n2", d, PgRun::Stopped), NOW);
        assert!(matches!(&a[..], [Action::Fail { reason }] if reason.contains("another cluster")));
        let a = decide(
            &v,
            &local("n2", DataDir::Foreign("x".into()), PgRun::Stopped),
            NOW,
        );
        assert!(matches!(&a[..], [Action::Fail { .. }]));
    }

    #[test]
    fn primary_data_takes_lease_then_starts() {
        let v = view(Some("42"), None, vec![]);
        let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
        assert_eq!(
            a,
            vec![Action::AcquireLease, Action::Start { upstream: None }]
        );
    }

    #[test]
    fn running_leader_renews_and_keeps_slots_for_every_other_member() {
        let v = view(
            Some("42"),
            Some("n1"),
            vec![ms("n1", &[]), ms("n2", &[]), ms("n3", &[])],
        );
        let a = decide(
            &v,
            &local(
                "n1",
                init(false),
                PgRun::Running {
                    in_recovery: false,
                    upstream: None,
                },
            ),
            NOW,
        );
        assert_eq!(
            a,
            vec![
                Action::RenewLease,
                Action::EnsureSlots {
                    names: vec!["pgbaton_n2".into(), "pgbaton_n3".into()]
                }
            ]
        );
    }

    #[test]
    fn former_primary_never_runs_writable_beside_the_leader() {
        let v = view(Some("42"), Some("n2"), vec![ms("n2", &[])]);
        let a = decide(
            &v,
            &local(
                "n1",
                init(false),
                PgRun::Running {
                    in_recovery: false,
                    upstream: None,
                },
            ),
            NOW,
        );
        assert!(matches!(&a[..], [Action::Stop { .. }]));
        let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
        assert!(matches!(&a[..], [Action::Fail { .. }]));
    }

    #[test]
    fn standby_never_takes_the_lease() {
        let v = view(Some("42"), None, vec![]);
        for pg in [
            PgRun::Stopped,
            PgRun::Running {
                in_recovery: true,
                upstream: None,
            },
            PgRun::NotAnswering,
        ] {
            let a = decide(&v, &local("n2", init(true), pg), NOW);
            assert!(!a.contains(&Action::AcquireLease), "{a:?}");
        }
    }

    #[test]
    fn stopped_standby_starts_following_the_leader() {
        let v = view(Some("42"), Some("n1"), vec![ms("n1", &[])]);
        let a = decide(&v, &local("n2", init(true), PgRun::Stopped), NOW);
        assert_eq!(
            a,
            vec![Action::Start {
                upstream: Some(Upstream {
                    member: "n1".into(),
                    host: "127.0.0.1".into(),
                    port: 5432
                })
            }]
        );
    }

    #[test]
    fn streaming_standby_follows_a_new_leader() {
        let v = view(Some("42"), Some("n3"), vec![ms("n3", &[])]);
        let pg = PgRun::Running {
            in_recovery: true,
            upstream: Some("n1".into()),
        };
        let a = decide(&v, &local("n2", init(true), pg), NOW);
        assert!(matches!(&a[..], [Action::Follow { upstream: Some(u) }] if u.member == "n3"));
        let pg = PgRun::Running {
            in_recovery: true,
            upstream: Some("n3".into()),
        };
        assert!(decide(&v, &local("n2", init(true), pg), NOW).is_empty());
    }

    #[test]
    fn lost_store_identity_is_reclaimed_by_the_primary_only() {
        let v = view(None, None, vec![]);
        let a = decide(&v, &local("n1", init(false), PgRun::Stopped), NOW);
        assert_eq!(a, vec![Action::ClaimInitialize { value: "42".into() }]);
        let a = decide(&v, &local("n2", init(true), PgRun::Stopped), NOW);
        assert!(matches!(&a[..], [Action::Wait { .. }]));
    }
}
