//! The agents' loop, mirroring `crates/agent`: read the view, observe, call the real
//! `decide`, run the actions, publish; and failsafe rounds.

use super::*;

impl Sim {
    pub(crate) fn agent_step(&mut self, n: usize, step: Step) {
        // A reply that cannot come back over a cut link is an error (the request may have
        // been applied).
        let step = match step {
            Step::ViewReply(Some(_)) if !self.store_reach(n) => Step::ViewReply(None),
            Step::LeaseReply {
                op,
                t0,
                res: Some(_),
            } if !self.store_reach(n) => Step::LeaseReply { op, t0, res: None },
            s => s,
        };
        match step {
            Step::LoopStart => {
                let a = &mut self.nodes[n].agent;
                a.loop_started = self.now;
                a.actions.clear();
                a.idx = 0;
                self.store_send(n, StoreOp::Read);
            }
            Step::ViewReply(None) => {
                let pg_writable = self.nodes[n].pg.run == Run::Writable;
                let a = &self.nodes[n].agent;
                if self.cfg.failsafe && a.held && pg_writable && a.last_view.is_some() {
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
            Step::ViewReply(Some(view)) => {
                let pgrun = self.observe(n);
                // As the agent does: since when a running standby has not streamed (kept
                // while PostgreSQL is stopped).
                let streams = self.streams_from(n).is_some();
                let now = self.now;
                let a = &mut self.nodes[n].agent;
                match &pgrun {
                    PgRun::Running {
                        in_recovery: true, ..
                    } if !streams => {
                        a.not_streaming_since.get_or_insert(now);
                    }
                    PgRun::Running { .. } => a.not_streaming_since = None,
                    _ => {}
                }
                let local = self.local_view(n, pgrun);
                let actions = decide(&view, &local, self.now);
                // (Debug builds assert this inside decide; release sweeps count it.)
                if let Err(why) = pgbaton_core::decide::check_plan(&actions) {
                    let name = self.nodes[n].name.clone();
                    self.violate("bad-plan", format!("{name}: {why}: {actions:?}"));
                }
                if self.cfg.trace && !actions.is_empty() {
                    let name = self.nodes[n].name.clone();
                    let lease = view
                        .leader
                        .as_ref()
                        .map(|l| format!("{}+{}", l.member, l.expires_ms.saturating_sub(self.now)));
                    let acts = actions.iter().map(short).collect::<Vec<_>>().join(", ");
                    self.log(|| format!("{name}: lease {lease:?} pg {:?} -> [{acts}]", local.pg));
                }
                let a = &mut self.nodes[n].agent;
                a.last_view = Some(*view);
                a.actions = actions;
                a.idx = 0;
                self.exec(n);
            }
            Step::LeaseReply { op, t0, res } => {
                let name = self.nodes[n].name.clone();
                match res {
                    None => {
                        self.log(|| format!("{name}: {op:?} failed (store unreachable)"));
                        self.publish(n);
                    }
                    Some(true) => {
                        if op == LeaseOp::Release {
                            self.nodes[n].agent.held = false;
                            self.nodes[n].wd = None;
                        } else {
                            self.nodes[n].agent.held = true;
                            let d =
                                fence_deadline_ms(t0, self.cfg.ttl_ms, self.cfg.fence_margin_ms);
                            self.arm(n, d);
                        }
                        self.next_action(n);
                    }
                    Some(false) => {
                        self.nodes[n].agent.held = false;
                        if op == LeaseOp::Release {
                            self.nodes[n].wd = None;
                            self.next_action(n);
                        } else {
                            self.log(|| format!("{name}: {op:?} lost"));
                            self.publish(n);
                        }
                    }
                }
            }
            Step::Done(Ok(true)) => self.next_action(n),
            Step::Done(Ok(false)) => self.publish(n),
            Step::Done(Err(e)) => {
                let name = self.nodes[n].name.clone();
                self.log(|| format!("{name}: action failed: {e}"));
                self.publish(n);
            }
            Step::PgDone(expect) => {
                let run = self.nodes[n].pg.run;
                let ok = match expect {
                    Expect::Started => matches!(run, Run::Standby | Run::Writable),
                    Expect::Promoted => run == Run::Writable,
                };
                if ok {
                    if expect == Expect::Started {
                        let a = &mut self.nodes[n].agent;
                        a.expect_running = true;
                        a.crashed = false;
                    }
                    self.next_action(n);
                } else {
                    let name = self.nodes[n].name.clone();
                    self.log(|| format!("{name}: {expect:?} failed: PostgreSQL is {run:?}"));
                    self.publish(n);
                }
            }
            Step::FsCollect(round) => {
                let fs = self.nodes[n].agent.fs.take();
                let name = self.nodes[n].name.clone();
                if let Some(fs) = fs.filter(|f| f.id == round) {
                    let all = fs.yes == fs.asked;
                    if all && self.nodes[n].pg.run == Run::Writable {
                        self.stats.failsafe_confirmed += 1;
                        let d = fence_deadline_ms(fs.t0, self.cfg.ttl_ms, self.cfg.fence_margin_ms);
                        self.arm(n, d);
                        self.log(|| format!("{name}: failsafe: all {} confirmed", fs.asked));
                    } else {
                        self.log(|| format!("{name}: failsafe: {}/{} confirmed", fs.yes, fs.asked));
                    }
                }
                self.loop_end(n);
            }
            Step::Published => self.loop_end(n),
        }
    }

    pub(crate) fn loop_end(&mut self, n: usize) {
        let at = (self.nodes[n].agent.loop_started + self.cfg.loop_ms).max(self.now);
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
            asked: peers.len(),
            yes: 0,
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
        let p = &self.nodes[peer];
        let acquiring = p.agent.actions[p.agent.idx.min(p.agent.actions.len())..]
            .contains(&Action::AcquireLease);
        let yes = p.agent_alive() && p.frozen == 0 && !p.agent.held && !acquiring;
        if yes {
            let until = self.now + self.cfg.ttl_ms;
            let leader = self.nodes[asker].name.clone();
            self.nodes[peer].agent.failsafe = Some(Failsafe {
                leader,
                until_ms: until,
            });
        }
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
                yes,
            },
        );
    }

    /// What the agent sees of its PostgreSQL (and what it concludes about crashes).
    pub(crate) fn observe(&mut self, n: usize) -> PgRun {
        let now = self.now;
        let node = &mut self.nodes[n];
        let a = &mut node.agent;
        match node.pg.run {
            Run::Stopped => {
                if a.expect_running {
                    a.expect_running = false;
                    a.crashed = true;
                    if !node.pg.standby_signal && a.crashed_since.is_none() {
                        a.crashed_since = Some(now);
                    }
                }
                PgRun::Stopped
            }
            Run::Starting => PgRun::NotAnswering,
            Run::Standby | Run::Promoting => {
                a.expect_running = true;
                PgRun::Running {
                    in_recovery: true,
                    upstream: node.pg.upstream.map(|u| format!("n{}", u + 1)),
                }
            }
            Run::Writable => {
                a.expect_running = true;
                a.crashed_since = None;
                PgRun::Running {
                    in_recovery: false,
                    upstream: None,
                }
            }
        }
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
        }
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

    pub(crate) fn local_view(&self, n: usize, pgrun: PgRun) -> LocalView {
        let node = &self.nodes[n];
        let running = matches!(pgrun, PgRun::Running { .. });
        let standby = matches!(
            pgrun,
            PgRun::Running {
                in_recovery: true,
                ..
            }
        );
        let mut l = LocalView::new(
            &node.name,
            DataDir::Initialized {
                system_id: SYSTEM_ID.into(),
                standby: node.pg.standby_signal,
            },
            pgrun,
        );
        if running {
            l.lsn = Some(Lsn(node.pg.lsn));
            l.slots = Self::slot_infos(&node.pg);
        }
        if standby {
            l.receive_lsn = Some(Lsn(node.pg.lsn));
        }
        l.timeline = Some(node.pg.timeline());
        l.policy = self.policy();
        l.failsafe = node.agent.failsafe.clone();
        l.crashed_since_ms = node.agent.crashed_since;
        l.rejoin_failed = node.agent.rejoin_failed.clone();
        l.not_streaming_since_ms = node.agent.not_streaming_since;
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
        let running = matches!(pgrun, PgRun::Running { .. });
        let state = match pgrun {
            PgRun::Running {
                in_recovery: false, ..
            } => MemberStatus::Running,
            PgRun::Running { .. } => {
                if self.streams_from(n).is_some() {
                    MemberStatus::Streaming
                } else {
                    MemberStatus::Replaying
                }
            }
            PgRun::NotAnswering => MemberStatus::Starting,
            PgRun::Stopped if node.agent.crashed => MemberStatus::Crashed,
            PgRun::Stopped => MemberStatus::Stopped,
        };
        let standby = matches!(
            pgrun,
            PgRun::Running {
                in_recovery: true,
                ..
            }
        );
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
            upstream: match pgrun {
                PgRun::Running { upstream, .. } => upstream.clone(),
                _ => None,
            },
            slots: if running {
                Self::slot_infos(&node.pg)
            } else {
                vec![]
            },
            // As the agent does: a primary down past the restart timeout handed over.
            handed_over: node.agent.crashed_since.is_some_and(|since| {
                self.now.saturating_sub(since) >= self.cfg.primary_restart_timeout_ms
            }),
            ..MemberState::sample(&node.name, role, state, self.now)
        }
    }

    pub(crate) fn next_action(&mut self, n: usize) {
        self.nodes[n].agent.idx += 1;
        self.exec(n);
    }

    pub(crate) fn publish(&mut self, n: usize) {
        let pgrun = self.observe(n);
        let ms = self.member_state(n, &pgrun);
        self.store_send(n, StoreOp::Put(Box::new(ms)));
    }
}
