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
            let step = Self::store_error(op, self.now);
            self.step_at(at, n, step);
        }
    }

    pub(crate) fn store_error(op: StoreOp, t0: u64) -> Step {
        match op {
            StoreOp::Read => Step::ViewReply(None),
            StoreOp::Lease(op) => Step::LeaseReply { op, t0, res: None },
            StoreOp::Put(_) => Step::Published,
        }
    }

    pub(crate) fn store_apply(&mut self, n: usize, epoch: u64, op: StoreOp, t0: u64) {
        // The request is on the wire: the store handles it even if the sender died since.
        let reach = self.store.down == 0 && self.nodes[n].store_cut == 0;
        if !reach {
            let at = self.now + self.rng.range(100, 800);
            let step = Self::store_error(op, t0);
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
        let name = self.nodes[n].name.clone();
        let now = self.now;
        let ttl = self.cfg.ttl_ms;
        let step = match op {
            StoreOp::Read => Step::ViewReply(Some(Box::new(ClusterView {
                initialize: Some(SYSTEM_ID.into()),
                leader: self.store.lease.clone().filter(|l| l.expires_ms > now),
                members: self.store.members.values().cloned().collect(),
                op: None,
                paused: self.store.paused > 0,
            }))),
            StoreOp::Lease(op) => {
                let live = self
                    .store
                    .lease
                    .as_ref()
                    .filter(|l| l.expires_ms > now)
                    .map(|l| l.member.clone());
                let res = match op {
                    LeaseOp::Acquire => live.is_none() || live.as_deref() == Some(&name),
                    LeaseOp::Renew => live.as_deref() == Some(&name),
                    LeaseOp::Release => live.as_deref() == Some(&name),
                };
                if res {
                    if op == LeaseOp::Release {
                        self.store.lease = None;
                    } else {
                        self.store.lease = Some(Leader {
                            member: name.clone(),
                            expires_ms: now + ttl,
                        });
                        // Invariant 2: fence before expiry.
                        for (i, m) in self.nodes.iter().enumerate() {
                            if i != n && m.pg.run == Run::Writable {
                                let d = format!(
                                    "the store granted the lease to {name} ({op:?}) while {} runs writable",
                                    m.name
                                );
                                self.violations.push(Violation {
                                    t_ms: now - START_MS,
                                    kind: "lease-granted-beside-writer",
                                    detail: d.clone(),
                                });
                                if self.cfg.trace {
                                    self.trace.push(format!(
                                        "{:>7} !!! VIOLATION lease-granted-beside-writer: {d}",
                                        now - START_MS
                                    ));
                                }
                                break;
                            }
                        }
                    }
                }
                self.log(|| format!("store: {name} {op:?} -> {res}"));
                Step::LeaseReply {
                    op,
                    t0,
                    res: Some(res),
                }
            }
            StoreOp::Put(ms) => {
                if ms.state == MemberStatus::Running {
                    self.last_published_primary_lsn = ms.lsn.map(|l| l.0);
                }
                self.store.members.insert(ms.name.clone(), *ms);
                Step::Published
            }
        };
        let at = self.now + self.lat();
        self.push_at(
            at,
            Ev::Step {
                node: n,
                epoch,
                step,
            },
        );
    }
}
