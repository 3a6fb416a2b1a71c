//! Round trips over a link with latency: a TCP proxy in front of PostgreSQL and MariaDB
//! delays each direction by `SAFE_DB_BENCH_DELAY_MS` (default 1 ms) and counts round trips
//! (each time the server answers after the client has sent something). One client runs
//! each variant `SAFE_DB_BENCH_OPS` times (default 200) on a pool of two connections, with
//! `test_before_acquire` off (`SAFE_DB_BENCH_PING=1` turns it on): round trips per
//! operation are counted (sqlx's ping of each connection given back included), and
//! throughput is operations per second.
//!
//! `SAFE_DB_TEST_POSTGRES_URL` / `SAFE_DB_TEST_MYSQL_URL` name the servers (as for the
//! tests); a server not named is skipped. Writes `target/latency.json` and prints the table
//! of BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use safe_db_bench::latency::{VARIANTS, run_variant};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Round trips seen by the proxy, over every connection.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// Accepts clients and relays each to `upstream`, each direction delayed by `delay`.
async fn proxy(upstream: String, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.expect("accept");
            let server = TcpStream::connect(&upstream).await.expect("upstream");
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            // Set when the client has sent since the server last answered.
            let client_spoke = Arc::new(AtomicBool::new(false));
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(relay(cr, sw, delay, Arc::clone(&client_spoke), true));
            tokio::spawn(relay(sr, cw, delay, client_spoke, false));
        }
    });
    addr
}

/// Copies `from` to `to`, each chunk delivered `delay` after it was read, in order.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    client_spoke: Arc<AtomicBool>,
    from_client: bool,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if std::env::var_os("SAFE_DB_BENCH_TRACE").is_some() {
            let text: String = buf[..n.min(60)]
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            eprintln!("{} {n:5} {text}", if from_client { "->" } else { "<-" });
        }
        if from_client {
            client_spoke.store(true, Ordering::SeqCst);
        } else if client_spoke.swap(false, Ordering::SeqCst) {
            ROUND_TRIPS.fetch_add(1, Ordering::SeqCst);
        }
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}/{path}", userinfo.unwrap_or_default())
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap();
    authority.rsplit('@').next().unwrap().to_owned()
}

#[derive(Debug)]
struct Row {
    database: &'static str,
    variant: &'static str,
    round_trips: f64,
    ops_per_sec: f64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let delay = Duration::from_micros(env("SAFE_DB_BENCH_DELAY_US", 1000));
    let ops = env("SAFE_DB_BENCH_OPS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    runtime.block_on(async {
        for (database, var) in [
            ("postgres", "SAFE_DB_TEST_POSTGRES_URL"),
            ("mariadb", "SAFE_DB_TEST_MYSQL_URL"),
        ] {
            let Ok(url) = std::env::var(var) else {
                eprintln!("{database}: {var} is not set, skipped");
                continue;
            };
            let addr = proxy(host_port(&url), delay).await;
            let mut options = ConnectOptions::new(through(&url, &addr));
            options
                // Two connections: sqlx pings each connection it takes back (one round
                // trip, every variant alike), and the client goes on with the other.
                .max_connections(2)
                .min_connections(2)
                .test_before_acquire(std::env::var_os("SAFE_DB_BENCH_PING").is_some())
                .sqlx_logging(false);
            let db: DatabaseConnection = Database::connect(options).await.expect("connect");
            safe_db_bench::latency::prepare(&db).await;
            for variant in VARIANTS {
                // Warm up: statements prepared, the connection open.
                for _ in 0..5 {
                    run_variant(&db, variant).await;
                }
                let before = ROUND_TRIPS.load(Ordering::SeqCst);
                let started = Instant::now();
                for _ in 0..ops {
                    run_variant(&db, variant).await;
                }
                let elapsed = started.elapsed();
                let trips = ROUND_TRIPS.load(Ordering::SeqCst) - before;
                let row = Row {
                    database,
                    variant,
                    round_trips: trips as f64 / ops as f64,
                    ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
                };
                eprintln!("{row:?}");
                rows.push(row);
            }
            db.close().await.unwrap();
        }
    });
    let mut json = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        json.push_str(&format!(
            "  {{\"database\": \"{}\", \"variant\": \"{}\", \"round_trips\": {:.2}, \"ops_per_sec\": {:.1}, \"delay_us\": {}}}{}\n",
            r.database,
            r.variant,
            r.round_trips,
            r.ops_per_sec,
            delay.as_micros(),
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    json.push(']');
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/latency.json");
    std::fs::write(&target, json).expect("write target/latency.json");
    println!(
        "| database | variant | round trips / operation | operations / s | vs hand-written SeaORM |"
    );
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        let baseline = safe_db_bench::latency::baseline_of(r.variant);
        let ratio = rows
            .iter()
            .find(|b| b.database == r.database && Some(b.variant) == baseline)
            .map(|b| format!("×{:.2}", r.ops_per_sec / b.ops_per_sec))
            .unwrap_or_else(|| "—".to_owned());
        println!(
            "| {} | {} | {:.2} | {:.0} | {} |",
            r.database, r.variant, r.round_trips, r.ops_per_sec, ratio
        );
    }
}
