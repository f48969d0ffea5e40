//! Pinned seeds (one per bug the simulator found) and explicit scenarios.

use pgbaton_sim::{run, Fault, FaultKind, Outcome, SimConfig};

fn kinds(o: &Outcome) -> Vec<&'static str> {
    o.violations.iter().map(|v| v.kind).collect()
}

fn assert_ok(o: &Outcome) {
    assert!(
        o.ok(),
        "seed {}: {:?}\nreplay: cargo run -p pgbaton-sim -- --seed {} --trace",
        o.seed,
        o.violations,
        o.seed
    );
}

// ---- bugs found by the sweep ----------------------------------------------------------------

/// Seed 1843 (first found as 1639, 3918, 8574, 1775 and 1437; seeds drift when a change to the
/// decision or the executor changes a run's course, so the buggy run is re-found with
/// `pgbaton-sim --sweep 0 30000 --no-pg-faults --no-operations --no-failsafe-hold`): a standby confirmed the primary over the failsafe API (promising
/// not to take the lease for ttl), then its agent crashed and restarted within the ttl,
/// forgot the promise (it lives in agent memory) and took the lease and promoted while the
/// primary, whose watchdog the promise had moved, still ran writable: two writers.
/// Fix (agent side, modelled by `failsafe_hold_after_start`): a starting agent holds itself
/// to a failsafe promise for ttl.
#[test]
fn agent_restart_forgets_its_failsafe_promise() {
    // (1843 until reports were written only on change, which moved every run's course.)
    let seed = 2569;
    // The fault mix it was found with (before frozen PostgreSQL, killed watchdogs,
    // operator requests and timing changes).
    let before = SimConfig {
        pg_faults: false,
        operations: false,
        retime: false,
        ..SimConfig::default()
    };
    let buggy = SimConfig {
        failsafe_hold_after_start: false,
        ..before.clone()
    };
    let o = run(seed, &buggy);
    assert!(
        kinds(&o).contains(&"two-writers"),
        "the buggy run no longer breaks at seed {seed} (a decision change moved its course?): \
         find one with `cargo run --release -p pgbaton-sim -- --sweep 0 30000 --no-pg-faults --no-operations --no-failsafe-hold`; {:?}",
        o.violations
    );
    assert_ok(&run(seed, &before));
    assert_ok(&run(seed, &SimConfig::default()));
}

/// Seed 912 found it (now seed 1, earlier 79; seeds drift when the decision changes a run's course:
/// `pgbaton-sim --sweep 0 20000 --no-pg-faults --no-operations --no-stopped-position`
/// re-finds one): the primary was fenced while its standbys, cut off from it, lagged; stopped, it
/// published no LSN and no timeline, so the failover decision lost its `max_lag_bytes` bar
/// and promoted a standby far behind the last LSN the primary had published. Fix (agent
/// side, modelled by `publish_stopped_position`): keep publishing the last known position
/// while PostgreSQL is stopped.
#[test]
fn stopped_primary_publishes_no_lsn() {
    let before = SimConfig {
        pg_faults: false,
        operations: false,
        retime: false,
        ..SimConfig::default()
    };
    let buggy = SimConfig {
        publish_stopped_position: false,
        ..before.clone()
    };
    // (Seed 1 until reports were written only on change, which moved every run's course.)
    let seed = 309;
    let o = run(seed, &buggy);
    assert!(
        kinds(&o).contains(&"promoted-too-far-behind"),
        "the buggy run no longer breaks at seed {seed} (a decision change moved its course?): \
         find one with `cargo run --release -p pgbaton-sim -- --sweep 0 20000 --no-pg-faults --no-operations --no-stopped-position`; {:?}",
        o.violations
    );
    assert_ok(&run(seed, &before));
    assert_ok(&run(seed, &SimConfig::default()));
}

/// The fault mix the seeds below were found with: before timing changes (`retime`), whose
/// faults move every seeded run's course, so a seed would no longer replay its bug.
fn found_with() -> SimConfig {
    SimConfig {
        retime: false,
        ..SimConfig::default()
    }
}

/// `seed` breaks the one-writer rule with a fix planted out (`plant`), and passes with it.
/// `flag`: the simulator's flag that plants it, to re-find a seed when the course moved.
fn two_writers_only_without(seed: u64, plant: fn(&mut SimConfig), flag: &str) {
    let mut buggy = SimConfig::default();
    plant(&mut buggy);
    let o = run(seed, &buggy);
    assert!(
        kinds(&o)
            .iter()
            .any(|k| *k == "two-writers" || *k == "lease-granted-beside-writer"),
        "the buggy run no longer breaks at seed {seed} (a change moved its course?): find one \
         with `cargo run --release -p pgbaton-sim -- --sweep 0 4000 {flag}`; {:?}",
        o.violations
    );
    assert_ok(&run(seed, &SimConfig::default()));
}

/// Seed 3865 (found when timing changes entered the simulator): the primary's TTL was
/// lowered; its renewal for the shorter TTL reached the store, which shortened the lease,
/// but the answer was lost (a store cut). The fence stayed where the longer TTL had put
/// it, past the new expiry, and a standby took the lease and promoted beside it. Fix
/// (`tighten_before_shorter_ttl`; in the executor, `Host::tighten` before a lease request
/// for less than the armed fence counts on). Re-find with
/// `cargo run --release -p pgbaton-sim -- --sweep 0 4000 --no-tighten`.
#[test]
fn a_shorter_renewal_whose_answer_is_lost_outlives_the_fence() {
    two_writers_only_without(
        3865,
        |c| c.tighten_before_shorter_ttl = false,
        "--no-tighten",
    );
}

/// Seed 192 (found when timing changes entered the simulator, `SimConfig::retime`): the
/// primary ran with a TTL raised by the cluster's config while the members it asked in a
/// failsafe round promised for their own, shorter TTL; it extended its fence by its own TTL,
/// the promises ran out first, a member took the lease and promoted beside it: two
/// writers. The same happens without a config change when members' node.toml TTLs differ.
/// Fix (`failsafe_shortest_promise`; in the agent, `/failsafe` answers `promise_ms` and the
/// primary extends its fence by the shortest): re-find with
/// `cargo run --release -p pgbaton-sim -- --sweep 0 4000 --old-failsafe-promise`.
#[test]
fn a_failsafe_round_outlives_a_shorter_promise() {
    two_writers_only_without(
        192,
        |c| c.failsafe_shortest_promise = false,
        "--old-failsafe-promise",
    );
}

/// Seed 13610: a primary's agent froze right after reading the store; its watchdog fenced it
/// and a standby was promoted to a new timeline. Thawed 7 s later, the agent decided on its
/// old view (nobody on a newer timeline), took the now free lease back and ran writable on
/// the old timeline; the next promotion was then 2.2 MB behind the last published primary.
/// Fixed in `decide` (`stale_view`): no free lease is taken on a view in which the member's
/// own report is older than the TTL.
#[test]
fn stale_view_retakes_the_lease_on_an_old_timeline() {
    assert_ok(&run(13610, &found_with()));
}

// ---- bugs found once the simulator drove the real executor (pgbaton-exec) --------------------
// These seeds broke before the fix; they pin the fix for as long as the run's course holds
// (a later change to the decision may move it: then re-find a breaking run by reverting the
// fix and sweeping).

/// Seed 164: `pgbaton restart n3` was posted while n3 led; its node crashed, n2 took over,
/// and when n3 came back it carried out the stale restart and started its former primary's
/// data directory as a primary beside n2: two writers. Fixed in `decide/operation.rs`: a
/// former primary without the lease finishes such a restart as failed (and rejoins).
#[test]
fn a_stale_restart_never_starts_a_former_primary_as_a_primary() {
    assert_ok(&run(164, &found_with()));
}

/// Seed 523: the new primary of a switchover was lost right after its promotion; the old
/// one rejoined but could not finish the operation (store outage), and later had no leader
/// to rejoin: the operation stayed in flight for good, refusing every later one. Fixed in
/// `decide/operation.rs`: the old primary finishes it once it is a standby, or after the
/// switchover deadline.
#[test]
fn a_switchover_whose_new_primary_is_lost_still_finishes() {
    assert_ok(&run(523, &found_with()));
}

/// Seed 2444: the operator removed the lost primary before a new one ran; its report, the
/// last primary position that bounds the failover to `max_lag_bytes`, went with it, and a
/// standby 1.1 MB behind was promoted. Fixed in `ops::check`: removing the last primary is
/// refused until a new primary runs.
#[test]
fn removing_the_lost_primary_keeps_the_failover_lag_bar() {
    assert_ok(&run(2444, &found_with()));
}

/// Seed 1591: the operator promoted (without `--force`) the most advanced standby, 1.35 MB
/// behind the position the lost primary last published: `ops::check` compared it only with
/// the other standbys, so commits automatic failover would have refused to lose were lost.
/// Fixed in `ops::check`: a manual promote is held to the failover bar (timeline, default
/// `max_lag_bytes`) unless forced.
#[test]
fn a_manual_promote_is_held_to_the_failover_lag_bar() {
    assert_ok(&run(1591, &found_with()));
}

/// Seed 18143: the switchover target promoted, and its agent crashed before it moved the
/// operation on; back, it waited in the demoted phase without renewing its lease, which
/// ran out (it was fenced), and the operation held failover back for its whole timeout.
/// Fixed in `decide/operation.rs`: a promoted target moves the operation on (taking the
/// lease again and starting as the primary when it was stopped meanwhile).
#[test]
fn a_switchover_target_promoted_before_its_agent_crashed_moves_on() {
    assert_ok(&run(18143, &found_with()));
}

/// Seed 26490: a switchover was asked for to a member whose host had just been lost (its
/// last report was still fresh); the old primary stopped and waited the whole 70 s for it.
/// Fixed in `decide/operation.rs`: once the target has not reported for three TTLs, the old
/// primary fails the switchover and resumes.
#[test]
fn a_switchover_to_a_member_that_is_lost_fails_early() {
    assert_ok(&run(26490, &found_with()));
}

/// Seed 74622: a promote request passed the CLI's check, then stayed in flight (the old
/// lease was still held) while the member's node was down for 17 s; carried out 34 s after
/// it was posted, it promoted the member 1.09 MB behind the last primary's position. Fixed
/// in `decide/operation.rs`: the failover bar is checked again when a promote that was not
/// forced is carried out.
#[test]
fn a_stale_promote_is_held_to_the_failover_lag_bar() {
    assert_ok(&run(74622, &found_with()));
}

/// Seed 2927: a switchover target whose node restarted during the switchover waited for a
/// checkpoint it could not replay, with PostgreSQL stopped. Fixed in `decide/operation.rs`:
/// a stopped target is started by the usual decision.
#[test]
fn a_switchover_target_that_restarts_is_started_and_takes_over() {
    assert_ok(&run(2927, &found_with()));
}

/// Found by the real executor in the simulator: pg_rewind that could not connect to the new
/// primary was taken for a rewind that failed, and the member waited for a reinit for good.
/// Now `Rewind::SourceUnreachable` and the rejoin is retried: with the old behaviour planted
/// (`rewind_unreachable_is_retried = false`) far more nodes are left waiting at the end.
#[test]
fn an_unreachable_rewind_source_is_retried() {
    let cfg = SimConfig::default();
    let old = SimConfig {
        rewind_unreachable_is_retried: false,
        ..SimConfig::default()
    };
    let waiting = |cfg: &SimConfig| -> u32 {
        (0..300)
            .map(|seed| run(seed, cfg).stats.waiting_rejoin_failed)
            .sum()
    };
    let (now, before) = (waiting(&cfg), waiting(&old));
    assert!(
        before > now * 2,
        "retrying an unreachable source should leave far fewer nodes waiting: {now} vs {before}"
    );
}

/// A removed member stays removed (found by reading: the real executor's plan loop let a
/// removal that stopped the plan fall through to a publish, which registered the member
/// again, and the primary then re-created its slot). Checked by `converged` for every run
/// with a `Remove` request; this scenario removes a standby early and checks it is gone.
#[test]
fn a_removed_member_is_not_registered_again() {
    let cfg = SimConfig {
        trace: true,
        ..scripted(20_000, vec![fault(FaultKind::Remove, 2, 5_000, 0)])
    };
    let o = run(1, &cfg);
    assert_ok(&o);
    assert!(
        o.trace
            .iter()
            .any(|l| l.contains("removed from the cluster")),
        "the removal did not happen: {:?}",
        o.trace.iter().rev().take(20).collect::<Vec<_>>()
    );
}

// ---- scenarios ------------------------------------------------------------------------------

fn scripted(fault_ms: u64, script: Vec<Fault>) -> SimConfig {
    SimConfig {
        random_faults: false,
        fault_ms,
        script,
        lag_bytes: Some(vec![0, 500, 20_000]),
        rewind_fail_per_mille: 0,
        ..SimConfig::default()
    }
}

fn fault(kind: FaultKind, node: usize, at_ms: u64, dur_ms: u64) -> Fault {
    Fault {
        at_ms,
        dur_ms,
        node,
        kind,
    }
}

/// (a) The primary's node crashes: the most advanced standby is promoted, the third follows
/// it, and the old primary rejoins as a standby when it comes back.
#[test]
fn primary_crash_promotes_the_most_advanced_standby() {
    let cfg = scripted(30_000, vec![fault(FaultKind::NodeCrash, 0, 5_000, 20_000)]);
    let o = run(1, &cfg);
    assert_ok(&o);
    assert_eq!(o.promotions.len(), 1, "{:?}", o.promotions);
    let p = &o.promotions[0];
    assert_eq!(p.node, "n2");
    assert!(p.others.iter().all(|(_, lsn)| *lsn <= p.lsn), "{p:?}");
    assert_eq!(o.final_primary.as_deref(), Some("n2"));
    // Converged: n1 (back) and n3 stream from n2 on its timeline.
    assert!(o.stats.converged_after_ms.is_some());
    assert_eq!(o.stats.stuck_diverged, 0);
}

/// (b) The primary's agent freezes: its watchdog fences PostgreSQL before anyone else is
/// promoted. Thawed, it knows it no longer leads and says it is alive (the convergence
/// check): before `forget_a_lease_another_holds` it still thought it held the lease, kept
/// no liveness and refused failsafe confirmations for good (found by a CI failure of the
/// frozen-leader integration test).
#[test]
fn frozen_primary_is_fenced_before_a_promotion() {
    let cfg = scripted(20_000, vec![fault(FaultKind::Freeze, 0, 5_000, 10_000)]);
    let o = run(2, &cfg);
    assert_ok(&o);
    let (fenced_at, who) = o.fences.first().expect("n1 fenced").clone();
    assert_eq!(who, "n1");
    let p = o.promotions.first().expect("a standby promoted");
    assert_ne!(p.node, "n1");
    assert!(fenced_at < p.t_ms, "fenced at {fenced_at}, promotion {p:?}");
}

/// (b) fails without the watchdog: the checker sees two writers.
#[test]
fn frozen_primary_without_a_watchdog_is_caught() {
    let cfg = SimConfig {
        watchdog: false,
        ..scripted(20_000, vec![fault(FaultKind::Freeze, 0, 5_000, 10_000)])
    };
    let o = run(2, &cfg);
    assert!(kinds(&o).contains(&"two-writers"), "{:?}", o.violations);
}

/// (c) The store is down while every node is healthy: the primary keeps writing (failsafe),
/// and nothing changes when the store returns.
#[test]
fn store_outage_with_healthy_nodes_changes_nothing() {
    let cfg = scripted(
        25_000,
        vec![fault(FaultKind::StoreOutage, 0, 5_000, 15_000)],
    );
    let o = run(3, &cfg);
    assert_ok(&o);
    assert!(o.stats.failsafe_confirmed > 0);
    assert!(o.promotions.is_empty(), "{:?}", o.promotions);
    assert!(o.fences.is_empty(), "{:?}", o.fences);
    assert_eq!(o.stats.unavailable_ms, 0);
    assert_eq!(o.final_primary.as_deref(), Some("n1"));
}

/// (c) fails without failsafe: the primary is fenced during the outage.
#[test]
fn store_outage_without_failsafe_fences_the_primary() {
    let cfg = SimConfig {
        failsafe: false,
        ..scripted(
            25_000,
            vec![fault(FaultKind::StoreOutage, 0, 5_000, 15_000)],
        )
    };
    let o = run(3, &cfg);
    assert!(!o.fences.is_empty());
    assert!(o.stats.unavailable_ms > 0);
}

/// (d) Paused: a crashed primary is not replaced until the pause ends.
#[test]
fn paused_cluster_does_not_fail_over() {
    let cfg = scripted(
        70_000,
        vec![
            fault(FaultKind::Pause, 0, 3_000, 30_000),
            fault(FaultKind::NodeCrash, 0, 5_000, 60_000),
        ],
    );
    let o = run(4, &cfg);
    assert_ok(&o);
    let p = o.promotions.first().expect("a promotion once resumed");
    assert!(p.t_ms >= 33_000, "{:?}", o.promotions);
    assert_ne!(p.node, "n1");
}

/// (e) Issue 14: the primary's PostgreSQL freezes (postmaster and backends). Its agent's
/// probe hangs, so the lease is not renewed and the watchdog fences it at its deadline: it
/// kills every process of the instance while frozen, so nothing is acknowledged afterwards.
#[test]
fn frozen_primary_postgresql_is_killed_by_the_fence_not_resumed() {
    let cfg = scripted(25_000, vec![fault(FaultKind::PgFreeze, 0, 5_000, 8_000)]);
    let o = run(3, &cfg);
    assert_ok(&o);
    assert_eq!(
        o.fences.first().map(|f| f.1.as_str()),
        Some("n1"),
        "{:?}",
        o.fences
    );
    assert!(o.stats.converged_after_ms.is_some());
}

/// (e) fails with the old fence (SIGQUIT, then SIGKILL of the postmaster alone): the frozen
/// backends thaw and acknowledge their commits beside the new primary.
#[test]
fn frozen_primary_postgresql_with_the_old_fence_is_caught() {
    let cfg = SimConfig {
        fence_kills_frozen: false,
        ..scripted(25_000, vec![fault(FaultKind::PgFreeze, 0, 5_000, 8_000)])
    };
    let o = run(3, &cfg);
    let k = kinds(&o);
    assert!(
        k.contains(&"acknowledged-after-fence"),
        "{:?}",
        o.violations
    );
}

/// (f) Issue 14: the primary's watchdog is SIGKILLed. Its agent stops PostgreSQL at once
/// (the watchdog was armed), starts a new watchdog and restarts PostgreSQL in place.
#[test]
fn a_killed_watchdog_stops_the_primary_and_is_replaced() {
    let cfg = scripted(
        25_000,
        vec![fault(FaultKind::WatchdogKill, 0, 5_000, 10_000)],
    );
    let o = run(4, &cfg);
    assert_ok(&o);
    assert!(o.stats.converged_after_ms.is_some());
}

/// (f) fails with the old agent, which exited when it could not arm its watchdog and left
/// PostgreSQL running unfenced: a standby takes the expired lease beside it.
#[test]
fn a_killed_watchdog_with_the_old_agent_is_caught() {
    let cfg = SimConfig {
        watchdog_respawn: false,
        ..scripted(
            25_000,
            vec![fault(FaultKind::WatchdogKill, 0, 5_000, 10_000)],
        )
    };
    let o = run(4, &cfg);
    assert!(kinds(&o).contains(&"two-writers"), "{:?}", o.violations);
}

// ---- synchronous replication: rules the simulator showed necessary ------------------------

fn synchronous(mode: pgbaton_core::sync::SyncMode) -> SimConfig {
    let mut cfg = found_with();
    cfg.sync.mode = mode;
    cfg
}

fn assert_sync_ok(mode: pgbaton_core::sync::SyncMode, seeds: &[u64]) {
    for &seed in seeds {
        let o = run(seed, &synchronous(mode));
        assert!(
            !kinds(&o).contains(&"acknowledged-commit-lost"),
            "seed {seed} ({mode}): {:?}",
            o.violations
        );
        assert_ok(&o);
    }
}

/// Seeds 377 and 1986 (on) lost acknowledged commits when a new primary promoted without
/// first replacing the old leader's record with a blocked one of its own: its first
/// commits were acknowledged under the list its data directory came with, which the old
/// record did not cover. Fixed in `decide.rs` (`take_over_sync_set`). Seed 377 then also
/// found a primary that could not restart handing over to a standby the record did not
/// prove, and waiting for it for good (`decide/primary.rs`: only to a proven one).
#[test]
fn a_new_primary_blocks_the_old_synchronous_record_before_it_promotes() {
    assert_sync_ok(pgbaton_core::sync::SyncMode::On, &[377, 1986]);
}

/// Seeds 120, 343 and 409 (quorum) lost acknowledged commits when a candidate judged itself
/// the most advanced against reports made before the old primary's fence; seed 2293 when
/// the old primary had run on under failsafe after its lease went (reports made before
/// the failsafe promise ran out). Fixed: only reports made after this member saw the lease
/// gone and after its failsafe promise ran out count (`decide/standby.rs`,
/// `sync_proof_refused`).
#[test]
fn a_quorum_candidate_counts_only_reports_made_after_the_fence() {
    assert_sync_ok(pgbaton_core::sync::SyncMode::Quorum, &[120, 343, 409, 2293]);
}

/// Seed 1510 (on): a former primary took the free lease back after another member had
/// taken it and promoted (its report never reached the store), losing that member's
/// acknowledged commits. Fixed in `decide/primary.rs` (`former_primary_hold`): not while
/// another member recorded the synchronous set after it led.
#[test]
fn a_former_primary_does_not_take_back_a_lease_another_leader_recorded_after_it() {
    assert_sync_ok(pgbaton_core::sync::SyncMode::On, &[1510]);
}

/// Seeds 60 and 627 (on): the member that wrote the record (and lost its lease before it
/// set its standbys up) was refused the lease by its own blocked record, and the standbys
/// waited for a former primary that would never take it back: nobody led again. Fixed:
/// the record's leader may take the lease back (`sync::proof_refused`), and standbys wait
/// only for a former primary that may (`decide/standby.rs`).
#[test]
fn the_synchronous_record_s_leader_may_take_the_lease_back() {
    assert_sync_ok(pgbaton_core::sync::SyncMode::On, &[60, 627]);
}

/// Seed 4382 (on): `pgbaton promote n3` for a standby outside the synchronous set was
/// posted and then waited for its whole deadline, holding failover back. Fixed in
/// `ops::check` (refused unless forced) and `decide/operation.rs` (only a member of the
/// set waits for the others' reports). Seed 6835 (quorum): a switchover's new primary was
/// fenced right after promoting, and the operation, still in flight, held every member
/// back for 70 s. Fixed in `decide/operation.rs`: a switchover past its promotion holds
/// nothing back.
#[test]
fn operations_do_not_hold_a_synchronous_cluster_without_a_primary() {
    assert_sync_ok(pgbaton_core::sync::SyncMode::On, &[4382]);
    assert_sync_ok(pgbaton_core::sync::SyncMode::Quorum, &[6835]);
}

/// The checker itself: in asynchronous mode the same faults do lose acknowledged writes,
/// and the synchronous modes lose none over a range of seeds.
#[test]
fn acknowledged_commits_survive_in_synchronous_modes_only() {
    use pgbaton_core::sync::SyncMode;
    let lost = |mode| {
        (0..60u64)
            .map(|seed| run(seed, &synchronous(mode)))
            .inspect(|o| {
                assert!(
                    !kinds(o).contains(&"acknowledged-commit-lost"),
                    "{}",
                    o.seed
                )
            })
            .map(|o| o.stats.lost_acked_bytes)
            .sum::<u64>()
    };
    assert!(
        lost(SyncMode::Off) > 0,
        "asynchronous failover loses acknowledged writes"
    );
    assert_eq!(lost(SyncMode::On), 0);
    assert_eq!(lost(SyncMode::Quorum), 0);
}

/// Found 2026-12-02 by `pgbaton-sim --sweep 0 30000 --no-pg-faults --no-operations`, not
/// fixed yet (a liveness gap, no safety violation): a standby takes the lease and is promoted
/// on a new timeline just as the store goes down for everyone; unable to renew, it is fenced
/// before it could publish its new timeline. When the store is back, the former primary (its
/// own report fresh, the promoted member's record still on the old timeline) takes the lease
/// back on the old timeline; later the standbys end up on the new timeline more than
/// `failover.max_lag_bytes` behind the last primary's position and the former primary waits
/// for a leader on the newer timeline: nobody can lead without `pgbaton promote --force`.
#[test]
#[ignore = "a liveness gap found by the sweep, not fixed yet (see the comment)"]
fn store_outage_right_after_a_promotion_leaves_no_leader() {
    let cfg = SimConfig {
        pg_faults: false,
        operations: false,
        ..SimConfig::default()
    };
    assert_ok(&run(2356, &cfg));
}
