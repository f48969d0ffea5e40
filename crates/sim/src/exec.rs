//! The agents' executor: carrying out one action against the fake world.

use super::*;

impl Sim {
    pub(crate) fn done_in(&mut self, n: usize, dur: u64, r: Result<bool, String>) {
        let at = self.now + dur;
        self.step_at(at, n, Step::Done(r));
    }

    /// PostgreSQL gets to `to` after `dur`; the agent's action returns then.
    pub(crate) fn pg_after(&mut self, n: usize, dur: u64, to: Run, expect: Expect) {
        let at = self.now + dur;
        let pg_epoch = self.nodes[n].pg.epoch;
        self.push_at(
            at,
            Ev::PgTransition {
                node: n,
                pg_epoch,
                to,
            },
        );
        self.step_at(at, n, Step::PgDone(expect));
    }

    pub(crate) fn upstream_of(&self, up: &Upstream) -> Option<usize> {
        self.idx(&up.member)
    }

    /// Run the current action.
    pub(crate) fn exec(&mut self, n: usize) {
        let a = &self.nodes[n].agent;
        let Some(action) = a.actions.get(a.idx).cloned() else {
            self.publish(n);
            return;
        };
        let name = self.nodes[n].name.clone();
        let lat = self.lat();
        // As the agent does: a (re)start begins a new wait for streaming.
        if matches!(
            action,
            Action::Start { .. }
                | Action::Rejoin { .. }
                | Action::Reinit { .. }
                | Action::Clone { .. }
        ) {
            self.nodes[n].agent.not_streaming_since = None;
        }
        match action {
            Action::AcquireLease => self.store_send(n, StoreOp::Lease(LeaseOp::Acquire)),
            Action::RenewLease => self.store_send(n, StoreOp::Lease(LeaseOp::Renew)),
            Action::ReleaseLease { .. } => {
                if self.nodes[n].pg.run != Run::Stopped {
                    self.done_in(n, lat, Err("not releasing: PostgreSQL still runs".into()));
                } else {
                    self.store_send(n, StoreOp::Lease(LeaseOp::Release));
                }
            }
            Action::Start { upstream } => {
                let up = upstream.as_ref().and_then(|u| self.idx(&u.member));
                let pg = &mut self.nodes[n].pg;
                if pg.run != Run::Stopped {
                    self.done_in(n, lat, Ok(true));
                    return;
                }
                pg.run = Run::Starting;
                let to = if pg.standby_signal {
                    pg.upstream = up;
                    Run::Standby
                } else {
                    pg.upstream = None;
                    Run::Writable
                };
                let dur = self.rng.range(100, 500);
                self.log(|| format!("{name}: starting PostgreSQL as {to:?}"));
                self.pg_after(n, dur, to, Expect::Started);
            }
            Action::Stop { reason } => {
                self.log(|| format!("{name}: stopping PostgreSQL: {reason}"));
                self.pg_stop(n);
                let node = &mut self.nodes[n];
                node.agent.expect_running = false;
                if !node.agent.held {
                    node.wd = None;
                }
                self.done_in(n, lat, Ok(true));
            }
            Action::Promote => match self.nodes[n].pg.run {
                Run::Writable => self.done_in(n, lat, Ok(true)),
                Run::Standby => {
                    self.nodes[n].pg.run = Run::Promoting;
                    let dur = self.rng.range(50, 300);
                    self.log(|| format!("{name}: promoting"));
                    self.pg_after(n, dur, Run::Writable, Expect::Promoted);
                }
                _ => self.done_in(
                    n,
                    lat,
                    Err("no connection to PostgreSQL to promote it".into()),
                ),
            },
            Action::Follow { upstream } => {
                if matches!(self.nodes[n].pg.run, Run::Standby | Run::Promoting) {
                    self.nodes[n].pg.upstream = upstream.as_ref().and_then(|u| self.upstream_of(u));
                    self.done_in(n, lat, Ok(true));
                } else {
                    self.done_in(n, lat, Err("PostgreSQL is not running".into()));
                }
            }
            Action::EnsureSlots { names } => {
                if self.nodes[n].pg.running() {
                    self.nodes[n].pg.slots.extend(names);
                    self.done_in(n, lat, Ok(true));
                } else {
                    self.done_in(n, lat, Ok(false));
                }
            }
            Action::AdvanceSlots { .. } => {
                let ok = self.nodes[n].pg.running();
                self.done_in(n, lat, Ok(ok));
            }
            Action::DropSlots { names } => {
                if self.nodes[n].pg.running() {
                    for s in names {
                        self.nodes[n].pg.slots.remove(&s);
                    }
                    self.done_in(n, lat, Ok(true));
                } else {
                    self.done_in(n, lat, Ok(false));
                }
            }
            Action::Rejoin { upstream } => self.rejoin(n, &upstream),
            Action::Reinit { from } | Action::Clone { from } => self.reclone(n, &from),
            Action::Wait { reason } => {
                self.log(|| format!("{name}: waiting: {reason}"));
                self.publish(n);
            }
            Action::Fail { reason } => {
                self.violate("unexpected-fail", format!("{name}: {reason}"));
                self.publish(n);
            }
            other => {
                self.violate(
                    "unexpected-action",
                    format!("{name}: {other:?} (no operation or bootstrap is simulated)"),
                );
                self.publish(n);
            }
        }
    }

    /// Reachable and running: something pg_rewind / pg_basebackup can connect to.
    pub(crate) fn source_ok(&self, n: usize, u: usize) -> bool {
        u != n && self.peer_ok(n, u) && self.nodes[u].pg.running()
    }

    pub(crate) fn rejoin(&mut self, n: usize, up: &Upstream) {
        let name = self.nodes[n].name.clone();
        let lat = self.lat();
        if self.nodes[n].pg.run != Run::Stopped {
            self.done_in(n, lat, Err("PostgreSQL runs: not rejoining".into()));
            return;
        }
        let Some(u) = self.upstream_of(up).filter(|&u| self.source_ok(n, u)) else {
            let t = self.rng.range(10, 1_000);
            self.done_in(
                n,
                t,
                Err(format!("pg_rewind cannot connect to {}", up.member)),
            );
            return;
        };
        let mut dur = self.rng.range(10, 30);
        if let Err(at) = divergence(&self.nodes[n].pg, &self.nodes[u].pg) {
            if self.rng.per_mille(self.cfg.rewind_fail_per_mille) {
                self.stats.rejoin_failures += 1;
                self.nodes[n].agent.rejoin_failed = Some("pg_rewind could not rewind".into());
                self.done_in(n, 200, Err("pg_rewind failed".into()));
                return;
            }
            self.stats.rewinds += 1;
            let src = self.nodes[u].pg.clone();
            let pg = &mut self.nodes[n].pg;
            pg.hist = src.hist;
            pg.branch = src.branch;
            pg.lsn = at.min(src.lsn);
            dur += self.rng.range(200, 2_000);
            self.log(|| format!("{name}: pg_rewind from {}: back to {at}", up.member));
        }
        let pg = &mut self.nodes[n].pg;
        pg.standby_signal = true;
        pg.upstream = Some(u);
        pg.run = Run::Starting;
        let dur = dur + self.rng.range(100, 500);
        self.pg_after(n, dur, Run::Standby, Expect::Started);
    }

    pub(crate) fn reclone(&mut self, n: usize, from: &Upstream) {
        let lat = self.lat();
        let Some(u) = self.upstream_of(from).filter(|&u| self.source_ok(n, u)) else {
            self.done_in(n, lat, Err(format!("cannot connect to {}", from.member)));
            return;
        };
        self.pg_stop(n);
        self.nodes[n].agent.expect_running = false;
        let src = self.nodes[u].pg.clone();
        let pg = &mut self.nodes[n].pg;
        pg.hist = src.hist;
        pg.branch = src.branch;
        pg.lsn = src.lsn;
        pg.slots.clear();
        pg.standby_signal = true;
        pg.upstream = Some(u);
        pg.run = Run::Starting;
        let dur = self.rng.range(1_000, 3_000);
        self.pg_after(n, dur, Run::Standby, Expect::Started);
    }
}
