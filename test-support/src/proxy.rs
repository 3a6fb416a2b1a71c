//! A TCP proxy of the tests' own, between a pool and its server, that can freeze a
//! connection after a chosen message: the server gets the message (and carries it out),
//! its answer never reaches the client, and nothing more passes either way until the
//! client closes the connection, which the proxy then closes on the server. This is a
//! peer that hangs (a SIGSTOPped server, a partition), not one that is dead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Shared {
    /// The next client message holding this freezes its connection, once.
    freeze_after: Mutex<Option<Vec<u8>>>,
    /// How many connections have frozen so far.
    frozen: AtomicUsize,
    /// How many connections the proxy has accepted.
    accepted: AtomicUsize,
    /// How many connections the client side has closed.
    closed: AtomicUsize,
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to the server of
    /// `url` (its host and port).
    pub async fn start(url: &str) -> FaultProxy {
        let target: SocketAddr = authority(url)
            .parse()
            .unwrap_or_else(|_| panic!("a host:port in {url}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let accept = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                accept.accepted.fetch_add(1, Ordering::Relaxed);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(pipe(client, server, Arc::clone(&accept)));
            }
        });
        FaultProxy { port, shared, task }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        url.replacen(authority(url), &format!("127.0.0.1:{}", self.port), 1)
    }

    /// The next message a client sends that holds `pattern` is forwarded, and then its
    /// connection freezes.
    pub fn freeze_after(&self, pattern: &str) {
        *self.shared.freeze_after.lock().unwrap() = Some(pattern.as_bytes().to_vec());
    }

    /// How many connections have frozen.
    pub fn frozen(&self) -> usize {
        self.shared.frozen.load(Ordering::Relaxed)
    }

    /// How many connections the clients have closed.
    pub fn closed(&self) -> usize {
        self.shared.closed.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` of a URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

async fn pipe(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let frozen = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let to_client = {
        let frozen = Arc::clone(&frozen);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Frozen: the server's answers are lost on the way.
                if frozen.load(Ordering::Relaxed) {
                    continue;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::Relaxed) {
            // Nothing more reaches the server.
            continue;
        }
        let freeze = {
            let mut pattern = shared.freeze_after.lock().unwrap();
            let hit = pattern
                .as_ref()
                .is_some_and(|p| buf[..n].windows(p.len()).any(|w| w == p.as_slice()));
            if hit {
                *pattern = None;
            }
            hit
        };
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if freeze {
            frozen.store(true, Ordering::Relaxed);
            shared.frozen.fetch_add(1, Ordering::Relaxed);
        }
    }
    // The client closed its side: so does the proxy, on the server too.
    shared.closed.fetch_add(1, Ordering::Relaxed);
    to_client.abort();
    drop(server_write);
}
