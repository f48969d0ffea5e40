//! The simulated world: the clock and event queue, time passing (writes, streaming), the
//! watchdogs, PostgreSQL's transitions, and the end of a run.

use super::*;

impl Sim {
    pub(crate) fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let t = START_MS;
        let n = cfg.nodes;
        let names: Vec<String> = (0..n).map(|i| format!("n{}", i + 1)).collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let primary = i == 0;
            let lag = match &cfg.lag_bytes {
                Some(l) => l[i],
                None => rng.range(0, 4096),
            };
            let slots = if primary {
                names[1..].iter().map(|m| slot_name_for(m)).collect()
            } else {
                BTreeSet::new()
            };
            nodes.push(Node {
                name: name.clone(),
                pg: Pg {
                    run: if primary { Run::Writable } else { Run::Standby },
                    epoch: 0,
                    standby_signal: !primary,
                    upstream: if primary { None } else { Some(0) },
                    hist: vec![],
                    branch: 0,
                    lsn: INITIAL_LSN - if primary { 0 } else { lag },
                    slots,
                    clean_stop: false,
                    sync_names: SyncNames::Off,
                },
                agent: Agent::default(),
                io: Default::default(),
                removed: false,
                wd: primary.then(|| fence_deadline_ms(t, cfg.ttl_ms, cfg.fence_margin_ms)),
                node_down: 0,
                agent_down: 0,
                frozen: 0,
                store_cut: 0,
                view_late: 0,
                peer_cut: 0,
                lag,
                pg_frozen: 0,
                frozen_pg_epoch: 0,
                fenced_epoch: None,
                zombie: false,
                ttl_ms: cfg.ttl_ms,
            });
        }
        let heal_at = t + cfg.fault_ms;
        let mut sim = Sim {
            seed,
            cfg: cfg.clone(),
            rng,
            now: t,
            last_advance: t,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            store: Store {
                lease: Some(Leader {
                    member: names[0].clone(),
                    expires_ms: t + cfg.ttl_ms,
                }),
                ..Default::default()
            },
            branches: vec![(0, INITIAL_LSN)],
            acked: vec![INITIAL_LSN],
            faults: vec![],
            fs_next: 0,
            last_published_primary_lsn: None,
            split: false,
            gap: 0,
            conv_since: None,
            heal_at,
            end_at: heal_at + cfg.settle_ms,
            violations: vec![],
            stats: Stats::default(),
            promotions: vec![],
            fences: vec![],
            trace: vec![],
            agent_exits: BTreeSet::new(),
            ops_posted: 0,
        };
        sim.initial_sync_set(&names);
        for i in 0..n {
            let mut exec = sim.new_executor(i);
            // Running from a built cluster: each agent has seen its PostgreSQL, and the
            // primary's holds the lease.
            exec.mem.answered();
            exec.mem.held_lease = i == 0;
            sim.nodes[i].agent.exec = Some(exec);
            sim.nodes[i].io().failsafe.set_leading(i == 0);
            let pgrun = sim.observe(i);
            let ms = sim.member_state(i, &pgrun);
            if i == 0 {
                sim.last_published_primary_lsn = ms.lsn.map(|l| l.0);
            }
            sim.store.members.insert(ms.name.clone(), ms);
            let at = t + sim.rng.range(0, cfg.loop_ms - 1);
            sim.push_at(
                at,
                Ev::Step {
                    node: i,
                    epoch: 0,
                    step: Step::LoopStart,
                },
            );
        }
        sim.push_at(t + cfg.fence_margin_ms, Ev::Tick);
        for f in cfg.script.clone() {
            sim.add_fault(f);
        }
        if cfg.random_faults {
            let first = t + sim.rng.range(2_000, 8_000);
            sim.push_at(first, Ev::NextFault);
            if cfg.retime {
                sim.add_retimes(seed);
            }
        }
        sim
    }

    /// A fresh executor for node `n` (a new agent process: it remembers nothing).
    pub(crate) fn new_executor(&self, n: usize) -> SimExec {
        let name = self.nodes[n].name.clone();
        let io = self.nodes[n].io.clone();
        let store = io::SimStore {
            io: io.clone(),
            name: name.clone(),
        };
        let host = io::SimHost {
            io: io.clone(),
            name: name.clone(),
            fence_margin_ms: self.cfg.fence_margin_ms,
            tighten: self.cfg.tighten_before_shorter_ttl,
        };
        let settings = pgbaton_exec::Settings {
            name,
            ttl_ms: self.nodes[n].ttl_ms,
        };
        pgbaton_exec::Executor::new(settings, std::sync::Arc::new(store), io::SimPg { io }, host)
    }

    pub(crate) fn rel(&self, t: u64) -> u64 {
        t - START_MS
    }

    pub(crate) fn log(&mut self, msg: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>7} {}", self.rel(self.now), msg());
            self.trace.push(line);
        }
    }

    pub(crate) fn push_at(&mut self, t: u64, ev: Ev) {
        let t = t.max(self.now);
        self.seq += 1;
        self.queue.push(Queued {
            t,
            seq: self.seq,
            ev,
        });
    }

    pub(crate) fn step_at(&mut self, t: u64, node: usize, step: Step) {
        let epoch = self.nodes[node].agent.epoch;
        self.push_at(t, Ev::Step { node, epoch, step });
    }

    pub(crate) fn lat(&mut self) -> u64 {
        self.rng.range(1, 30)
    }

    pub(crate) fn store_reach(&self, n: usize) -> bool {
        self.store.down == 0 && self.nodes[n].store_cut == 0 && self.nodes[n].node_down == 0
    }

    pub(crate) fn peer_ok(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.peer_cut == 0 && y.peer_cut == 0 && x.node_down == 0 && y.node_down == 0
    }

    pub(crate) fn idx(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub(crate) fn main_loop(&mut self) {
        while let Some(q) = self.queue.pop() {
            if q.t > self.end_at {
                break;
            }
            self.now = q.t;
            self.stats.events += 1;
            self.advance();
            self.watchdogs();
            self.handle(q.ev);
            self.watchdogs();
            self.check();
        }
        self.now = self.end_at;
        self.advance();
        self.watchdogs();
        self.check();
    }

    /// A built cluster in synchronous mode starts with its list set and recorded (so every
    /// commit of the run is acknowledged under the mode).
    fn initial_sync_set(&mut self, names: &[String]) {
        let s = &self.cfg.sync;
        let standbys = names[1..].to_vec();
        let list = match s.mode {
            SyncMode::Off => return,
            SyncMode::On => {
                let chosen: Vec<String> =
                    standbys.into_iter().take(s.node_count as usize).collect();
                SyncNames::First {
                    num: chosen.len() as u32,
                    names: chosen,
                }
            }
            SyncMode::Quorum => SyncNames::Any {
                num: s.node_count.min(standbys.len() as u32),
                names: standbys,
            },
        };
        let record = SyncRecord::for_names(&names[0], &list);
        self.store.sync = Some(pgbaton_store::sync_record_text(&record));
        self.nodes[0].pg.sync_names = list;
    }

    /// The acknowledged position of writer `w` now: the `acks`-th most advanced of the
    /// standbys its list names that stream from it (all of it when the list names none).
    fn ack_position(&self, w: usize) -> u64 {
        let pg = &self.nodes[w].pg;
        let (num, wildcard) = match &pg.sync_names {
            SyncNames::Off | SyncNames::Other(_) => return pg.lsn,
            SyncNames::First { num, names } | SyncNames::Any { num, names } => {
                (*num as usize, names.iter().any(|n| n == "*"))
            }
        };
        let mut flushed: Vec<u64> = (0..self.nodes.len())
            .filter(|&i| self.streams_from(i) == Some(w))
            .filter(|&i| wildcard || pg.sync_names.priority_of(&self.nodes[i].name) > 0)
            .map(|i| self.nodes[i].pg.lsn.min(pg.lsn))
            .collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        if num == 0 {
            return pg.lsn;
        }
        flushed.get(num - 1).copied().unwrap_or(0)
    }

    /// Time passes: the client writes, standbys stream.
    pub(crate) fn advance(&mut self) {
        let dt = self.now - self.last_advance;
        self.last_advance = self.now;
        let mut any_writer = false;
        for n in &mut self.nodes {
            if n.acks() {
                any_writer = true;
                n.pg.lsn += dt * WRITE_BYTES_PER_MS;
                let b = &mut self.branches[n.pg.branch];
                b.1 = b.1.max(n.pg.lsn);
            }
        }
        if any_writer {
            self.gap = 0;
        } else {
            self.gap += dt;
            self.stats.unavailable_ms += dt;
            self.stats.max_unavailable_ms = self.stats.max_unavailable_ms.max(self.gap);
        }
        for i in 0..self.nodes.len() {
            if let Some(u) = self.streams_from(i) {
                let up = self.nodes[u].pg.clone();
                let lag = self.nodes[i].lag;
                let n = &mut self.nodes[i].pg;
                if n.branch != up.branch {
                    n.hist = up.hist.clone();
                    n.branch = up.branch;
                }
                let target = if up.run == Run::Writable {
                    up.lsn.saturating_sub(lag)
                } else {
                    up.lsn
                };
                n.lsn = n.lsn.max(target);
            }
        }
        for w in self.writers() {
            let b = self.nodes[w].pg.branch;
            let a = self.ack_position(w);
            self.acked[b] = self.acked[b].max(a);
        }
    }

    /// The upstream `i` streams from right now, if it does.
    pub(crate) fn streams_from(&self, i: usize) -> Option<usize> {
        let n = &self.nodes[i];
        if n.pg.run != Run::Standby || n.pg_is_frozen() {
            return None;
        }
        let u = n.pg.upstream?;
        if u == i || !self.peer_ok(i, u) || !self.nodes[u].pg.running() {
            return None;
        }
        divergence(&n.pg, &self.nodes[u].pg).ok().map(|_| u)
    }

    pub(crate) fn watchdogs(&mut self) {
        if !self.cfg.watchdog {
            return;
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if let Some(d) = n.wd {
                if self.now >= d + self.cfg.watchdog_late_ms && n.pg.run == Run::Writable {
                    let epoch = n.pg.epoch;
                    if n.pg_is_frozen() && !self.cfg.fence_kills_frozen {
                        // The old fence: the postmaster dies, the frozen backends do not.
                        self.nodes[i].zombie = true;
                    } else {
                        self.pg_stop(i);
                    }
                    self.nodes[i].fenced_epoch = Some(epoch);
                    self.maybe_resume(i);
                    self.nodes[i].wd = None;
                    self.stats.fences += 1;
                    let name = self.nodes[i].name.clone();
                    self.fences.push((self.rel(self.now), name.clone()));
                    self.log(|| format!("{name}: WATCHDOG kills PostgreSQL (deadline passed)"));
                }
            }
        }
    }

    pub(crate) fn arm(&mut self, i: usize, deadline: u64) {
        self.nodes[i].wd = Some(deadline);
        self.push_at(deadline + self.cfg.watchdog_late_ms, Ev::Tick);
    }

    pub(crate) fn pg_stop(&mut self, i: usize) {
        let pg = &mut self.nodes[i].pg;
        if pg.run != Run::Stopped {
            pg.run = Run::Stopped;
            pg.epoch += 1;
            pg.clean_stop = false;
        }
    }

    /// Who acknowledges writes right now (a frozen PostgreSQL acknowledges nothing).
    pub(crate) fn writers(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].acks())
            .collect()
    }

    /// Run an agent step parked while its agent or its PostgreSQL was frozen, once neither
    /// is (a probe of a frozen PostgreSQL returns when it thaws or dies).
    pub(crate) fn maybe_resume(&mut self, n: usize) {
        let node = &self.nodes[n];
        let pg_hangs = node.pg_is_frozen();
        if node.frozen == 0 && !pg_hangs {
            if let Some(step) = self.nodes[n].agent.parked.take() {
                let now = self.now;
                self.step_at(now, n, step);
            }
        }
    }

    pub(crate) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Tick => {}
            Ev::Step { node, epoch, step } => {
                let n = &self.nodes[node];
                if epoch != n.agent.epoch || !n.agent_alive() || n.removed {
                    return;
                }
                if self.nodes[node].frozen > 0 {
                    self.nodes[node].agent.parked = Some(step);
                    return;
                }
                self.agent_step(node, step);
            }
            Ev::StoreApply {
                node,
                epoch,
                op,
                t0,
            } => self.store_apply(node, epoch, op, t0),
            Ev::FsAsk { asker, peer, round } => self.fs_ask(asker, peer, round),
            Ev::FsAnswer {
                asker,
                peer,
                round,
                promise,
            } => {
                if !self.peer_ok(asker, peer) {
                    return;
                }
                if let Some(fs) = self.nodes[asker]
                    .agent
                    .fs
                    .as_mut()
                    .filter(|f| f.id == round)
                {
                    if let Some(p) = promise {
                        fs.yes += 1;
                        fs.promised = fs.promised.min(p);
                    }
                }
            }
            Ev::PgTransition { node, pg_epoch, to } => self.pg_transition(node, pg_epoch, to),
            Ev::NextFault => self.next_fault(),
            Ev::FaultStart(i) => self.fault_start(i),
            Ev::FaultEnd(i) => self.fault_end(i),
        }
    }

    pub(crate) fn pg_transition(&mut self, n: usize, pg_epoch: u64, to: Run) {
        if self.nodes[n].pg.epoch != pg_epoch || self.nodes[n].node_down > 0 {
            return;
        }
        let from = self.nodes[n].pg.run;
        if to == Run::Stopped && self.nodes[n].zombie {
            self.nodes[n].zombie = false;
            self.pg_stop(n);
        } else if to == Run::Writable && from == Run::Promoting {
            self.promoted(n);
        } else if from == Run::Starting {
            self.nodes[n].pg.run = to;
        }
        let (name, run) = (self.nodes[n].name.clone(), self.nodes[n].pg.run);
        self.log(|| format!("{name}: PostgreSQL {from:?} -> {run:?}"));
    }

    pub(crate) fn promoted(&mut self, n: usize) {
        let b = self.branches.len();
        let pg = &mut self.nodes[n].pg;
        let lsn = pg.lsn;
        pg.hist.push((pg.branch, lsn));
        pg.branch = b;
        pg.run = Run::Writable;
        pg.standby_signal = false;
        pg.upstream = None;
        let timeline = pg.timeline();
        let old_branch = self.nodes[n].pg.hist.last().map(|h| h.0);
        if let Some(ob) = old_branch.filter(|_| self.cfg.sync.mode != SyncMode::Off) {
            let acked = self.acked[ob];
            if acked > lsn {
                self.violate(
                    "acknowledged-commit-lost",
                    format!(
                        "{name} promoted at {lsn}, but commits up to {acked} were acknowledged \
                         on the branch it followed ({} bytes lost; mode {})",
                        acked - lsn,
                        self.cfg.sync.mode,
                        name = self.nodes[n].name
                    ),
                );
            }
        }
        self.branches.push((lsn, lsn));
        self.acked.push(lsn);
        let others = (0..self.nodes.len())
            .filter(|&i| i != n && self.nodes[i].pg.run == Run::Standby)
            .map(|i| (self.nodes[i].name.clone(), self.nodes[i].pg.lsn))
            .collect();
        let last = self.last_published_primary_lsn;
        let name = self.nodes[n].name.clone();
        self.log(|| format!("{name}: PROMOTED at {lsn} on timeline {timeline}"));
        if let Some(last) = last {
            if last > lsn + self.cfg.max_lag_bytes {
                self.violate(
                    "promoted-too-far-behind",
                    format!(
                        "{name} promoted at {lsn}, {} bytes behind the last published primary LSN {last} (max_lag_bytes {})",
                        last - lsn,
                        self.cfg.max_lag_bytes
                    ),
                );
            }
        }
        self.promotions.push(Promotion {
            t_ms: self.rel(self.now),
            node: name,
            lsn,
            timeline,
            others,
            last_published_primary_lsn: last,
        });
    }

    pub(crate) fn finish(mut self) -> Outcome {
        let heal = self.heal_at;
        let deadline = pgbaton_core::ops::SWITCHOVER_TIMEOUT_MS + 10_000;
        let now = self.now;
        let pending =
            self.store.op.as_ref().is_some_and(|o| {
                !o.phase.finished() && now.saturating_sub(o.updated_ms) <= deadline
            });
        let judged = if pending {
            self.stats.op_pending_at_end = 1;
            Ok((0, 0))
        } else {
            self.converged()
        };
        match judged {
            Ok((waiting, diverged)) => {
                self.stats.waiting_rejoin_failed = waiting;
                self.stats.stuck_diverged = diverged;
                self.stats.converged_after_ms = self.conv_since.map(|t| t.saturating_sub(heal));
            }
            Err(why) => {
                let detail = format!(
                    "not converged {} ms after the faults healed: {why}",
                    self.cfg.settle_ms
                );
                self.violate("no-convergence", detail);
            }
        }
        // Writes lost: WAL written on branches beyond what survives in the final history.
        let w = self.writers();
        let survivor = if w.len() == 1 {
            Some(w[0])
        } else {
            self.store.lease.as_ref().and_then(|l| self.idx(&l.member))
        };
        if let Some(s) = survivor {
            let anc = self.nodes[s].pg.ancestry(self.nodes[s].pg.lsn);
            for (b, &(start, max)) in self.branches.iter().enumerate() {
                let kept = anc
                    .iter()
                    .find(|(ab, _)| *ab == b)
                    .map_or(start, |&(_, end)| end.max(start));
                self.stats.lost_bytes += max.saturating_sub(kept);
                self.stats.lost_acked_bytes += self.acked[b].saturating_sub(kept);
            }
        }
        if self.stats.lost_acked_bytes > 0 && self.cfg.sync.mode != SyncMode::Off {
            let lost = self.stats.lost_acked_bytes;
            let mode = self.cfg.sync.mode;
            self.violate(
                "acknowledged-commit-lost",
                format!("{lost} acknowledged bytes are not in the final primary's history (mode {mode})"),
            );
        }
        self.stats.lost_writes = self.stats.lost_bytes / 1024;
        self.stats.promotions = self.promotions.len() as u32;
        self.stats.faults = self.faults.len() as u32;
        let final_primary = (w.len() == 1).then(|| self.nodes[w[0]].name.clone());
        Outcome {
            seed: self.seed,
            violations: self.violations,
            stats: self.stats,
            promotions: self.promotions,
            fences: self.fences,
            faults: self.faults,
            final_primary,
            trace: self.trace,
        }
    }
}
