//! The invariants, checked at every event, and convergence.

use super::*;

impl Sim {
    pub(crate) fn violate(&mut self, kind: &'static str, detail: String) {
        let t = self.rel(self.now);
        if self.cfg.trace {
            self.trace
                .push(format!("{t:>7} !!! VIOLATION {kind}: {detail}"));
        }
        self.violations.push(Violation {
            t_ms: t,
            kind,
            detail,
        });
    }

    pub(crate) fn check(&mut self) {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.acks() && n.fenced_epoch == Some(n.pg.epoch) {
                let name = n.name.clone();
                self.nodes[i].fenced_epoch = None;
                self.violate(
                    "acknowledged-after-fence",
                    format!("{name}'s fenced PostgreSQL acknowledges writes again"),
                );
            }
        }
        let w = self.writers();
        if w.len() > 1 {
            if !self.split {
                self.split = true;
                let names: Vec<String> = w
                    .iter()
                    .map(|&i| {
                        format!(
                            "{} (timeline {})",
                            self.nodes[i].name,
                            self.nodes[i].pg.timeline()
                        )
                    })
                    .collect();
                self.violate(
                    "two-writers",
                    format!("writable at once: {}", names.join(", ")),
                );
            }
        } else {
            self.split = false;
        }
        if self.now >= self.heal_at {
            match self.converged() {
                Ok(_) => {
                    if self.conv_since.is_none() {
                        self.conv_since = Some(self.now);
                        self.log(|| "cluster converged".into());
                    }
                }
                Err(_) => self.conv_since = None,
            }
        }
    }

    /// Ok((nodes waiting after a failed rejoin, diverged standbys)) or why not converged.
    pub(crate) fn converged(&self) -> Result<(u32, u32), String> {
        let w = self.writers();
        let [p] = w[..] else {
            return Err(format!("{} writable primaries", w.len()));
        };
        let pn = &self.nodes[p];
        match &self.store.lease {
            Some(l) if l.member == pn.name && l.expires_ms > self.now => {}
            other => return Err(format!("lease {other:?} is not {}'s", pn.name)),
        }
        // A removed member stays removed: deregistered, and its slot gone from the primary.
        for n in self.nodes.iter().filter(|n| n.removed) {
            if self.store.members.contains_key(&n.name) {
                return Err(format!("{} was removed but is registered again", n.name));
            }
            if pn.pg.slots.contains(&slot_name_for(&n.name)) {
                return Err(format!(
                    "{} was removed but {} keeps its slot",
                    n.name, pn.name
                ));
            }
        }
        if let Some(op) = self.store.op.as_ref().filter(|o| !o.phase.finished()) {
            return Err(format!(
                "operation {} ({}) still in flight",
                op.id,
                op.kind.name()
            ));
        }
        let mut waiting = 0;
        let mut diverged = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            if i == p || n.node_down > 0 || n.removed {
                continue;
            }
            // A member that does not lead knows it, and says it is alive: one that still
            // thought it led (its lease went while it was frozen) kept no liveness (CI
            // failure of the frozen-leader IT). A crashed agent's memory is the old one.
            if n.agent_alive() && n.agent.memory().held_lease {
                return Err(format!("{} still thinks it holds the leader lease", n.name));
            }
            if n.agent_alive() && !self.seen_alive(i) {
                return Err(format!("{} is not seen alive in the store", n.name));
            }
            // A former primary, or a standby that had to be rewound, whose pg_rewind failed
            // waits for the operator's reinit (unless re-cloning is allowed).
            if n.agent.memory().rejoin_failed.is_some() && !self.cfg.reclone_on_rewind_failure {
                waiting += 1;
                continue;
            }
            if n.pg.run == Run::Standby
                && n.pg.upstream == Some(p)
                && divergence(&n.pg, &pn.pg).is_err()
            {
                diverged += 1;
                continue;
            }
            if self.streams_from(i) != Some(p) || n.pg.branch != pn.pg.branch {
                return Err(format!(
                    "{} does not stream from {} on its timeline ({:?}, upstream {:?}, timeline {} vs {})",
                    n.name,
                    pn.name,
                    n.pg.run,
                    n.pg.upstream.map(|u| self.nodes[u].name.clone()),
                    n.pg.timeline(),
                    pn.pg.timeline()
                ));
            }
        }
        Ok((waiting, diverged))
    }
}
