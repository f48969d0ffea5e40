//! The API's HTTP server: the axum router over hyper, with the limits `axum::serve` does not
//! set. Audit finding: a client that sent one header line every 15 s still held its
//! connection after 46 s, and nothing capped how many connections were open.
//!
//! - headers must arrive within [`HEADER_TIMEOUT`] (also for each further request on a
//!   kept-alive connection);
//! - a connection lives at most [`CONNECTION_LIFETIME`], then closes gracefully (a request in
//!   flight finishes; clients reconnect);
//! - at most [`MAX_CONNECTIONS`] at once, and [`MAX_PER_PEER`] from one address: a
//!   connection beyond that is closed at once, so one client cannot take every slot from
//!   the health checks and the failsafe questions.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
pub const MAX_CONNECTIONS: usize = 128;
pub const MAX_PER_PEER: usize = 16;
/// How long a connection past its lifetime may take to finish the request in flight.
const DRAIN: Duration = Duration::from_secs(5);

/// The API's TLS, replaced when its files change (each connection takes the current one).
pub type SharedAcceptor = Arc<std::sync::RwLock<TlsAcceptor>>;

/// Serve `app` on `listener` until the task is dropped; with `tls`, https only (a client
/// that does not complete the handshake within [`HEADER_TIMEOUT`] is closed).
pub async fn serve(listener: TcpListener, app: Router, tls: Option<SharedAcceptor>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok((stream, addr)) => (stream, addr.ip()),
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!("the API could not accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream); // over the limit: closed at once
            continue;
        };
        let Some(slot) = PeerSlot::take(&peers, peer) else {
            drop(stream);
            continue;
        };
        let app = app.clone();
        let tls = tls
            .as_ref()
            .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).clone());
        tokio::spawn(async move {
            let _held = (permit, slot);
            match tls {
                None => serve_connection(stream, app).await,
                Some(acceptor) => {
                    // Plain HTTP, a wrong client certificate, a stalled handshake: closed.
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
                    {
                        serve_connection(s, app).await
                    }
                }
            }
        });
    }
}

/// One connection's requests, within its lifetime.
async fn serve_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN, conn).await;
        }
    }
}

/// One connection counted against its peer's share; given back when dropped.
struct PeerSlot {
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    peer: IpAddr,
}

impl PeerSlot {
    fn take(peers: &Arc<Mutex<HashMap<IpAddr, usize>>>, peer: IpAddr) -> Option<PeerSlot> {
        let mut map = peers.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(peer).or_insert(0);
        if *n >= MAX_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: peers.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(serve(listener, app, None));
        addr
    }

    /// Reads until the server closes the connection (or `limit` passes: `None`).
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// A request on `s` is answered 200.
    async fn assert_served(mut s: TcpStream) {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// A connection from 127.0.0.`last` (every 127/8 address is this host's).
    async fn connect_from(last: u8, to: std::net::SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
            .unwrap();
        s.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn one_peer_gets_its_share_and_no_more() {
        let addr = server().await;
        let mut held = vec![];
        for _ in 0..MAX_PER_PEER {
            held.push(connect_from(7, addr).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = connect_from(7, addr).await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(2))
                .await
                .is_some(),
            "a connection beyond {MAX_PER_PEER} from one address was kept"
        );
        // Another address is served meanwhile.
        assert_served(connect_from(8, addr).await).await;
    }

    #[tokio::test]
    async fn a_client_that_trickles_its_headers_is_cut_off() {
        let addr = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let trickle = async {
            for i in 0..10 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if s.write_all(format!("X-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        // The trickling client is closed once the header timeout passes; a normal request
        // meanwhile is served.
        assert_served(TcpStream::connect(addr).await.unwrap()).await;
        tokio::select! {
            _ = trickle => panic!("the trickling client was never cut off"),
            _ = tokio::time::sleep(HEADER_TIMEOUT + Duration::from_secs(3)) => {}
        }
        assert!(
            closed_within(&mut s, Duration::from_secs(1))
                .await
                .is_some(),
            "still open after the header timeout"
        );
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_at_once() {
        let addr = server().await;
        let mut held = vec![];
        // From several loopback addresses: one address alone meets its own share first.
        for i in 0..MAX_CONNECTIONS {
            held.push(connect_from(2 + (i / MAX_PER_PEER) as u8, addr).await);
        }
        // Let the server take every one of them before the next.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut extra = connect_from(100, addr).await;
        assert!(
            closed_within(&mut extra, Duration::from_secs(2))
                .await
                .is_some(),
            "a connection beyond {MAX_CONNECTIONS} was kept"
        );
        // Once they go, new connections are served again.
        drop(held);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_served(TcpStream::connect(addr).await.unwrap()).await;
    }
}
