//! The agents' loop, as `crates/agent` runs it: read the view, observe (folding the
//! observation into the agent's `Memory`), call the real `decide`, carry the plan out with the
//! real executor (`exec.rs`), publish; and failsafe rounds.

use super::*;
use pgbaton_core::decide::Quiet;

impl Sim {
    pub(crate) fn agent_step(&mut self, n: usize, step: Step) {
        // A reply that cannot come back over a cut link is an error (the request may have
        // been applied).
        let step = match step {
            Step::ViewReply(Some(_)) if !self.store_reach(n) => Step::ViewReply(None),
            Step::Reply {
                id,
                rep: Ok(_),
                via_store: true,
            } if !self.store_reach(n) => Step::Reply {
                id,
                rep: Err("the store's reply was lost".into()),
                via_store: true,
            },
            s => s,
        };
        match step {
            Step::LoopStart => {
                // A timing change reaches the executor between plans, as the agent applies
                // the cluster's config at the start of each loop.
                let ttl = self.nodes[n].ttl_ms;
                if let Some(e) = self.nodes[n].agent.exec.as_mut() {
                    e.settings.ttl_ms = ttl;
                }
                self.nodes[n].agent.loop_started = self.now;
                self.store_send(n, StoreOp::Read);
            }
            Step::ViewReply(None) => {
                self.nodes[n].io().failsafe.store_failed();
                let pg_writable = self.nodes[n].pg.run == Run::Writable;
                let a = &self.nodes[n].agent;
                let held = a.exec.as_ref().is_some_and(|e| e.mem.held_lease);
                if self.cfg.failsafe && held && pg_writable && a.last_view.is_some() {
                    self.failsafe_round(n);
                } else {
                    let name = self.nodes[n].name.clone();
                    self.log(|| format!("{name}: cannot read the store"));
                    self.loop_end(n);
                }
            }
            Step::ViewReply(Some(view)) if self.nodes[n].pg_is_frozen() => {
                // The probe of a frozen PostgreSQL hangs (no timeout in the agent): the
                // loop waits until it thaws or is killed.
                self.nodes[n].agent.parked = Some(Step::ViewReply(Some(view)));
            }
            Step::ViewReply(Some(view)) => self.decide_and_act(n, *view),
            Step::Reply { id, rep, .. } => self.reply(n, id, rep),
            Step::PgDone { id, expect } => self.pg_done(n, id, expect),
            Step::Barrier { id, target, names } => self.barrier_done(n, id, target, &names),
            Step::FsCollect(round) => {
                let fs = self.nodes[n].agent.fs.take();
                let name = self.nodes[n].name.clone();
                if let Some(fs) = fs.filter(|f| f.id == round) {
                    let all = fs.yes == fs.asked;
                    if all && self.nodes[n].pg.run == Run::Writable {
                        self.stats.failsafe_confirmed += 1;
                        let ttl = match self.cfg.failsafe_shortest_promise {
                            true => fs.ttl.min(fs.promised),
                            false => fs.ttl,
                        };
                        let d = fence_deadline_ms(fs.t0, ttl, self.cfg.fence_margin_ms);
                        self.arm(n, d);
                        self.log(|| format!("{name}: failsafe: all {} confirmed", fs.asked));
                    } else {
                        self.log(|| format!("{name}: failsafe: {}/{} confirmed", fs.yes, fs.asked));
                    }
                }
                self.loop_end(n);
            }
            Step::Published => {
                let a = &mut self.nodes[n].agent;
                if let Some(t) = a.writing.take() {
                    a.checked_ms = a.checked_ms.max(t);
                    a.written_ms = a.written_ms.max(t);
                }
                self.loop_end(n);
            }
        }
    }

    /// Observe, decide, and start carrying out the plan (as `Agent::iteration` does).
    fn decide_and_act(&mut self, n: usize, mut view: ClusterView) {
        let name = self.nodes[n].name.clone();
        // As the agent does (`Publisher::mark_self`): its own record as last known current,
        // when the view holds its last write.
        let (checked, written) = {
            let a = &self.nodes[n].agent;
            (a.checked_ms, a.written_ms)
        };
        if let Some(m) = view.members.iter_mut().find(|m| m.name == name) {
            m.seen_ms = pgbaton_core::publish::own_seen_ms(m.updated_ms, written, checked);
        }
        // The API's shared state, as the agent sets it from each view.
        let leader = view.leader.as_ref().filter(|l| l.expires_ms > self.now);
        let mut io = self.nodes[n].io();
        io.failsafe
            .set_leading(leader.is_some_and(|l| l.member == name));
        io.failsafe.store_read(leader.map(|l| l.member.as_str()));
        drop(io);
        let pgrun = self.observe(n);
        let local = self.local_view(n, &view, pgrun.clone());
        let actions = decide(&view, &local, self.now);
        self.nodes[n].agent.quiet =
            pgbaton_core::decide::quiet_plan(&actions, &local, true).map(|q| (q, pgrun));
        // (Debug builds assert this inside decide; release sweeps count it.)
        if let Err(why) = pgbaton_core::decide::check_plan(&actions) {
            self.violate("bad-plan", format!("{name}: {why}: {actions:?}"));
        }
        if self.cfg.trace && !actions.is_empty() {
            let lease = view
                .leader
                .as_ref()
                .map(|l| format!("{}+{}", l.member, l.expires_ms.saturating_sub(self.now)));
            let acts = actions
                .iter()
                .map(Action::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            self.log(|| format!("{name}: lease {lease:?} pg {:?} -> [{acts}]", local.pg));
        }
        let view = std::rc::Rc::new(view);
        self.nodes[n].agent.last_view = Some(view.clone());
        self.start_plan(n, actions, view, local);
    }

    pub(crate) fn loop_end(&mut self, n: usize) {
        // The agent's pace (`loop_pace_ms`), from its last view and memory.
        let a = &self.nodes[n].agent;
        let pace = match (&a.last_view, &a.exec) {
            (Some(v), Some(e)) => pgbaton_core::memory::loop_pace_ms(
                v,
                &e.mem,
                self.now,
                self.cfg.loop_ms,
                self.cfg.ttl_ms,
            ),
            _ => self.cfg.loop_ms,
        };
        let at = (a.loop_started + pace).max(self.now);
        self.step_at(at, n, Step::LoopStart);
    }

    pub(crate) fn failsafe_round(&mut self, n: usize) {
        self.stats.failsafe_rounds += 1;
        self.fs_next += 1;
        let round = self.fs_next;
        let peers: Vec<usize> = self.nodes[n]
            .agent
            .last_view
            .as_ref()
            .map(|v| {
                v.members
                    .iter()
                    .filter(|m| m.name != self.nodes[n].name)
                    .filter_map(|m| self.idx(&m.name))
                    .collect()
            })
            .unwrap_or_default();
        self.nodes[n].agent.fs = Some(FsRound {
            id: round,
            t0: self.now,
            ttl: self.nodes[n].ttl_ms,
            asked: peers.len(),
            yes: 0,
            promised: u64::MAX,
        });
        for p in peers {
            if self.peer_ok(n, p) {
                let at = self.now + self.lat();
                self.push_at(
                    at,
                    Ev::FsAsk {
                        asker: n,
                        peer: p,
                        round,
                    },
                );
            }
        }
        let at = self.now + 100;
        self.step_at(at, n, Step::FsCollect(round));
    }

    pub(crate) fn fs_ask(&mut self, asker: usize, peer: usize, round: u64) {
        if !self.peer_ok(asker, peer) {
            return;
        }
        // As the agent's API answers: the same `FailsafeGate` the executor's
        // `begin_acquire` goes through.
        // Whether it reaches the store: its last read failed, or a fresh read (the agent's
        // API reads it when unsure) would.
        let reachable = self.store_reach(peer);
        let p = &self.nodes[peer];
        let answers = p.agent_alive() && p.frozen == 0 && !p.removed;
        let leader = self.nodes[asker].name.clone();
        let mut io = p.io();
        let reachable = !io.failsafe.store_failing() && reachable;
        // A promise lasts the member's configured TTL (node.toml's, which a restarted agent
        // holds itself to before it has read the cluster's config), whatever TTL it runs with.
        let promise_ms = self.cfg.ttl_ms;
        let yes = answers
            && io
                .failsafe
                .confirm(&p.name, &leader, promise_ms, reachable, self.now)
                .is_ok();
        drop(io);
        let (a, b) = (
            self.nodes[asker].name.clone(),
            self.nodes[peer].name.clone(),
        );
        self.log(|| {
            format!(
                "{b}: failsafe question from {a}: {}",
                if yes { "yes" } else { "no" }
            )
        });
        let at = self.now + self.lat();
        self.push_at(
            at,
            Ev::FsAnswer {
                asker,
                peer,
                round,
                promise: yes.then_some(promise_ms),
            },
        );
    }

    /// What the agent sees of its PostgreSQL (no memory involved).
    pub(crate) fn pg_run(&self, n: usize) -> PgRun {
        let node = &self.nodes[n];
        match node.pg.run {
            Run::Stopped => PgRun::Stopped,
            Run::Starting => PgRun::NotAnswering,
            Run::Standby | Run::Promoting => PgRun::Standby {
                upstream: node.pg.upstream.map(|u| self.nodes[u].name.clone()),
            },
            Run::Writable => PgRun::Primary,
        }
    }

    /// The agent's observation of its PostgreSQL, and what its memory makes of it (a stop
    /// nobody asked for is a crash), as `Agent::observe_pg` does.
    pub(crate) fn observe(&mut self, n: usize) -> PgRun {
        let pgrun = self.pg_run(n);
        let running = pgrun.running();
        self.nodes[n].io().connected = running;
        if let Some(exec) = self.nodes[n].agent.exec.as_mut() {
            match pgrun {
                PgRun::Stopped => {
                    exec.mem.postmaster_gone();
                }
                PgRun::Primary | PgRun::Standby { .. } => exec.mem.answered(),
                PgRun::NotAnswering => {}
            }
        }
        pgrun
    }

    pub(crate) fn policy(&self) -> Policy {
        Policy {
            ttl_ms: self.cfg.ttl_ms,
            loop_interval_ms: self.cfg.loop_ms,
            max_lag_bytes: self.cfg.max_lag_bytes,
            nofailover: false,
            failover_priority: 1,
            primary_restart_timeout_ms: self.cfg.primary_restart_timeout_ms,
            reclone_on_rewind_failure: self.cfg.reclone_on_rewind_failure,
            sync: self.cfg.sync.clone(),
        }
    }

    /// `pg_stat_replication` on node `n`: the standbys streaming from it.
    pub(crate) fn senders(&self, n: usize) -> Vec<WalSender> {
        let names = &self.nodes[n].pg.sync_names;
        (0..self.nodes.len())
            .filter(|&i| self.streams_from(i) == Some(n))
            .map(|i| WalSender {
                name: self.nodes[i].name.clone(),
                streaming: true,
                flush: Some(Lsn(self.nodes[i].pg.lsn)),
                priority: names.priority_of(&self.nodes[i].name),
            })
            .collect()
    }

    pub(crate) fn slot_infos(pg: &Pg) -> Vec<SlotInfo> {
        pg.slots
            .iter()
            .map(|s| SlotInfo {
                name: s.clone(),
                active: false,
                restart_lsn: None,
                retained_bytes: None,
            })
            .collect()
    }

    /// The local view for the decision: the observation folded with the agent's memory.
    pub(crate) fn local_view(&mut self, n: usize, view: &ClusterView, pgrun: PgRun) -> LocalView {
        let settings = ViewSettings {
            policy: self.policy(),
            // Short, so that a removed member's slot left on a failover candidate that was
            // promoted since is dropped (as an orphan) before the run ends.
            orphan_grace_ms: 5_000,
        };
        let streaming = self.streams_from(n).is_some();
        let senders = self.senders(n);
        let now = self.now;
        let node = &mut self.nodes[n];
        let running = pgrun.running();
        let standby = matches!(pgrun, PgRun::Standby { .. });
        let probed = running.then(|| Probed {
            lsn: Some(Lsn(node.pg.lsn)),
            receive_lsn: standby.then_some(Lsn(node.pg.lsn)),
            timeline: Some(node.pg.timeline()),
            slots: Self::slot_infos(&node.pg),
            streaming,
            sync_names: node.pg.sync_names.clone(),
            senders,
        });
        let data = DataDir::Initialized {
            system_id: SYSTEM_ID.into(),
            standby: node.pg.standby_signal,
        };
        let failsafe = node.io().failsafe.promise_to_other(&node.name);
        let Some(exec) = node.agent.exec.as_mut() else {
            unreachable!("the loop decides only between plans")
        };
        let mut l = exec.mem.fold(
            &node.name,
            view,
            data,
            pgrun,
            probed.as_ref(),
            &settings,
            failsafe,
            now,
        );
        // Stopped: the timeline in pg_control.
        l.timeline = l.timeline.or(Some(node.pg.timeline()));
        l
    }

    pub(crate) fn member_state(&self, n: usize, pgrun: &PgRun) -> MemberState {
        let node = &self.nodes[n];
        let local = LocalView::new(
            &node.name,
            DataDir::Initialized {
                system_id: SYSTEM_ID.into(),
                standby: node.pg.standby_signal,
            },
            pgrun.clone(),
        );
        let role = role_of(&local);
        let running = pgrun.running();
        // As the agent reports it (`Memory::status`).
        let streaming = self.streams_from(n).is_some();
        let state = node.agent.memory().status(&local, streaming);
        let standby = matches!(pgrun, PgRun::Standby { .. });
        // The position it published last, kept while PostgreSQL is stopped.
        let (last_tl, last_lsn) = match (self.cfg.publish_stopped_position, running) {
            (true, false) => self
                .store
                .members
                .get(&node.name)
                .map_or((None, None), |m| (m.timeline, m.lsn)),
            _ => (None, None),
        };
        MemberState {
            system_id: Some(SYSTEM_ID.into()),
            timeline: running.then(|| node.pg.timeline()).or(last_tl),
            lsn: running.then_some(Lsn(node.pg.lsn)).or(last_lsn),
            receive_lsn: standby.then_some(Lsn(node.pg.lsn)),
            upstream: pgrun.upstream().map(str::to_string),
            slots: if running {
                Self::slot_infos(&node.pg)
            } else {
                vec![]
            },
            // As the agent does: a primary down past the restart timeout handed over.
            handed_over: node
                .agent
                .memory()
                .handed_over(self.now, self.cfg.primary_restart_timeout_ms),
            ..MemberState::sample(&node.name, role, state, self.now)
        }
    }

    pub(crate) fn publish(&mut self, n: usize) {
        // As the agent does after its plan: the observation folded into its memory again
        // (since when a primary has been down, a standby not streaming), then published;
        // after a plan that changed nothing, the observation it was decided on, unless the
        // lease it renewed was lost.
        let held = (self.nodes[n].agent.exec.as_ref()).is_some_and(|e| e.mem.held_lease);
        let pgrun = match self.nodes[n].agent.quiet.take() {
            Some((Quiet::Nothing, pgrun)) => pgrun,
            Some((Quiet::Renewed, pgrun)) if held => pgrun,
            _ => {
                let pgrun = self.observe(n);
                let view = self.nodes[n].agent.last_view.clone();
                if let Some(view) = view.filter(|_| self.nodes[n].agent.exec.is_some()) {
                    self.local_view(n, &view, pgrun.clone());
                }
                pgrun
            }
        };
        let ms = self.member_state(n, &pgrun);
        // As the agent does (`Publisher::keep_alive`, `publish_if_due`): it says it is alive
        // every half liveness TTL unless it leads, and writes its report when due.
        let now = self.now;
        let a = &self.nodes[n].agent;
        let leading = a.exec.as_ref().is_some_and(|e| e.mem.held_lease);
        let alive_ttl = pgbaton_core::publish::alive_ttl_ms(self.cfg.ttl_ms);
        let alive = !leading && now.saturating_sub(a.alive_ms) >= alive_ttl / 2;
        // (A view without its last write cannot say the store's report is unchanged.)
        let due = a.last_view.as_ref().is_none_or(|v| {
            v.member(&ms.name)
                .is_none_or(|m| m.updated_ms < a.written_ms)
                || pgbaton_core::publish::due(v, &ms, now)
        });
        if alive {
            self.nodes[n].agent.alive_ms = now;
        }
        if due {
            self.stats.reports_written += 1;
            self.nodes[n].agent.writing = Some(ms.updated_ms);
            self.store_send(
                n,
                StoreOp::Put {
                    ms: Box::new(ms),
                    reply: None,
                    alive,
                },
            );
        } else {
            self.stats.reports_skipped += 1;
            self.nodes[n].agent.checked_ms = now;
            self.store_send(
                n,
                StoreOp::Alive {
                    member: ms.name.clone(),
                    alive,
                },
            );
        }
    }
}
