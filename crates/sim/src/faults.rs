//! Seeded faults: drawn, started and healed.

use super::*;

impl Sim {
    pub(crate) fn add_fault(&mut self, f: Fault) {
        let i = self.faults.len();
        let at = START_MS + f.at_ms;
        let end = at + f.dur_ms;
        self.faults.push(f);
        self.push_at(at, Ev::FaultStart(i));
        self.push_at(end, Ev::FaultEnd(i));
    }

    /// Timing changes through the fault window, from a random stream of their own (the
    /// other faults of a seed stay as they were): one node at a time runs with another TTL,
    /// each within the fence rule for the simulated loop and margin.
    pub(crate) fn add_retimes(&mut self, seed: u64) {
        let mut rng = Rng::new(seed ^ 0x7113_7113_7113_7113);
        let min = (3 * self.cfg.loop_ms).max(self.cfg.fence_margin_ms + 2 * self.cfg.loop_ms);
        let ttls = [min, 2_000, 3_000, 4_000, 6_000];
        let mut at = rng.range(2_000, 20_000);
        while at < self.cfg.fault_ms {
            let ttl = ttls[rng.range(0, ttls.len() as u64 - 1) as usize].max(min);
            let dur = rng.range(3_000, 30_000).min(self.cfg.fault_ms - at);
            let node = rng.range(0, self.nodes.len() as u64 - 1) as usize;
            self.add_fault(Fault {
                at_ms: at,
                dur_ms: dur,
                node,
                kind: FaultKind::Retime(ttl),
            });
            at += rng.range(5_000, 25_000);
        }
    }

    pub(crate) fn next_fault(&mut self) {
        let start = self.now - START_MS;
        if start >= self.cfg.fault_ms {
            return;
        }
        let kinds = [
            (FaultKind::NodeCrash, 3, 1_000, 40_000),
            (FaultKind::AgentCrash, 2, 300, 8_000),
            (FaultKind::PgCrash, 1, 0, 0),
            (FaultKind::StoreCut, 3, 500, 10_000),
            (FaultKind::PeerCut, 2, 500, 20_000),
            (FaultKind::Freeze, 3, 300, 8_000),
            (FaultKind::StoreOutage, 2, 500, 15_000),
            (FaultKind::Pause, 1, 2_000, 10_000),
            (FaultKind::PgFreeze, 2, 5_000, 12_000),
            (FaultKind::WatchdogKill, 2, 3_000, 15_000),
        ];
        let operations = [
            (FaultKind::Switchover, 2, 0, 0),
            (FaultKind::Reinit, 1, 0, 0),
            (FaultKind::Restart, 1, 0, 0),
            (FaultKind::Remove, 1, 0, 0),
            (FaultKind::Promote, 2, 0, 0),
            (FaultKind::Rejoin, 1, 0, 0),
            (FaultKind::Reload, 1, 0, 0),
        ];
        let mut kinds = kinds[..if self.cfg.pg_faults { 10 } else { 8 }].to_vec();
        kinds.push((FaultKind::LateView, 2, 500, 10_000));
        if self.cfg.operations {
            kinds.extend(operations);
        }
        let total: u64 = kinds.iter().map(|k| k.1).sum();
        let mut pick = self.rng.range(0, total - 1);
        let mut chosen = kinds[0];
        for &k in &kinds {
            if pick < k.1 {
                chosen = k;
                break;
            }
            pick -= k.1;
        }
        let (kind, _, lo, hi) = chosen;
        // Half the faults hit the current primary, where they hurt.
        let w = self.writers();
        let node = if !w.is_empty() && self.rng.per_mille(500) {
            w[0]
        } else {
            self.rng.range(0, self.nodes.len() as u64 - 1) as usize
        };
        let dur = self
            .rng
            .range(lo, hi)
            .min(self.cfg.fault_ms.saturating_sub(start));
        self.add_fault(Fault {
            at_ms: start,
            dur_ms: dur,
            node,
            kind,
        });
        let gap = self.rng.range(1_000, 15_000);
        self.push_at(self.now + gap, Ev::NextFault);
    }

    pub(crate) fn fault_start(&mut self, i: usize) {
        let f = self.faults[i].clone();
        let n = f.node;
        let name = self.nodes[n].name.clone();
        self.log(|| format!("FAULT {:?} on {name} for {} ms", f.kind, f.dur_ms));
        match f.kind {
            FaultKind::NodeCrash => {
                self.nodes[n].node_down += 1;
                if self.nodes[n].node_down == 1 {
                    self.pg_stop(n);
                    let node = &mut self.nodes[n];
                    node.wd = None;
                    node.agent.epoch += 1;
                    node.agent.parked = None;
                }
            }
            FaultKind::AgentCrash => {
                let was = self.nodes[n].agent_alive();
                self.nodes[n].agent_down += 1;
                if was {
                    self.nodes[n].agent.epoch += 1;
                    self.nodes[n].agent.parked = None;
                }
            }
            FaultKind::PgCrash => self.pg_stop(n),
            FaultKind::StoreCut => self.nodes[n].store_cut += 1,
            FaultKind::LateView => self.nodes[n].view_late += 1,
            FaultKind::PeerCut => self.nodes[n].peer_cut += 1,
            FaultKind::Freeze => self.nodes[n].frozen += 1,
            FaultKind::StoreOutage => self.store.down += 1,
            FaultKind::Pause => self.store.paused += 1,
            FaultKind::PgFreeze => {
                let node = &mut self.nodes[n];
                if node.pg_frozen == 0 {
                    node.frozen_pg_epoch = node.pg.epoch;
                }
                node.pg_frozen += 1;
            }
            FaultKind::WatchdogKill => self.watchdog_killed(i),
            FaultKind::Retime(ttl) => self.nodes[n].ttl_ms = ttl,
            FaultKind::Switchover
            | FaultKind::Reinit
            | FaultKind::Restart
            | FaultKind::Remove
            | FaultKind::Promote
            | FaultKind::Rejoin
            | FaultKind::Reload => self.operator_request(n, f.kind),
        }
    }

    /// The operator asks for an operation on node `n`; the CLI checks it against the store
    /// (`ops::check`) and posts it, as `pgbaton` does.
    pub(crate) fn operator_request(&mut self, n: usize, kind: FaultKind) {
        let name = self.nodes[n].name.clone();
        let now = self.now;
        let leader = self.store.lease.clone().filter(|l| l.expires_ms > now);
        let live = self.nodes.iter().filter(|m| !m.removed).count();
        let op = match kind {
            FaultKind::Switchover => match &leader {
                Some(l) if l.member != name => OpKind::Switchover {
                    from: l.member.clone(),
                    to: name.clone(),
                },
                _ => return self.log(|| format!("operator: no switchover to {name} (it leads)")),
            },
            FaultKind::Reinit => OpKind::Reinit { member: name },
            FaultKind::Restart => OpKind::Restart { member: name },
            FaultKind::Promote => OpKind::Promote {
                member: name,
                force: false,
            },
            FaultKind::Rejoin => OpKind::Rejoin { member: name },
            FaultKind::Reload => OpKind::Reload { member: name },
            // Keep a cluster that can still fail over.
            FaultKind::Remove if live > 2 => OpKind::Remove {
                member: name,
                purge: false,
            },
            _ => return,
        };
        if self.store.down > 0 {
            return self.log(|| format!("operator: {op:?} not posted (the store is down)"));
        }
        let members: Vec<MemberState> = self.store.members.values().cloned().collect();
        let sync = self
            .store
            .sync
            .as_deref()
            .map(pgbaton_store::parse_sync_record);
        let snapshot = pgbaton_core::ops::Snapshot {
            leader: leader.as_ref(),
            members: &members,
            op: self.store.op.as_ref(),
            now_ms: now,
            sync: sync.as_ref(),
        };
        if let Err(why) = pgbaton_core::ops::check(&op, &snapshot, false) {
            return self.log(|| format!("operator: {op:?} refused: {why}"));
        }
        self.ops_posted += 1;
        let id = self.ops_posted.to_string();
        self.log(|| format!("operator: posts {op:?} as operation {id}"));
        self.store.op = Some(Operation::new(id, op, now));
    }

    /// The watchdog of the fault's node dies.
    pub(crate) fn watchdog_killed(&mut self, fault: usize) {
        let n = self.faults[fault].node;
        let name = self.nodes[n].name.clone();
        if !self.nodes[n].agent_alive() || self.nodes[n].frozen > 0 {
            self.log(|| format!("{name}: (watchdog kill skipped: its agent is down or frozen)"));
            return;
        }
        if self.cfg.watchdog_respawn {
            if self.nodes[n].wd.take().is_some() {
                self.pg_stop(n);
                self.maybe_resume(n);
                self.log(|| {
                    format!("{name}: watchdog died while armed: PostgreSQL stopped, new watchdog")
                });
            }
        } else {
            // The old agent: arming fails, it exits; PostgreSQL runs on with no fence.
            self.agent_exits.insert(fault);
            let node = &mut self.nodes[n];
            node.wd = None;
            node.agent_down += 1;
            node.agent.epoch += 1;
            node.agent.parked = None;
            self.log(|| {
                format!("{name}: watchdog died: the agent exits, PostgreSQL runs unfenced")
            });
        }
    }

    pub(crate) fn fault_end(&mut self, i: usize) {
        let f = self.faults[i].clone();
        let n = f.node;
        let name = self.nodes[n].name.clone();
        if f.dur_ms > 0 {
            self.log(|| format!("HEAL {:?} on {name}", f.kind));
        }
        match f.kind {
            FaultKind::NodeCrash => {
                self.nodes[n].node_down -= 1;
                if self.nodes[n].agent_alive() {
                    self.agent_boot(n);
                }
            }
            FaultKind::AgentCrash => {
                self.nodes[n].agent_down -= 1;
                if self.nodes[n].agent_alive() {
                    self.agent_boot(n);
                }
            }
            FaultKind::PgCrash
            | FaultKind::Switchover
            | FaultKind::Reinit
            | FaultKind::Restart
            | FaultKind::Remove
            | FaultKind::Promote
            | FaultKind::Rejoin
            | FaultKind::Reload => {}
            FaultKind::StoreCut => self.nodes[n].store_cut -= 1,
            FaultKind::LateView => self.nodes[n].view_late -= 1,
            FaultKind::PeerCut => self.nodes[n].peer_cut -= 1,
            FaultKind::Freeze => {
                self.nodes[n].frozen -= 1;
                self.maybe_resume(n);
            }
            FaultKind::StoreOutage => self.store.down -= 1,
            FaultKind::Pause => self.store.paused -= 1,
            FaultKind::Retime(_) => self.nodes[n].ttl_ms = self.cfg.ttl_ms,
            FaultKind::PgFreeze => {
                self.nodes[n].pg_frozen -= 1;
                if self.nodes[n].pg_frozen == 0 && self.nodes[n].zombie {
                    // Thawed backends of a killed postmaster finish their commits, notice
                    // their postmaster is gone, and exit.
                    let pg_epoch = self.nodes[n].pg.epoch;
                    self.push_at(
                        self.now + 50,
                        Ev::PgTransition {
                            node: n,
                            pg_epoch,
                            to: Run::Stopped,
                        },
                    );
                }
                self.maybe_resume(n);
            }
            FaultKind::WatchdogKill => {
                if self.agent_exits.remove(&i) {
                    self.nodes[n].agent_down -= 1;
                    if self.nodes[n].agent_alive() {
                        self.agent_boot(n);
                    }
                }
            }
        }
    }

    /// A fresh agent process: it remembers nothing.
    pub(crate) fn agent_boot(&mut self, n: usize) {
        if self.nodes[n].removed {
            return; // its agent exited for good
        }
        let epoch = self.nodes[n].agent.epoch + 1;
        let failsafe = match self.cfg.failsafe_hold_after_start {
            true => FailsafeGate::holding(Failsafe {
                leader: "(a promise this agent may have given before it restarted)".into(),
                until_ms: self.now + self.cfg.ttl_ms,
            }),
            false => FailsafeGate::default(),
        };
        {
            // The API's state and the requests of the old process are gone with it.
            let mut io = self.nodes[n].io();
            io.failsafe = failsafe;
            io.connected = false;
            io.requests.clear();
            io.replies.clear();
            io.wd_change = None;
            io.armed.clear();
            io.tighten = None;
        }
        let exec = self.new_executor(n);
        self.nodes[n].agent = Agent {
            epoch,
            exec: Some(exec),
            ..Default::default()
        };
        let at = self.now + self.rng.range(50, 300);
        self.step_at(at, n, Step::LoopStart);
    }
}
