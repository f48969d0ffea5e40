//! Driving the real executor (`pgbaton_exec::Executor`): polling its plan by hand, and
//! carrying out what it asks of the fake world (store requests with their latency, and
//! PostgreSQL's transitions).

use super::*;
use crate::io::{PgReq, Rep, Req, StoreReq, Val};
use pgbaton_exec::{PlanEnd, StepError};
use std::task::{Context, Poll, Waker};

impl Sim {
    /// Start carrying out the plan `decide` returned.
    pub(crate) fn start_plan(
        &mut self,
        n: usize,
        plan: Vec<Action>,
        view: std::rc::Rc<ClusterView>,
        local: LocalView,
    ) {
        let Some(mut exec) = self.nodes[n].agent.exec.take() else {
            self.violate(
                "executor-busy",
                format!("{}: a plan while one runs", self.nodes[n].name),
            );
            return;
        };
        // What the agent remembers, for reports made while the plan runs.
        self.nodes[n].agent.mem = exec.mem.clone();
        let task = async move {
            let end = exec.run_plan(plan, &view, &local).await;
            (exec, end)
        };
        self.nodes[n].agent.task = Some(Box::pin(task));
        self.poll_plan(n);
    }

    /// Poll the node's plan until it waits for something that takes time, or ends.
    pub(crate) fn poll_plan(&mut self, n: usize) {
        let io = self.nodes[n].io.clone();
        loop {
            io.lock().unwrap_or_else(|e| e.into_inner()).now = self.now;
            let Some(task) = self.nodes[n].agent.task.as_mut() else {
                return;
            };
            let polled = task.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            self.watchdog_changes(n);
            match polled {
                Poll::Ready((exec, end)) => {
                    self.nodes[n].agent.task = None;
                    self.nodes[n].agent.exec = Some(exec);
                    self.plan_ended(n, end);
                    return;
                }
                Poll::Pending => {
                    let requests =
                        std::mem::take(&mut io.lock().unwrap_or_else(|e| e.into_inner()).requests);
                    if requests.is_empty() {
                        // Pending on nothing the world can answer: it would never end.
                        let name = self.nodes[n].name.clone();
                        self.violate("executor-stuck", format!("{name}: pending with no request"));
                        return;
                    }
                    let mut waiting = false;
                    for (id, req) in requests {
                        waiting |= !self.request(n, id, req);
                    }
                    if waiting {
                        return;
                    }
                }
            }
        }
    }

    /// Arming and disarming the watchdog take effect at once.
    fn watchdog_changes(&mut self, n: usize) {
        let (change, armed, tighten) = {
            let mut m = self.nodes[n].io();
            (
                m.wd_change.take(),
                std::mem::take(&mut m.armed),
                m.tighten.take(),
            )
        };
        if let Some(wd) = change {
            self.nodes[n].wd = wd;
        }
        if let Some(t) = tighten {
            if self.nodes[n].wd.is_some_and(|d| t < d) {
                self.nodes[n].wd = Some(t);
                self.push_at(t + self.cfg.watchdog_late_ms, Ev::Tick);
            }
        }
        for d in armed {
            self.push_at(d + self.cfg.watchdog_late_ms, Ev::Tick);
        }
    }

    fn plan_ended(&mut self, n: usize, end: PlanEnd) {
        let name = self.nodes[n].name.clone();
        // As the agent does: a plan that did not run to its end is observed again.
        if !matches!(end, PlanEnd::Ran) {
            self.nodes[n].agent.quiet = None;
        }
        match end {
            PlanEnd::Ran => {}
            PlanEnd::Removed => {
                self.log(|| format!("{name}: removed from the cluster: the agent exits"));
                self.nodes[n].removed = true;
                return;
            }
            PlanEnd::Failed(StepError::Fatal(why)) => {
                self.violate("unexpected-fail", format!("{name}: {why}"));
            }
            PlanEnd::Failed(StepError::StoreUnreachable(e)) => {
                // As the agent does: a primary whose renewal got no answer asks its peers.
                self.log(|| format!("{name}: action failed: {e:#}"));
                let held = self.nodes[n].agent.memory().held_lease;
                let writable = self.nodes[n].pg.run == Run::Writable;
                if self.cfg.failsafe && held && writable {
                    return self.failsafe_round(n);
                }
            }
            PlanEnd::Failed(e) => self.log(|| format!("{name}: action failed: {e}")),
        }
        self.publish(n);
    }

    /// A reply is due: put it in the mailbox and go on with the plan.
    pub(crate) fn reply(&mut self, n: usize, id: u64, rep: Rep) {
        self.nodes[n].io().replies.insert(id, rep);
        self.poll_plan(n);
    }

    fn reply_in(&mut self, n: usize, dur: u64, id: u64, rep: Rep) {
        let at = self.now + dur;
        self.step_at(
            at,
            n,
            Step::Reply {
                id,
                rep,
                via_store: false,
            },
        );
    }

    /// Carry out a request. `true`: answered at once (poll again now).
    fn request(&mut self, n: usize, id: u64, req: Req) -> bool {
        match req {
            Req::Store(r) => {
                self.store_send(n, StoreOp::Exec { id, req: r });
                false
            }
            Req::Publish(status) => {
                let pgrun = self.pg_run(n);
                let mut ms = self.member_state(n, &pgrun);
                ms.state = status;
                self.store_send(
                    n,
                    StoreOp::Put {
                        ms: Box::new(ms),
                        reply: Some(id),
                        alive: false,
                    },
                );
                false
            }
            Req::Pg(PgReq::Running) => {
                let running = self.nodes[n].pg.run != Run::Stopped;
                self.answer_now(n, id, Ok(Val::Bool(running)))
            }
            Req::Pg(PgReq::Fence) => {
                // Nothing of a stopped instance is left in the simulation.
                self.answer_now(n, id, Ok(Val::Unit))
            }
            Req::Pg(r) => {
                self.pg_request(n, id, r);
                false
            }
        }
    }

    /// Answered at once: the plan is polled again without time passing.
    fn answer_now(&mut self, n: usize, id: u64, rep: Rep) -> bool {
        self.nodes[n].io().replies.insert(id, rep);
        true
    }

    /// PostgreSQL gets to `to` after `dur`; the request is answered then.
    fn pg_after(&mut self, n: usize, dur: u64, id: u64, to: Run, expect: Expect) {
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
        self.step_at(at, n, Step::PgDone { id, expect });
    }

    /// A long PostgreSQL request finished: did PostgreSQL get where it was asked?
    pub(crate) fn pg_done(&mut self, n: usize, id: u64, expect: Expect) {
        let run = self.nodes[n].pg.run;
        let ok = match expect {
            Expect::Started => matches!(run, Run::Standby | Run::Writable),
            Expect::Promoted => run == Run::Writable,
        };
        let rep = if ok {
            Ok(Val::Unit)
        } else {
            Err(format!("{expect:?} failed: PostgreSQL is {run:?}"))
        };
        self.reply(n, id, rep);
    }

    pub(crate) fn upstream_of(&self, up: &Upstream) -> Option<usize> {
        self.idx(&up.member)
    }

    fn set_connected(&mut self, n: usize, connected: bool) {
        self.nodes[n].io().connected = connected;
    }

    fn pg_request(&mut self, n: usize, id: u64, req: PgReq) {
        let name = self.nodes[n].name.clone();
        let lat = self.lat();
        match req {
            PgReq::Start { standby, upstream } => self.pg_start(n, id, standby, upstream),
            PgReq::Stop => {
                self.log(|| format!("{name}: stopping PostgreSQL"));
                // A fast shutdown (not an immediate one) sends the WAL up to the shutdown
                // checkpoint to the standbys streaming from it before the walsenders exit.
                let lsn = self.nodes[n].pg.lsn;
                for i in 0..self.nodes.len() {
                    if self.streams_from(i) == Some(n) {
                        self.nodes[i].pg.lsn = self.nodes[i].pg.lsn.max(lsn);
                    }
                }
                let was_running = self.nodes[n].pg.run != Run::Stopped;
                self.pg_stop(n);
                if was_running {
                    self.nodes[n].pg.clean_stop = true;
                }
                self.set_connected(n, false);
                self.reply_in(n, lat, id, Ok(Val::Unit));
            }
            PgReq::ShutdownCheckpoint => {
                // As pg_control says: only a clean shutdown leaves a shutdown checkpoint.
                let pg = &self.nodes[n].pg;
                let rep = if pg.run == Run::Stopped && pg.clean_stop {
                    Ok(Val::Lsn(Lsn(pg.lsn)))
                } else {
                    Err("pg_control does not say \"shut down\"".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::Promote => match self.nodes[n].pg.run {
                Run::Writable => self.reply_in(n, lat, id, Ok(Val::Unit)),
                Run::Standby => {
                    self.nodes[n].pg.run = Run::Promoting;
                    let dur = self.rng.range(50, 300);
                    self.log(|| format!("{name}: promoting"));
                    self.pg_after(n, dur, id, Run::Writable, Expect::Promoted);
                }
                _ => {
                    let e = "no connection to PostgreSQL to promote it".to_string();
                    self.reply_in(n, lat, id, Err(e));
                }
            },
            PgReq::Follow(upstream) => {
                let rep = if matches!(self.nodes[n].pg.run, Run::Standby | Run::Promoting) {
                    self.nodes[n].pg.upstream = upstream.as_ref().and_then(|u| self.upstream_of(u));
                    Ok(Val::Unit)
                } else {
                    Err("PostgreSQL is not running".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::Reload => {
                let rep = if self.nodes[n].pg.running() {
                    Ok(Val::Unit)
                } else {
                    Err("PostgreSQL is not running".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::Rewind(up) => self.rewind(n, id, &up),
            PgReq::Clone { from } => self.reclone(n, id, &from),
            PgReq::EnsureSlot(s) => {
                let rep = if self.nodes[n].pg.running() {
                    let new = self.nodes[n].pg.slots.insert(s);
                    Ok(Val::Slot(if new {
                        SlotEnsured::Created
                    } else {
                        SlotEnsured::Existed
                    }))
                } else {
                    Err("PostgreSQL is not running".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::DropSlot(s) => {
                let rep = if self.nodes[n].pg.running() {
                    Ok(Val::Bool(self.nodes[n].pg.slots.remove(&s)))
                } else {
                    Err("PostgreSQL is not running".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::AdvanceSlot => self.reply_in(n, lat, id, Ok(Val::Unit)),
            PgReq::SyncNames => {
                let pg = &self.nodes[n].pg;
                let rep = if pg.running() {
                    Ok(Val::Names(pg.sync_names.clone()))
                } else {
                    Err("PostgreSQL is not running".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::SetSyncNames(names) => {
                let rep = if self.nodes[n].pg.running() {
                    self.log(|| format!("{name}: synchronous_standby_names = '{names}'"));
                    self.nodes[n].pg.sync_names = names;
                    Ok(Val::Unit)
                } else {
                    Err("PostgreSQL is not running".into())
                };
                self.reply_in(n, lat, id, rep);
            }
            PgReq::SyncBarrier(names) => self.sync_barrier(n, id, names),
            PgReq::Position => {
                let pg = &self.nodes[n].pg;
                let rep = if pg.running() {
                    Val::Position(Some(pg.timeline()), Some(Lsn(pg.lsn)))
                } else {
                    Val::Position(None, None)
                };
                self.reply_in(n, lat, id, Ok(rep));
            }
            PgReq::InitdbIfEmpty | PgReq::InitCluster | PgReq::Purge => {
                self.violate(
                    "unexpected-action",
                    format!("{name}: {req:?} (no bootstrap is simulated)"),
                );
                self.reply_in(n, lat, id, Err("not simulated".into()));
            }
            PgReq::Running | PgReq::Fence => unreachable!("answered at once"),
        }
    }

    fn pg_start(&mut self, n: usize, id: u64, standby: bool, upstream: Option<Upstream>) {
        let name = self.nodes[n].name.clone();
        let up = upstream.as_ref().and_then(|u| self.idx(&u.member));
        self.set_connected(n, false);
        let pg = &mut self.nodes[n].pg;
        if pg.run != Run::Stopped {
            let lat = self.lat();
            self.reply_in(n, lat, id, Ok(Val::Unit));
            return;
        }
        pg.run = Run::Starting;
        pg.standby_signal = standby;
        let to = if standby {
            pg.upstream = up;
            Run::Standby
        } else {
            pg.upstream = None;
            Run::Writable
        };
        let dur = self.rng.range(100, 500);
        self.log(|| format!("{name}: starting PostgreSQL as {to:?}"));
        self.pg_after(n, dur, id, to, Expect::Started);
    }

    /// Reachable and running: something pg_rewind / pg_basebackup can connect to.
    pub(crate) fn source_ok(&self, n: usize, u: usize) -> bool {
        u != n && self.peer_ok(n, u) && self.nodes[u].pg.running()
    }

    fn rewind(&mut self, n: usize, id: u64, up: &Upstream) {
        let name = self.nodes[n].name.clone();
        let lat = self.lat();
        if self.nodes[n].pg.run != Run::Stopped {
            self.reply_in(n, lat, id, Err("PostgreSQL runs: not rewinding".into()));
            return;
        }
        let Some(u) = self.upstream_of(up).filter(|&u| self.source_ok(n, u)) else {
            let t = self.rng.range(10, 1_000);
            let e = format!("pg_rewind cannot connect to {}", up.member);
            let rep = if self.cfg.rewind_unreachable_is_retried {
                Ok(Val::Rewind(Rewind::SourceUnreachable(e)))
            } else {
                Err(e)
            };
            self.reply_in(n, t, id, rep);
            return;
        };
        let mut dur = self.rng.range(10, 30);
        let mut rep = Ok(Val::Rewind(Rewind::NotNeeded));
        if let Err(at) = divergence(&self.nodes[n].pg, &self.nodes[u].pg) {
            if self.rng.per_mille(self.cfg.rewind_fail_per_mille) {
                self.stats.rejoin_failures += 1;
                self.reply_in(n, 200, id, Err("pg_rewind could not rewind".into()));
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
            rep = Ok(Val::Rewind(Rewind::Rewound {
                diverged_at: at.to_string(),
            }));
        }
        self.reply_in(n, dur, id, rep);
    }

    fn reclone(&mut self, n: usize, id: u64, from: &Upstream) {
        let lat = self.lat();
        let Some(u) = self.upstream_of(from).filter(|&u| self.source_ok(n, u)) else {
            self.reply_in(
                n,
                lat,
                id,
                Err(format!("cannot connect to {}", from.member)),
            );
            return;
        };
        if self.nodes[n].pg.run != Run::Stopped {
            self.reply_in(
                n,
                lat,
                id,
                Err("PostgreSQL runs: not cloning over it".into()),
            );
            return;
        }
        let src = self.nodes[u].pg.clone();
        let pg = &mut self.nodes[n].pg;
        pg.hist = src.hist;
        pg.branch = src.branch;
        pg.lsn = src.lsn;
        pg.slots.clear();
        pg.standby_signal = true;
        // pg_basebackup copies postgresql.auto.conf, and with it the source's list.
        pg.sync_names = src.sync_names;
        let dur = self.rng.range(1_000, 3_000);
        self.reply_in(n, dur, id, Ok(Val::Unit));
    }

    /// The barrier: the flushed position now, then (after the standbys had time to stream
    /// it, as the agent polls) whether enough listed standbys have it.
    fn sync_barrier(&mut self, n: usize, id: u64, names: SyncNames) {
        let target = self.nodes[n].pg.lsn;
        let wait = self.lat()
            + self.nodes.iter().map(|x| x.lag).max().unwrap_or(0) / WRITE_BYTES_PER_MS
            + 1;
        self.step_at(self.now + wait, n, Step::Barrier { id, target, names });
    }

    pub(crate) fn barrier_done(&mut self, n: usize, id: u64, target: u64, names: &SyncNames) {
        let have = (0..self.nodes.len())
            .filter(|&i| self.streams_from(i) == Some(n))
            .filter(|&i| names.priority_of(&self.nodes[i].name) > 0)
            .filter(|&i| self.nodes[i].pg.lsn >= target)
            .count();
        let need = names.acks() as usize;
        let rep = if need > 0 && have >= need && self.nodes[n].pg.running() {
            Ok(Val::Unit)
        } else {
            Err(format!(
                "barrier at {target}: {have} of {need} listed standbys have it"
            ))
        };
        self.reply(n, id, rep);
    }

    /// The store's answer to an executor request (the world's store, at the store).
    pub(crate) fn store_exec(&mut self, n: usize, req: StoreReq) -> Rep {
        let name = self.nodes[n].name.clone();
        let now = self.now;
        Ok(match req {
            StoreReq::Acquire(ttl) => Val::Bool(self.lease_apply(n, LeaseOp::Acquire, ttl)),
            StoreReq::Renew(ttl) => Val::Bool(self.lease_apply(n, LeaseOp::Renew, ttl)),
            StoreReq::Release => Val::Bool(self.lease_apply(n, LeaseOp::Release, 0)),
            StoreReq::LeaderGet => {
                Val::Leader(self.store.lease.clone().filter(|l| l.expires_ms > now))
            }
            StoreReq::MemberGet(m) => {
                Val::Member(self.store.members.get(&m).cloned().map(Box::new))
            }
            StoreReq::MemberDelete(m) => {
                self.store.alive.remove(&m);
                Val::Bool(self.store.members.remove(&m).is_some())
            }
            StoreReq::OpUpdate { id, phase, new } => {
                let current = self
                    .store
                    .op
                    .as_ref()
                    .is_some_and(|o| o.id == id && o.phase == phase);
                if current {
                    self.log(|| format!("store: {name} moves operation {id} to {:?}", new.phase));
                    self.store.op = Some(*new);
                }
                Val::Bool(current)
            }
            StoreReq::HistoryAppend(e) => {
                self.store.history.push(*e);
                Val::Unit
            }
            StoreReq::SyncGet => Val::Text(self.store.sync.clone()),
            StoreReq::SyncCas { expected, new } => {
                let leads = self
                    .store
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.member == name && l.expires_ms > now);
                let ok = leads && self.store.sync == expected;
                if ok {
                    self.log(|| format!("store: {name} records the synchronous set {new:?}"));
                    self.store.sync = new;
                }
                Val::Bool(ok)
            }
            StoreReq::InitializeClaim | StoreReq::InitializeReplace => {
                self.violate(
                    "unexpected-action",
                    format!("{name}: {req:?} (no bootstrap is simulated)"),
                );
                return Err("not simulated".into());
            }
        })
    }
}
