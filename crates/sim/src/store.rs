//! The fake store: requests, their latency, replies that may be lost.

use super::*;

impl Sim {
    pub(crate) fn store_send(&mut self, n: usize, op: StoreOp) {
        let epoch = self.nodes[n].agent.epoch;
        if self.store_reach(n) {
            let (at, t0) = (self.now + self.lat(), self.now);
            self.push_at(
                at,
                Ev::StoreApply {
                    node: n,
                    epoch,
                    op,
                    t0,
                },
            );
        } else {
            let at = self.now + self.rng.range(200, 1_000);
            let step = Self::store_error(op);
            self.step_at(at, n, step);
        }
    }

    pub(crate) fn store_error(op: StoreOp) -> Step {
        let unreachable = || Err("the store is unreachable".to_string());
        match op {
            StoreOp::Read => Step::ViewReply(None),
            StoreOp::Exec { id, .. } => Step::Reply {
                id,
                rep: unreachable(),
                via_store: true,
            },
            StoreOp::Put {
                reply: Some(id), ..
            } => Step::Reply {
                id,
                rep: unreachable(),
                via_store: true,
            },
            StoreOp::Put { reply: None, .. } | StoreOp::Alive { .. } => Step::Published,
        }
    }

    /// Node `n` said it is alive within the liveness TTL (as `members_seen` counts it).
    pub(crate) fn seen_alive(&self, n: usize) -> bool {
        let alive_ttl = pgbaton_core::publish::alive_ttl_ms(self.cfg.ttl_ms);
        let name = &self.nodes[n].name;
        self.store
            .alive
            .get(name)
            .is_some_and(|t| self.now < t + alive_ttl)
    }

    /// The members as a view shows them: seen now while alive (within the liveness TTL
    /// since they last said so, as an etcd lease would keep them) or holding the lease.
    fn members_seen(&self) -> Vec<MemberState> {
        let now = self.now;
        let alive_ttl = pgbaton_core::publish::alive_ttl_ms(self.cfg.ttl_ms);
        let holder = self
            .store
            .lease
            .as_ref()
            .filter(|l| l.expires_ms > now)
            .map(|l| l.member.clone());
        self.store
            .members
            .values()
            .map(|m| {
                let alive = self
                    .store
                    .alive
                    .get(&m.name)
                    .is_some_and(|t| now < t + alive_ttl);
                let seen = alive || holder.as_deref() == Some(m.name.as_str());
                MemberState {
                    seen_ms: if seen { now } else { 0 },
                    ..m.clone()
                }
            })
            .collect()
    }

    pub(crate) fn store_apply(&mut self, n: usize, epoch: u64, op: StoreOp, _t0: u64) {
        // The request is on the wire: the store handles it even if the sender died since.
        let reach = self.store.down == 0 && self.nodes[n].store_cut == 0;
        if !reach {
            let at = self.now + self.rng.range(100, 800);
            let step = Self::store_error(op);
            self.push_at(
                at,
                Ev::Step {
                    node: n,
                    epoch,
                    step,
                },
            );
            return;
        }
        let now = self.now;
        // A lagging watch: the view is taken now and reaches the loop up to a TTL later.
        let late = match op {
            // Up to three TTLs: past one, the agent's own report in it is stale.
            StoreOp::Read if self.nodes[n].view_late > 0 => {
                self.rng.range(100, 3 * self.cfg.ttl_ms)
            }
            _ => 0,
        };
        let step = match op {
            StoreOp::Read => Step::ViewReply(Some(Box::new(ClusterView {
                initialize: Some(SYSTEM_ID.into()),
                leader: self.store.lease.clone().filter(|l| l.expires_ms > now),
                members: self.members_seen(),
                op: self.store.op.clone(),
                paused: self.store.paused > 0,
                sync: self
                    .store
                    .sync
                    .as_deref()
                    .map(pgbaton_store::parse_sync_record),
                sync_text: self.store.sync.clone(),
                config_text: None,
                unreadable: vec![],
            }))),
            StoreOp::Exec { id, req } => {
                let rep = self.store_exec(n, req);
                Step::Reply {
                    id,
                    rep,
                    via_store: true,
                }
            }
            StoreOp::Alive { member, alive } => {
                if alive {
                    self.store.alive.insert(member, now);
                }
                Step::Published
            }
            StoreOp::Put { ms, reply, alive } => {
                if alive {
                    self.store.alive.insert(ms.name.clone(), now);
                }
                if ms.state == MemberStatus::Running {
                    self.last_published_primary_lsn = ms.lsn.map(|l| l.0);
                }
                // A removed member's late publish does not register it again.
                if !self.nodes[n].removed {
                    self.store.members.insert(ms.name.clone(), *ms);
                }
                match reply {
                    Some(id) => Step::Reply {
                        id,
                        rep: Ok(crate::io::Val::Unit),
                        via_store: true,
                    },
                    None => Step::Published,
                }
            }
        };
        let at = self.now + self.lat() + late;
        self.push_at(
            at,
            Ev::Step {
                node: n,
                epoch,
                step,
            },
        );
    }

    /// A lease request from node `n` for `ttl` ms, at the store. `true`: it holds (or
    /// released) it.
    pub(crate) fn lease_apply(&mut self, n: usize, op: LeaseOp, ttl: u64) -> bool {
        let name = self.nodes[n].name.clone();
        let now = self.now;
        let live = self
            .store
            .lease
            .as_ref()
            .filter(|l| l.expires_ms > now)
            .map(|l| l.member.clone());
        let res = match op {
            LeaseOp::Acquire => live.is_none() || live.as_deref() == Some(&name),
            LeaseOp::Renew | LeaseOp::Release => live.as_deref() == Some(&name),
        };
        if res {
            if op == LeaseOp::Release {
                self.store.lease = None;
            } else {
                self.store.lease = Some(Leader {
                    member: name.clone(),
                    expires_ms: now + ttl,
                });
                self.check_fence_before_grant(n, op);
            }
        }
        self.log(|| format!("store: {name} {op:?} -> {res}"));
        res
    }

    /// Invariant 2: fence before expiry. When the store grants the lease to `n`, no other
    /// node runs writable.
    fn check_fence_before_grant(&mut self, n: usize, op: LeaseOp) {
        let name = self.nodes[n].name.clone();
        if let Some(m) = self
            .nodes
            .iter()
            .enumerate()
            .find(|(i, m)| *i != n && m.pg.run == Run::Writable)
            .map(|(_, m)| m.name.clone())
        {
            self.violate(
                "lease-granted-beside-writer",
                format!("the store granted the lease to {name} ({op:?}) while {m} runs writable"),
            );
        }
    }
}
