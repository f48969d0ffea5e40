//! `pgbaton restart --pending` and `pgbaton restart --rolling`: restart members one at a
//! time, standbys first, each back to streaming before the next goes down.
//!
//! `--rolling` ends with the primary the way a planned change costs least: a switchover to
//! a caught-up standby (its write gap), which restarts the former primary as a standby.
//! `--pending` alone restarts only the members whose parameters wait for a restart, the
//! primary in place (as Patroni's `restart --pending` does); with `--rolling` too, only those
//! members, the primary through a switchover.

use crate::cluster::open_store;
use crate::members::{report, table};
use crate::operate::{self, settled_within, step, OpOptions};
use anyhow::{bail, Result};
use pgbaton_core::decide::ClusterView;
use pgbaton_core::model::OpKind;
use pgbaton_core::ops::STALE_MS;
use pgbaton_store::{now_ms, read_view};
use std::time::Duration;

/// Which members to restart, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The member that led when the plan was made: every step checks it still does.
    pub leader: String,
    pub standbys: Vec<String>,
    /// The primary, last.
    pub primary: Option<String>,
    /// The primary goes through a switchover rather than a restart in place.
    pub switchover: bool,
    /// The primary restarts first, in place (`PRIMARY_FIRST`).
    pub primary_first: bool,
}

/// Parameters a hot standby needs at least as high as its primary's: a standby restarted
/// first with a lowered value refuses to start ("insufficient parameter settings"), while a
/// standby left with a lower value than a restarted primary only pauses its replay until
/// its own restart. So with one of these pending, the primary goes first, in place (a
/// switchover would put a standby with the old value under a restarted one).
const PRIMARY_FIRST: &[&str] = &[
    "max_connections",
    "max_worker_processes",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// The plan for the cluster as `view` shows it. Refused while a member is not reporting
/// (a restart would leave two down) or no member leads.
pub fn plan(view: &ClusterView, pending_only: bool, rolling: bool, now: u64) -> Result<Plan> {
    let Some(leader) = view.leader_member() else {
        bail!("no member holds the leader lease: restart members one by one with `pgbaton restart MEMBER`");
    };
    if let Some(m) = view
        .members
        .iter()
        .find(|m| now.saturating_sub(m.seen()) > STALE_MS)
    {
        bail!(
            "{}'s agent is not reporting: a rolling restart would leave two members down; bring it back or remove it first",
            m.name
        );
    }
    let wanted =
        |m: &&pgbaton_core::model::MemberState| !pending_only || !m.pending_restart.is_empty();
    let standbys = view
        .members
        .iter()
        .filter(|m| m.name != leader.name)
        .filter(wanted)
        .map(|m| m.name.clone())
        .collect();
    let primary = Some(leader).filter(wanted).map(|m| m.name.clone());
    let has_standby = view.members.len() > 1;
    let primary_first = view
        .members
        .iter()
        .flat_map(|m| &m.pending_restart)
        .any(|p| PRIMARY_FIRST.contains(&p.as_str()));
    Ok(Plan {
        leader: leader.name.clone(),
        standbys,
        switchover: rolling && primary.is_some() && has_standby && !primary_first,
        primary_first: primary_first && primary.is_some(),
        primary,
    })
}

pub async fn run(
    cfg: &pgbaton_core::config::ClientConfig,
    pending_only: bool,
    rolling: bool,
    o: &OpOptions,
) -> Result<()> {
    let store = open_store(cfg)?;
    let view = read_view(store.as_ref()).await?;
    let p = plan(&view, pending_only, rolling, now_ms())?;
    if p.standbys.is_empty() && p.primary.is_none() {
        println!("Nothing to restart: no member has a pending restart.");
        return Ok(());
    }
    if !o.json {
        eprintln!("restart plan: {}", describe(&p));
    }
    let limit = Duration::from_secs(o.timeout_s);
    let s = store.as_ref();
    if let (true, Some(primary)) = (p.primary_first, &p.primary) {
        before(s, primary, &p.leader, limit).await?;
        step(
            s,
            OpKind::Restart {
                member: primary.clone(),
            },
            o,
        )
        .await?;
        after(s, primary, limit).await?;
    }
    for m in &p.standbys {
        before(s, m, &p.leader, limit).await?;
        step(s, OpKind::Restart { member: m.clone() }, o).await?;
        after(s, m, limit).await?;
    }
    if let Some(primary) = p.primary.as_ref().filter(|_| !p.primary_first) {
        before(s, primary, &p.leader, limit).await?;
        if p.switchover {
            let kind = operate::switchover_kind(cfg, None).await?;
            step(s, kind, o).await?;
            // The switchover stopped the former primary and started it as a standby: that
            // was its restart. Only a parameter still pending asks for another.
            after(s, primary, limit).await?;
            let again = read_view(s)
                .await?
                .member(primary)
                .is_some_and(|m| pending_only && !m.pending_restart.is_empty());
            if again {
                step(
                    s,
                    OpKind::Restart {
                        member: primary.clone(),
                    },
                    o,
                )
                .await?;
                after(s, primary, limit).await?;
            }
        } else {
            step(
                s,
                OpKind::Restart {
                    member: primary.clone(),
                },
                o,
            )
            .await?;
            after(s, primary, limit).await?;
        }
    }
    let view = read_view(s).await?;
    let r = report(&cfg.cluster, &view);
    if o.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", table(&r));
        println!("Restarted, one at a time: {}.", describe(&p));
    }
    Ok(())
}

fn describe(p: &Plan) -> String {
    let mut parts: Vec<String> = p.standbys.clone();
    if let (true, Some(primary)) = (p.primary_first, &p.primary) {
        parts.insert(
            0,
            format!("{primary} (the primary first, in place: a hot standby needs these parameters at least as high as its primary's)"),
        );
    } else if let Some(primary) = &p.primary {
        parts.push(if p.switchover {
            format!("switchover from {primary} (which restarts it)")
        } else {
            format!("{primary} (the primary, in place)")
        });
    }
    parts.join(", then ")
}

/// Every member up, and the primary still the one the plan was made for, before `next`
/// goes down.
async fn before(
    store: &dyn pgbaton_store::Store,
    next: &str,
    leader: &str,
    limit: Duration,
) -> Result<()> {
    settle(store, limit, || {
        format!(
            "not every member is up (the primary running, every standby streaming): restarting \
             {next} now would leave two members down; stopped before it"
        )
    })
    .await?;
    still_leads(&read_view(store).await?, leader, next)
}

/// The member back in its place before the next one.
async fn after(store: &dyn pgbaton_store::Store, member: &str, limit: Duration) -> Result<()> {
    settle(store, limit, || {
        format!("the cluster did not settle after {member}'s restart (see `pgbaton list`): stopped there")
    })
    .await
}

/// Wait, bounded, until every member is up; else the error `stopped` says.
async fn settle(
    store: &dyn pgbaton_store::Store,
    limit: Duration,
    stopped: impl FnOnce() -> String,
) -> Result<()> {
    if !settled_within(store, limit, true).await? {
        bail!("{}", stopped());
    }
    Ok(())
}

/// The plan was made for `leader` as the primary. After a failover mid-run, a member
/// planned as a standby may be the primary now, and would be restarted in place: the run
/// stops instead, saying so (run it again to plan for the cluster as it is).
fn still_leads(view: &ClusterView, leader: &str, next: &str) -> Result<()> {
    match view.leader_member() {
        Some(m) if m.name == leader => Ok(()),
        now => bail!(
            "the primary is no longer {leader} (now {}): the cluster changed during the \
             restart (a failover?); stopped before restarting {next}. Run the command again to \
             plan for the cluster as it is",
            now.map_or("none", |m| m.name.as_str())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgbaton_core::model::{Leader, MemberState, MemberStatus, Role};

    fn view(pending: &[&str]) -> ClusterView {
        let now = now_ms();
        let m = |name: &str, role, state| {
            let mut m = MemberState::sample(name, role, state, now);
            m.seen_ms = now;
            if pending.contains(&name) {
                m.pending_restart = vec!["shared_buffers".into()];
            }
            m
        };
        ClusterView {
            leader: Some(Leader {
                member: "n2".into(),
                expires_ms: now + 10_000,
            }),
            members: vec![
                m("n1", Role::Standby, MemberStatus::Streaming),
                m("n2", Role::Primary, MemberStatus::Running),
                m("n3", Role::Standby, MemberStatus::Streaming),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn standbys_first_then_the_primary_through_a_switchover() {
        let p = plan(&view(&[]), false, true, now_ms()).unwrap();
        assert_eq!(p.standbys, ["n1", "n3"]);
        assert_eq!(p.primary.as_deref(), Some("n2"));
        assert!(p.switchover);
    }

    #[test]
    fn pending_restarts_only_those_members_the_primary_in_place() {
        let p = plan(&view(&["n2", "n3"]), true, false, now_ms()).unwrap();
        assert_eq!(p.standbys, ["n3"]);
        assert_eq!(p.primary.as_deref(), Some("n2"));
        assert!(!p.switchover);
        let none = plan(&view(&[]), true, false, now_ms()).unwrap();
        assert!(none.standbys.is_empty() && none.primary.is_none());
    }

    #[test]
    fn max_connections_pending_restarts_the_primary_first_in_place() {
        let mut v = view(&["n1", "n2", "n3"]);
        v.members[2].pending_restart = vec!["max_connections".into()];
        let p = plan(&v, true, true, now_ms()).unwrap();
        assert!(p.primary_first && !p.switchover, "{p:?}");
        assert_eq!(p.primary.as_deref(), Some("n2"));
        assert!(
            describe(&p).starts_with("n2 (the primary first"),
            "{}",
            describe(&p)
        );
    }

    #[test]
    fn a_failover_during_the_run_stops_it_before_the_next_member() {
        let v = view(&[]);
        assert!(still_leads(&v, "n2", "n3").is_ok());
        let mut moved = v.clone();
        moved.leader.as_mut().unwrap().member = "n3".into();
        let e = still_leads(&moved, "n2", "n3").unwrap_err().to_string();
        assert!(
            e.contains("no longer n2 (now n3)") && e.contains("before restarting n3"),
            "{e}"
        );
        let mut none = v;
        none.leader = None;
        assert!(still_leads(&none, "n2", "n1").is_err());
    }

    #[test]
    fn a_member_not_reporting_stops_it_before_anything_restarts() {
        let mut v = view(&[]);
        v.members[0].seen_ms = 0;
        v.members[0].updated_ms = 0;
        let e = plan(&v, false, true, now_ms()).unwrap_err().to_string();
        assert!(e.contains("n1's agent is not reporting"), "{e}");
    }
}
