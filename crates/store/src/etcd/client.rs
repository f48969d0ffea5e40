//! Talking to etcd: the connection ([`Conn`], shared by the store and its watch task), made
//! on first use and made again once after a failure, one request with its bounds, and the
//! helpers every key's code shares (read one key, run a transaction, read a value as text
//! or JSON, the error of a compare-and-set that keeps losing).

use super::{access, EtcdStore, CAS_ATTEMPTS};
use crate::{Result, Store};
use anyhow::{anyhow, Context};
use etcd_client::{Client, ConnectOptions, KeyValue, Txn};
use std::future::Future;
use std::time::Duration;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the connection pings etcd, and how long it waits for the answer: a frozen or
/// lost etcd then breaks the watch within seconds, even when no request is in flight (the
/// cached view is then read afresh, and a read that gets no answer is a store outage). Not
/// more often: etcd's `--grpc-keepalive-min-time` (5 s) sends pings faster than that away.
/// How long a request refused for want of a leader is asked again: etcd elects one within
/// its election timeout (1 s by default) and a little more.
const ELECTION_WAIT: Duration = Duration::from_secs(3);

const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection to etcd: the endpoints, TLS and user, and the client once made.
///
/// The client talks to one endpoint at a time, `generation % endpoints`, and moves to the
/// next when a request to it fails or is given up on (a caller's bound dropped it). A client
/// balanced over every endpoint kept sending some requests to a member whose host was gone
/// (its connection still looked ready): with one host of three lost, the new primary's lease
/// renewals timed out and it fenced itself (found by the three-hosts test).
pub(super) struct Conn {
    pub(super) endpoints: Vec<String>,
    pub(super) secured: access::Secured,
    client: tokio::sync::Mutex<Option<(u64, Client)>>,
    /// Which endpoint is used; the watch task follows its changes.
    generation: tokio::sync::watch::Sender<u64>,
}

/// One request on the connection: unless it is marked done, dropping it (a failure, or the
/// caller's timeout) moves the connection to the next endpoint.
pub(super) struct Attempt<'a> {
    conn: &'a Conn,
    generation: u64,
    pub(super) done: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.rotate(self.generation);
        }
    }
}

impl Conn {
    pub(super) fn new(endpoints: &[String], secured: access::Secured) -> Conn {
        Conn {
            endpoints: endpoints.to_vec(),
            secured,
            client: tokio::sync::Mutex::new(None),
            generation: tokio::sync::watch::channel(0).0,
        }
    }

    pub(super) fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }

    /// The endpoint in use now, as a generation (see [`Conn::rotate`]).
    pub(super) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Changes of the endpoint in use, for the watch task (its watch is on the old one).
    pub(super) fn rotations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Move to the next endpoint (a fresh connection), unless another caller already did
    /// since `seen`: several requests failing together move it once.
    pub(super) fn rotate(&self, seen: u64) {
        self.generation.send_if_modified(|g| {
            let moved = *g == seen;
            if moved {
                *g += 1;
            }
            moved
        });
    }

    /// A request on the client of `generation` (see [`Attempt`]).
    fn attempt(&self, generation: u64) -> Attempt<'_> {
        Attempt {
            conn: self,
            generation,
            done: false,
        }
    }

    /// The current client, connecting to the current endpoint if there is none.
    pub(super) async fn client(&self) -> std::result::Result<Client, String> {
        self.client_at().await.1
    }

    /// [`Conn::client`] with the generation it is for: a failure on it moves the connection
    /// on from that endpoint ([`Conn::rotate`]), never from one it has moved to since.
    pub(super) async fn client_at(&self) -> (u64, std::result::Result<Client, String>) {
        let generation = self.generation();
        (generation, self.connect(generation).await)
    }

    async fn connect(&self, generation: u64) -> std::result::Result<Client, String> {
        let mut guard = self.client.lock().await;
        if let Some((g, c)) = guard.as_ref() {
            if *g == generation {
                return Ok(c.clone());
            }
        }
        *guard = None;
        let endpoint = &self.endpoints[(generation % self.endpoints.len() as u64) as usize];
        let options = self.secured.apply(
            ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
                // A member cut off from etcd's quorum answers nothing rather than old data,
                // and a watch through it ends (review finding).
                .with_require_leader(true),
        );
        let client = match tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            Client::connect([endpoint], Some(options)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect to {endpoint}: {}", error_text(&e))),
            Err(_) => {
                return Err(format!(
                    "cannot connect to {endpoint}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs() + 1
                ))
            }
        };
        *guard = Some((generation, client.clone()));
        Ok(client)
    }

    /// Run one request; on failure try the next endpoint (each once, and a fresh connection
    /// at least once). An etcd that answers "no leader" (its members are electing one,
    /// about a second after the leader's host went) is asked again for up to
    /// [`ELECTION_WAIT`]: the request was refused before it was processed, and `list` during
    /// an election should answer, not fail. Callers bound it further (the agent's calls by a
    /// fraction of the lease). Errors name the action and the endpoints.
    pub(super) async fn call<T, F, Fut>(&self, action: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let mut last = String::new();
        let electing_until = std::time::Instant::now() + ELECTION_WAIT;
        // Each endpoint once, and a fresh connection at least once.
        let tries = self.endpoints.len().max(2);
        let mut failed = 0;
        while failed < tries {
            let (generation, client) = self.client_at().await;
            // Dropped undone (a failure below, or the caller's bound): the next endpoint.
            let mut attempt = self.attempt(generation);
            let outcome = match client {
                Ok(c) => {
                    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), f(c)).await
                    {
                        Ok(Ok(v)) => {
                            attempt.done = true;
                            return Ok(v);
                        }
                        Ok(Err(e))
                            if no_leader(&e) && std::time::Instant::now() < electing_until =>
                        {
                            // Electing: another member may have a leader already; the only
                            // one is asked again on the same connection.
                            attempt.done = self.endpoints.len() == 1;
                            last = error_text(&e);
                            drop(attempt);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                        Ok(Err(e)) => error_text(&e),
                        Err(_) => format!("no answer within {} s", REQUEST_TIMEOUT.as_secs() + 1),
                    }
                }
                Err(e) => e,
            };
            last = outcome;
            failed += 1;
        }
        let hint = self
            .secured
            .hint(&last)
            .map_or_else(String::new, |h| format!(" ({h})"));
        Err(anyhow!(
            "{action} in etcd at {}: {last}{hint}",
            self.endpoints_text()
        ))
    }
}

impl EtcdStore {
    /// One request (see [`Conn::call`]).
    pub(super) async fn call<T, F, Fut>(&self, action: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.conn.call(action, f).await
    }

    pub(super) async fn client(&self) -> std::result::Result<Client, String> {
        self.conn.client().await
    }

    pub(super) async fn get_one(&self, action: &str, suffix: &str) -> Result<Option<KeyValue>> {
        let key = self.key(suffix);
        let mut resp = self
            .call(action, |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    pub(super) async fn txn(&self, action: &str, txn: Txn) -> Result<etcd_client::TxnResponse> {
        self.call(action, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    pub(super) fn text(&self, kv: &KeyValue) -> Result<String> {
        kv.value_str().map(str::to_string).map_err(|_| {
            anyhow!(
                "{}: the value of key {} is not UTF-8",
                self.describe(),
                String::from_utf8_lossy(kv.key())
            )
        })
    }

    pub(super) fn parse<T: serde::de::DeserializeOwned>(
        &self,
        kv: &KeyValue,
        what: &str,
    ) -> Result<T> {
        let text = self.text(kv)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: the value of key {} is not valid JSON of {what}",
                self.describe(),
                String::from_utf8_lossy(kv.key())
            )
        })
    }

    pub(super) fn conflict(&self, action: &str) -> anyhow::Error {
        anyhow!(
            "{action} in etcd at {}: still conflicting with concurrent writers after {CAS_ATTEMPTS} attempts",
            self.endpoints_text()
        )
    }
}

/// etcd refused the request because its member has no leader (`require_leader`, or an
/// election in progress): nothing was done.
fn no_leader(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("etcdserver: no leader"))
}

/// An etcd error with what caused it: a transport error's own text is only "transport
/// error", and the cause (a refused connection, "invalid peer certificate: UnknownIssuer")
/// is in its sources.
fn error_text(e: &etcd_client::Error) -> String {
    let mut text = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        _ => None,
    };
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// A short pause before trying a lost compare-and-set again, varied so that racers spread.
pub(super) async fn backoff(attempt: usize) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let cap = 1 + (attempt as u64).min(20);
    tokio::time::sleep(Duration::from_millis(u64::from(nanos) % cap)).await;
}
