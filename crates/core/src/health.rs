//! What the agent's health endpoints answer, with Patroni's status-code semantics so that
//! HAProxy, pgbouncer and keepalived setups built for Patroni carry over: 200 or 503 only.
//! Pure: the agent passes what its loop last saw.

use crate::model::{MemberState, MemberStatus, Role};
use crate::sync::SyncRole;

/// A health endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/primary`, `/read-write`, `/leader`: holds the lease and runs the primary.
    Primary,
    /// `/replica`: a running standby (not tagged noloadbalance), within `?lag=`.
    Replica,
    /// `/read-only`: accepts reads: the primary or a running standby.
    ReadOnly,
    /// `/sync`, `/synchronous`: a synchronous standby (mode `on`).
    Sync,
    /// `/quorum`: a standby in the commit quorum (mode `quorum`).
    Quorum,
    /// `/async`: an asynchronous running standby.
    Async,
    /// `/health`: PostgreSQL runs.
    Health,
    /// `/readiness`: the leader's running primary, or a streaming standby within the lag limit.
    Readiness,
}

impl Endpoint {
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Some(match path.trim_end_matches('/') {
            "/primary" | "/read-write" | "/leader" | "/master" => Endpoint::Primary,
            "/replica" | "/standby" => Endpoint::Replica,
            "/read-only" => Endpoint::ReadOnly,
            "/sync" | "/synchronous" => Endpoint::Sync,
            "/quorum" => Endpoint::Quorum,
            "/async" | "/asynchronous" => Endpoint::Async,
            "/health" => Endpoint::Health,
            "/readiness" => Endpoint::Readiness,
            _ => return None,
        })
    }
}

/// Query parameters the endpoints understand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// `?lag=`: the most a standby may be behind, in bytes.
    pub max_lag_bytes: Option<u64>,
    /// `?replication_state=streaming`: only a standby in that state.
    pub replication_state: Option<String>,
}

/// Parse a size: bytes, or a number with a unit (`16MB`, `1 GB`, `512kB`; units of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("not a size: {s:?} (expected bytes or a number with B, kB, MB, GB, TB)")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (expected B, kB, MB, GB or TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

impl Query {
    /// From a raw query string. Unknown parameters are ignored (as Patroni does); a bad
    /// value is an error, answered with 400.
    pub fn parse(raw: Option<&str>) -> Result<Query, String> {
        let mut q = Query::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "lag" => q.max_lag_bytes = Some(parse_size(v)?),
                "replication_state" => q.replication_state = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// What the agent knows when a health check arrives.
pub struct Facts<'a> {
    /// Its own last published state (None before the first loop).
    pub me: Option<&'a MemberState>,
    /// It holds the leader lease.
    pub is_leader: bool,
    /// Bytes this standby is behind the primary's last report, when known.
    pub lag_bytes: Option<u64>,
    /// The member is tagged noloadbalance.
    pub noloadbalance: bool,
    /// The agent's loop ran recently.
    pub loop_alive: bool,
    /// This standby's part in synchronous replication (`sync::role_of` on the last view).
    pub sync: Option<SyncRole>,
}

fn running(m: &MemberState) -> bool {
    matches!(
        m.state,
        MemberStatus::Running | MemberStatus::Streaming | MemberStatus::Replaying
    )
}

fn running_standby(m: &MemberState) -> bool {
    m.role == Role::Standby && matches!(m.state, MemberStatus::Streaming | MemberStatus::Replaying)
}

/// 200 (`true`) or 503 (`false`).
pub fn healthy(ep: Endpoint, f: &Facts, q: &Query) -> bool {
    let Some(m) = f.me else { return false };
    if !f.loop_alive && ep != Endpoint::Health {
        return false;
    }
    let within_lag = |limit: Option<u64>| match limit {
        None => true,
        Some(max) => f.lag_bytes.is_some_and(|l| l <= max),
    };
    let state_ok = q
        .replication_state
        .as_deref()
        .is_none_or(|want| m.state.as_str() == want);
    let primary = f.is_leader && m.role == Role::Primary && m.state == MemberStatus::Running;
    match ep {
        Endpoint::Primary => primary,
        Endpoint::Replica => {
            running_standby(m) && !f.noloadbalance && within_lag(q.max_lag_bytes) && state_ok
        }
        Endpoint::ReadOnly => {
            primary || (running_standby(m) && within_lag(q.max_lag_bytes) && state_ok)
        }
        Endpoint::Sync => running_standby(m) && f.sync == Some(SyncRole::Sync) && state_ok,
        Endpoint::Quorum => running_standby(m) && f.sync == Some(SyncRole::Quorum) && state_ok,
        Endpoint::Async => {
            running_standby(m) && f.sync.is_none() && within_lag(q.max_lag_bytes) && state_ok
        }
        Endpoint::Health => running(m),
        Endpoint::Readiness => {
            primary
                || (m.role == Role::Standby
                    && m.state == MemberStatus::Streaming
                    && within_lag(q.max_lag_bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, state: MemberStatus) -> MemberState {
        MemberState::sample("n1", role, state, 0)
    }

    fn facts(me: &MemberState, is_leader: bool, lag: Option<u64>) -> Facts<'_> {
        Facts {
            me: Some(me),
            is_leader,
            lag_bytes: lag,
            noloadbalance: false,
            loop_alive: true,
            sync: None,
        }
    }

    fn codes(f: &Facts, q: &Query) -> Vec<(Endpoint, bool)> {
        use Endpoint::*;
        [Primary, Replica, ReadOnly, Sync, Async, Health, Readiness]
            .iter()
            .map(|e| (*e, healthy(*e, f, q)))
            .collect()
    }

    #[test]
    fn primary_answers_primary_read_only_health_readiness() {
        let p = m(Role::Primary, MemberStatus::Running);
        let got = codes(&facts(&p, true, Some(0)), &Query::default());
        use Endpoint::*;
        assert_eq!(
            got,
            vec![
                (Primary, true),
                (Replica, false),
                (ReadOnly, true),
                (Sync, false),
                (Async, false),
                (Health, true),
                (Readiness, true)
            ]
        );
        // A primary without the lease is not the primary for a load balancer.
        assert!(!healthy(
            Primary,
            &facts(&p, false, None),
            &Query::default()
        ));
    }

    #[test]
    fn streaming_standby_answers_replica_and_lag_limits_it() {
        let s = m(Role::Standby, MemberStatus::Streaming);
        let q = Query::default();
        use Endpoint::*;
        assert_eq!(
            codes(&facts(&s, false, Some(100)), &q),
            vec![
                (Primary, false),
                (Replica, true),
                (ReadOnly, true),
                (Sync, false),
                (Async, true),
                (Health, true),
                (Readiness, true)
            ]
        );
        let lag = Query::parse(Some("lag=1MB")).unwrap();
        assert!(healthy(Replica, &facts(&s, false, Some(1 << 20)), &lag));
        assert!(!healthy(
            Replica,
            &facts(&s, false, Some((1 << 20) + 1)),
            &lag
        ));
        assert!(
            !healthy(Replica, &facts(&s, false, None), &lag),
            "unknown lag fails a lag limit"
        );
        let mut f = facts(&s, false, Some(0));
        f.noloadbalance = true;
        assert!(!healthy(Replica, &f, &q) && healthy(ReadOnly, &f, &q));
    }

    #[test]
    fn replaying_standby_fails_replication_state_streaming_and_readiness() {
        let s = m(Role::Standby, MemberStatus::Replaying);
        let q = Query::parse(Some("replication_state=streaming")).unwrap();
        assert!(healthy(
            Endpoint::Replica,
            &facts(&s, false, Some(0)),
            &Query::default()
        ));
        assert!(!healthy(Endpoint::Replica, &facts(&s, false, Some(0)), &q));
        assert!(!healthy(
            Endpoint::Readiness,
            &facts(&s, false, Some(0)),
            &Query::default()
        ));
    }

    #[test]
    fn stopped_or_unknown_answers_nothing() {
        for st in [
            MemberStatus::Stopped,
            MemberStatus::Crashed,
            MemberStatus::Starting,
        ] {
            let x = m(Role::Standby, st);
            assert!(
                codes(&facts(&x, false, None), &Query::default())
                    .iter()
                    .all(|(_, ok)| !ok),
                "{st}"
            );
        }
        let none = Facts {
            me: None,
            is_leader: true,
            lag_bytes: None,
            noloadbalance: false,
            loop_alive: true,
            sync: None,
        };
        assert!(!healthy(Endpoint::Health, &none, &Query::default()));
        // A frozen loop fails everything but /health.
        let p = m(Role::Primary, MemberStatus::Running);
        let mut f = facts(&p, true, None);
        f.loop_alive = false;
        assert!(
            !healthy(Endpoint::Primary, &f, &Query::default())
                && healthy(Endpoint::Health, &f, &Query::default())
        );
    }

    #[test]
    fn sync_quorum_and_async_follow_the_standby_s_synchronous_role() {
        let s = m(Role::Standby, MemberStatus::Streaming);
        let q = Query::default();
        use Endpoint::*;
        let answers = |role| {
            let mut f = facts(&s, false, Some(0));
            f.sync = role;
            [Sync, Quorum, Async].map(|e| healthy(e, &f, &q))
        };
        assert_eq!(answers(Some(SyncRole::Sync)), [true, false, false]);
        assert_eq!(answers(Some(SyncRole::Quorum)), [false, true, false]);
        assert_eq!(answers(None), [false, false, true]);
        assert_eq!(Endpoint::from_path("/quorum"), Some(Quorum));
        assert_eq!(Endpoint::from_path("/synchronous"), Some(Sync));
        // The primary is none of them.
        let p = m(Role::Primary, MemberStatus::Running);
        let mut f = facts(&p, true, Some(0));
        f.sync = Some(SyncRole::Sync);
        assert!(!healthy(Sync, &f, &q));
    }

    #[test]
    fn sizes_and_queries_parse_or_say_why_not() {
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert_eq!(parse_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(
            parse_size("fast").is_err() && parse_size("1XB").is_err() && parse_size("").is_err()
        );
        assert!(parse_size("99999999999TB").is_err());
        assert!(Query::parse(Some("lag=oops")).is_err());
        assert_eq!(
            Query::parse(Some("foo=bar&&lag=1kB"))
                .unwrap()
                .max_lag_bytes,
            Some(1024)
        );
        assert_eq!(Endpoint::from_path("/read-write/"), Some(Endpoint::Primary));
        assert_eq!(Endpoint::from_path("/nope"), None);
    }
}
