//! `/metrics`: Prometheus (OpenMetrics text) built from the loop's last snapshot on each
//! scrape. Names carry the `pgbaton_` prefix and unit suffixes.

use super::{read, ApiState};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use pgbaton_core::model::{MemberStatus, Role};
use pgbaton_store::now_ms;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

fn fgauge(reg: &mut Registry, name: &str, help: &str, v: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The exposition text for this agent's view.
fn archive_metrics(reg: &mut Registry, a: &pgbaton_core::model::ArchiveStatus) {
    gauge(
        reg,
        "archive_waiting_files",
        "WAL files waiting for the archiver (each is kept in pg_wal until archived)",
        a.waiting as i64,
    );
    gauge(
        reg,
        "archive_oldest_waiting_seconds",
        "Age of the oldest WAL file waiting for the archiver (0 when none waits)",
        a.oldest_waiting_s.unwrap_or(0) as i64,
    );
    counter(
        reg,
        "archive_failures",
        "Archiver failures (pg_stat_archiver.failed_count)",
        a.failed_count,
    );
    gauge(
        reg,
        "archive_stuck",
        "1 when the archiver is stuck: a file waited over 2 minutes, or it failed within them with files waiting (alert on it: pg_wal grows until fixed)",
        a.stuck() as i64,
    );
    if let Some(m) = a.missing_segments {
        gauge(
            reg,
            "archive_missing_segments",
            "Leader: segments the last archive check found missing across timelines",
            m as i64,
        );
        gauge(
            reg,
            "archive_missing_history_files",
            "Leader: timeline history files the last archive check found missing",
            a.missing_history.len() as i64,
        );
    }
}

/// Synchronous replication: this standby's role; on the leader, the set and degradation.
fn sync_metrics(
    reg: &mut Registry,
    f: &pgbaton_core::health::Facts,
    me: Option<&pgbaton_core::model::MemberState>,
    view: Option<&pgbaton_core::decide::ClusterView>,
) {
    gauge(
        reg,
        "sync_standby",
        "1 when this standby is synchronous (on) or in the commit quorum (quorum), and the store's record lists it",
        f.sync.is_some() as i64,
    );
    let Some(report) = me
        .and_then(|m| m.synchronous.as_ref())
        .filter(|_| f.is_leader)
    else {
        return;
    };
    gauge(
        reg,
        "sync_degraded",
        "Leader: 1 when synchronous replication is configured but commits wait for no standby (none eligible, not strict)",
        report.degraded() as i64,
    );
    let names = pgbaton_core::sync::SyncNames::parse(&report.standby_names);
    gauge(
        reg,
        "sync_acks_required",
        "Leader: how many standbys acknowledge each commit (0: asynchronous)",
        names.acks() as i64,
    );
    let record = view.and_then(|v| v.sync.as_ref());
    gauge(
        reg,
        "sync_set_members",
        "Leader: members of the synchronous set recorded in the store",
        record.map_or(0, |r| r.members.len()) as i64,
    );
    gauge(
        reg,
        "sync_failover_possible",
        "Leader: 1 when the recorded set proves a standby may take over without loss",
        record.is_some_and(|r| !r.is_blocked()) as i64,
    );
}

pub fn render(st: &ApiState) -> String {
    let s = read(&st.shared);
    let f = super::facts(&s, &st.cfg);
    let mut reg = Registry::with_prefix("pgbaton");
    let me = s.member.as_ref();
    let running = me.is_some_and(|m| {
        matches!(
            m.state,
            MemberStatus::Running | MemberStatus::Streaming | MemberStatus::Replaying
        )
    });
    gauge(
        &mut reg,
        "postgres_running",
        "1 when this member's PostgreSQL runs",
        running as i64,
    );
    gauge(
        &mut reg,
        "primary",
        "1 when this member runs the primary",
        me.is_some_and(|m| m.role == Role::Primary && running) as i64,
    );
    gauge(
        &mut reg,
        "standby",
        "1 when this member runs a standby",
        me.is_some_and(|m| m.role == Role::Standby && running) as i64,
    );
    gauge(
        &mut reg,
        "streaming",
        "1 when this standby streams from its upstream",
        me.is_some_and(|m| m.state == MemberStatus::Streaming) as i64,
    );
    gauge(
        &mut reg,
        "leader",
        "1 when this member holds the leader lease",
        f.is_leader as i64,
    );
    // The timing the agent runs with (node.toml's, or the cluster's config over it).
    fgauge(
        &mut reg,
        "lease_ttl_seconds",
        "The leader lease TTL this agent runs with (timing.ttl_ms)",
        s.timing.ttl_ms as f64 / 1000.0,
    );
    fgauge(
        &mut reg,
        "loop_interval_seconds",
        "The loop interval this agent runs with (timing.loop_interval_ms)",
        s.timing.loop_interval_ms as f64 / 1000.0,
    );
    if let Some(m) = me {
        if let Some(t) = m.timeline {
            gauge(&mut reg, "timeline", "PostgreSQL timeline", t as i64);
        }
        if let Some(l) = m.lsn {
            gauge(
                &mut reg,
                "wal_position_bytes",
                "Primary: current WAL LSN; standby: last replayed, as a byte position",
                l.0 as i64,
            );
        }
        if let Some(l) = m.receive_lsn {
            gauge(
                &mut reg,
                "wal_received_position_bytes",
                "Standby: last received WAL LSN, as a byte position",
                l.0 as i64,
            );
        }
    }
    if let Some(lag) = f.lag_bytes {
        gauge(
            &mut reg,
            "replication_lag_bytes",
            "WAL this member has yet to replay to reach the primary's last report",
            lag as i64,
        );
    }
    if let Some(ms) = s.replay_lag_ms {
        fgauge(&mut reg, "replication_lag_seconds", "Time since the last replayed transaction was committed on the primary (0 when caught up)", ms as f64 / 1000.0);
    }
    if let Some(m) = me {
        gauge(
            &mut reg,
            "pending_restart",
            "1 when parameters changed in the config wait for a restart of PostgreSQL (`pgbaton restart --pending`)",
            i64::from(!m.pending_restart.is_empty()),
        );
    }
    if let Some(a) = me.and_then(|m| m.archive.as_ref()) {
        archive_metrics(&mut reg, a);
    }
    sync_metrics(&mut reg, &f, me, s.view.as_ref());
    let slots: Family<Labels, Gauge> = Family::default();
    let slot_active: Family<Labels, Gauge> = Family::default();
    for sl in me.map(|m| m.slots.as_slice()).unwrap_or_default() {
        let l = vec![("slot".to_string(), sl.name.clone())];
        slots
            .get_or_create(&l)
            .set(sl.retained_bytes.unwrap_or(0) as i64);
        slot_active.get_or_create(&l).set(sl.active as i64);
    }
    reg.register(
        "slot_retained_wal_bytes",
        "WAL a replication slot holds back on this member",
        slots,
    );
    reg.register(
        "slot_active",
        "1 when someone streams through the slot",
        slot_active,
    );
    let holder: Family<Labels, Gauge> = Family::default();
    if let Some(l) = s
        .view
        .as_ref()
        .and_then(|v| v.leader.as_ref())
        .filter(|l| l.expires_ms > now_ms())
    {
        holder
            .get_or_create(&vec![("member".to_string(), l.member.clone())])
            .set(1);
    }
    reg.register(
        "cluster_leader",
        "The member that holds the leader lease (value 1)",
        holder,
    );
    fgauge(
        &mut reg,
        "loop_duration_seconds",
        "How long the agent's last loop took",
        s.last_loop_duration.as_secs_f64(),
    );
    let age = s
        .last_loop
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(f64::INFINITY);
    fgauge(
        &mut reg,
        "loop_age_seconds",
        "Time since the agent's loop last ran",
        age,
    );
    if let Some(d) = s.fence_deadline {
        fgauge(
            &mut reg,
            "fence_seconds_left",
            "Time until the fence watchdog stops PostgreSQL unless the lease is renewed (while armed)",
            d.saturating_duration_since(std::time::Instant::now()).as_secs_f64(),
        );
    }
    gauge(
        &mut reg,
        "store_unreadable_records",
        "Member records in the store this agent cannot read (left out of its decisions)",
        s.view.as_ref().map_or(0, |v| v.unreadable.len() as i64),
    );
    gauge(
        &mut reg,
        "failsafe_promise",
        "1 while this member has promised a primary, over the failsafe API, not to take the lease",
        s.failsafe.promised(now_ms()) as i64,
    );
    counter(
        &mut reg,
        "failsafe_rounds",
        "Rounds in which this primary, without the store, asked every member to confirm it",
        s.failsafe_rounds,
    );
    counter(
        &mut reg,
        "failsafe_confirmed_rounds",
        "Failsafe rounds every other member confirmed (the primary kept serving)",
        s.failsafe_confirmed,
    );
    counter(
        &mut reg,
        "promotions",
        "Promotions this agent performed (failovers and switchovers to it)",
        s.promotions,
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

pub async fn metrics(State(st): State<ApiState>) -> Response {
    let body = render(&st);
    if body.is_empty() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode the metrics",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
