//! The view an agent keeps: the cluster's keys read once, then kept current by a watch on
//! the cluster's prefix, so the agent's loop reads the store without a request.
//!
//! A task follows the watch and applies its events to a copy of the keys. The copy counts
//! as current (*synced*) from the read that filled it until the watch fails: a broken
//! connection (etcd pings it every few seconds, see `client`), a closed or cancelled watch.
//! Meanwhile the store's `view` reads etcd itself, so a view is never older than the watch
//! says. The task then reads the keys afresh and watches from the revision after that
//! read. (Resuming the old watch without a read would count the keys as current before
//! etcd had replayed what they missed: review finding.) When etcd compacted that revision
//! away before the watch started, the task reads again. As a safety net against a watch
//! that went quiet without failing, the task also reads afresh every [`REFRESH`].

use super::client::Conn;
use super::view::{in_view, Keys};
use super::EtcdStore;
use crate::Result;
use anyhow::{anyhow, bail};
use etcd_client::{EventType, WatchOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often the task reads the keys afresh and starts a new watch.
const REFRESH: Duration = Duration::from_secs(120);
/// How long the task waits for etcd to answer the read or to create the watch.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The kept view: the keys, whether they are current, and the task that keeps them.
pub(super) struct Watched {
    shared: Arc<Shared>,
    task: tokio::task::AbortHandle,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped at every change of the keys or of `synced`: what waiters wake on.
    changed: watch::Sender<u64>,
    /// Tests hold the task off etcd (`EtcdStore::hold_watch`).
    held: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    keys: Keys,
    synced: bool,
    /// Times the task read the keys afresh, and times etcd said the revision it wanted to
    /// watch from was compacted (for tests and the benchmark).
    reads: u64,
    compacted: u64,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|n| *n += 1);
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Watched {
    /// Start keeping `store`'s keys (spawns the task on the current runtime).
    pub(super) fn start(store: &EtcdStore) -> Watched {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            held: watch::channel(false).0,
        });
        let follower = Follower {
            conn: store.conn.clone(),
            store: EtcdStore::on(store.conn.clone(), &store.cluster),
            shared: shared.clone(),
        };
        let task = tokio::spawn(follower.run()).abort_handle();
        Watched { shared, task }
    }

    /// The keys, when they are current.
    pub(super) fn keys(&self) -> Option<Keys> {
        self.shared.read(|s| s.synced.then(|| s.keys.clone()))
    }

    /// Whether the keys are current and hold a leader key (`None`: not current).
    fn leader_present(&self) -> Option<bool> {
        self.shared
            .read(|s| s.synced.then(|| s.keys.contains_key("leader")))
    }

    /// How many times the keys were read afresh, and how many times a watch could not
    /// resume because etcd had compacted its revision.
    pub(super) fn counts(&self) -> (u64, u64) {
        self.shared.read(|s| (s.reads, s.compacted))
    }

    /// Hold the task off etcd (its watch dropped, the keys not current) or let it resume
    /// from where it was: for tests of a watch that missed revisions.
    pub(super) fn hold(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    /// Wait up to `timeout` for a leader key seen during the wait to go. `true` = it went.
    /// While the keys are not current, this just waits (the loop then reads the store).
    pub(super) async fn wait_leader_gone(&self, timeout: Duration) -> bool {
        let mut changes = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = self.leader_present() == Some(true);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return false,
                r = changes.changed() => if r.is_err() {
                    tokio::time::sleep_until(deadline).await;
                    return false;
                },
            }
            match self.leader_present() {
                Some(true) => seen = true,
                Some(false) if seen => return true,
                _ => {}
            }
        }
    }
}

/// The task: read, watch, apply; watch again after a failure, read again after a
/// compaction or every [`REFRESH`].
struct Follower {
    conn: Arc<Conn>,
    /// The same cluster's keys, for reading and parsing them (no watch of its own).
    store: EtcdStore,
    shared: Arc<Shared>,
}

impl Follower {
    async fn run(self) {
        // However the task ends (aborted with its store, or its runtime gone), the keys no
        // longer count as current (review finding).
        struct NotCurrent(Arc<Shared>);
        impl Drop for NotCurrent {
            fn drop(&mut self) {
                self.0.update(|s| s.synced = false);
            }
        }
        let _not_current = NotCurrent(self.shared.clone());
        let mut failures: u32 = 0;
        loop {
            let outcome = self.follow().await;
            self.shared.update(|s| s.synced = false);
            match outcome {
                Ok(()) => failures = 0,
                Err(e) => {
                    tracing::debug!("the watch on the cluster's keys ended: {e:#}");
                    failures = failures.saturating_add(1);
                    // Quick after one failure (a compaction, a restarted member of etcd),
                    // slower while etcd stays away.
                    let pause = 50u64.saturating_mul(1 << failures.min(5)).min(1_000);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
        }
    }

    async fn wait_unheld(&self) {
        let mut held = self.shared.held.subscribe();
        let _ = held.wait_for(|h| !h).await;
    }

    /// One round: read the keys, watch from the revision after the read, apply until the
    /// watch fails (an error) or it is time to read afresh (`Ok`).
    async fn follow(&self) -> Result<()> {
        let (keys, revision) = tokio::time::timeout(STEP_TIMEOUT, self.store.read_keys())
            .await
            .map_err(|_| anyhow!("reading the cluster's keys got no answer"))??;
        self.shared.update(|s| s.reads += 1);
        // A test may hold the task here, between its read and its watch, to make etcd
        // compact the revision the watch starts from.
        self.wait_unheld().await;
        let (generation, mut stream) = self.open(revision + 1).await?;
        let mut rotations = self.conn.rotations();
        // Moved while the watch was being made: it is on an endpoint given up on.
        if *rotations.borrow_and_update() != generation {
            bail!("the connection moved to another etcd endpoint");
        }
        // Current from here: the watch replays every change after the read.
        self.shared.update(|s| {
            s.keys = keys;
            s.synced = true;
        });
        let refresh = tokio::time::Instant::now() + REFRESH;
        let mut held = self.shared.held.subscribe();
        loop {
            let message = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep_until(refresh) => return Ok(()),
                _ = held.wait_for(|h| *h) => bail!("held off by a test"),
                // A request on the connection failed or went unanswered: the watch is on
                // an endpoint that may be gone (and could stay silent until the pings
                // notice), so it is made again on the next one.
                _ = rotations.changed() => bail!("the connection moved to another etcd endpoint"),
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                Ok(None) => bail!("etcd closed the watch"),
                Err(e) => return Err(anyhow!(e).context("the watch failed")),
            };
            if resp.compact_revision() > 0 {
                self.shared.update(|s| s.compacted += 1);
                bail!(
                    "etcd compacted revision {} away (it keeps them from {} on): reading the \
                     cluster's keys afresh",
                    revision + 1,
                    resp.compact_revision()
                );
            }
            if resp.canceled() {
                bail!("etcd cancelled the watch: {}", resp.cancel_reason());
            }
            self.apply(&resp);
        }
    }

    /// Create the watch on the cluster's prefix from revision `from`, with the generation
    /// of the connection it is on.
    async fn open(&self, from: i64) -> Result<(u64, etcd_client::WatchStream)> {
        let (generation, client) = self.conn.client_at().await;
        let mut client = client.map_err(|e| {
            self.conn.rotate(generation);
            anyhow!(e)
        })?;
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        match tokio::time::timeout(
            STEP_TIMEOUT,
            client.watch(self.store.prefix.clone(), Some(options)),
        )
        .await
        {
            Ok(Ok(stream)) => Ok((generation, stream)),
            Ok(Err(e)) => {
                self.conn.rotate(generation);
                Err(anyhow!(e).context("watch the cluster's keys"))
            }
            Err(_) => {
                self.conn.rotate(generation);
                bail!("creating the watch got no answer")
            }
        }
    }

    /// Apply a response's events.
    fn apply(&self, resp: &etcd_client::WatchResponse) {
        let changes: Vec<_> = resp
            .events()
            .iter()
            .filter_map(|ev| {
                let kv = ev.kv()?;
                let suffix = self.store.suffix(kv).filter(|s| in_view(s))?;
                Some((suffix, ev.event_type(), kv.clone()))
            })
            .collect();
        if changes.is_empty() {
            return;
        }
        self.shared.update(|s| {
            for (suffix, kind, kv) in changes {
                match kind {
                    EventType::Put => {
                        s.keys.insert(suffix, kv);
                    }
                    EventType::Delete => {
                        s.keys.remove(&suffix);
                    }
                }
            }
        });
    }
}
