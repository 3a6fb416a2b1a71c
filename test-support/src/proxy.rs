//! A TCP proxy of the tests' own, between a pool and its server, that can freeze a
//! connection after a chosen message: the server gets the message (and carries it out),
//! its answer never reaches the client, and nothing more passes either way until the
//! client closes the connection, which the proxy then closes on the server. This is a
//! peer that hangs (a SIGSTOPped server, a partition), not one that is dead. It can also
//! kill a connection at a chosen message: after forwarding it (the server carries it out,
//! its answer is lost with the connection) or instead of forwarding it (the server never
//! sees it, and rolls back what the connection had open). And it counts the client
//! messages that hold a pattern (what a client sent, on every connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to the connection of the next client message holding a pattern.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Forwarded, then nothing more passes either way.
    FreezeAfter,
    /// Forwarded, its answer dropped, then both sides closed.
    KillAfter,
    /// Not forwarded: both sides closed.
    KillBefore,
}

#[derive(Default)]
struct Shared {
    /// The next client message holding this meets the fault, once.
    armed: Mutex<Option<(Vec<u8>, Fault)>>,
    /// How many connections have frozen so far.
    frozen: AtomicUsize,
    /// How many connections the proxy has killed so far.
    killed: AtomicUsize,
    /// How many connections the proxy has accepted.
    accepted: AtomicUsize,
    /// How many connections the client side has closed.
    closed: AtomicUsize,
    /// Patterns counted in client messages, with the count of messages holding each.
    counted: Mutex<Vec<(Vec<u8>, usize)>>,
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
        self.arm(pattern, Fault::FreezeAfter);
    }

    /// The next message a client sends that holds `pattern` is forwarded; the server's
    /// answer is dropped and the connection closed on both sides.
    pub fn kill_after(&self, pattern: &str) {
        self.arm(pattern, Fault::KillAfter);
    }

    /// The next message a client sends that holds `pattern` is not forwarded: the
    /// connection is closed on both sides instead.
    pub fn kill_before(&self, pattern: &str) {
        self.arm(pattern, Fault::KillBefore);
    }

    fn arm(&self, pattern: &str, fault: Fault) {
        *self.shared.armed.lock().unwrap() = Some((pattern.as_bytes().to_vec(), fault));
    }

    /// Whether a fault armed is still waiting for its message.
    pub fn armed(&self) -> bool {
        self.shared.armed.lock().unwrap().is_some()
    }

    /// How many connections the proxy has killed.
    pub fn killed(&self) -> usize {
        self.shared.killed.load(Ordering::Relaxed)
    }

    /// How many connections have frozen.
    pub fn frozen(&self) -> usize {
        self.shared.frozen.load(Ordering::Relaxed)
    }

    /// How many connections the clients have closed.
    pub fn closed(&self) -> usize {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// From now on, counts the client messages that hold `pattern` (from 0 again if it
    /// was counted before).
    pub fn count(&self, pattern: &str) {
        let mut counted = self.shared.counted.lock().unwrap();
        counted.retain(|(p, _)| p != pattern.as_bytes());
        counted.push((pattern.as_bytes().to_vec(), 0));
    }

    /// How many client messages held `pattern` since [`FaultProxy::count`].
    pub fn counted(&self, pattern: &str) -> usize {
        let counted = self.shared.counted.lock().unwrap();
        counted
            .iter()
            .find(|(p, _)| p == pattern.as_bytes())
            .map_or(0, |(_, n)| *n)
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
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut killed = false;
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen.load(Ordering::Relaxed) {
            // Nothing more reaches the server.
            continue;
        }
        for (pattern, seen) in shared.counted.lock().unwrap().iter_mut() {
            if buf[..n]
                .windows(pattern.len())
                .any(|w| w == pattern.as_slice())
            {
                *seen += 1;
            }
        }
        let fault = {
            let mut armed = shared.armed.lock().unwrap();
            let hit = armed.as_ref().and_then(|(p, fault)| {
                buf[..n]
                    .windows(p.len())
                    .any(|w| w == p.as_slice())
                    .then_some(*fault)
            });
            if hit.is_some() {
                *armed = None;
            }
            hit
        };
        if fault == Some(Fault::KillBefore) {
            killed = true;
            break;
        }
        // Set before the message goes: set after, the server's answer could reach the
        // client first (the other direction runs on its own task), and nothing froze.
        if matches!(fault, Some(Fault::FreezeAfter | Fault::KillAfter)) {
            frozen.store(true, Ordering::SeqCst);
        }
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        match fault {
            Some(Fault::FreezeAfter) => {
                shared.frozen.fetch_add(1, Ordering::Relaxed);
            }
            Some(Fault::KillAfter) => {
                // The answer is lost; the server is given time to read the message
                // before its connection closes.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                killed = true;
                break;
            }
            _ => {}
        }
    }
    // The client closed its side (so does the proxy, on the server too), or the proxy
    // kills the connection: both sides close as the halves drop.
    if killed {
        shared.killed.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.closed.fetch_add(1, Ordering::Relaxed);
    }
    to_client.abort();
    drop(server_write);
}
