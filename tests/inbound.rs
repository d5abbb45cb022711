//! The `[[inbound]]` listener, in-process: a listed source is forwarded
//! byte-for-byte both ways; anything else is closed at once with nothing
//! sent upstream; every connection is access-logged and counted with
//! `listener="inbound"` and `rule` = the inbound's name. Loopback only;
//! every wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::access_log::{AccessLog, AccessRecord};
use portcullis::app::Running;
use portcullis::config::{Config, Inbound};
use portcullis::policy::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Upper bound for every wait.
const WAIT: Duration = Duration::from_secs(10);
/// Every proxy timeout in these tests: far beyond `WAIT`, so a connection
/// closed within `WAIT` was closed at once, not by a timeout.
const NEVER: Duration = Duration::from_secs(3600);

/// The tests run one at a time: one of them measures the process's memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for: {what}"))
}

/// An upstream that counts accepted connections and echoes (or, with a
/// banner, greets first and then echoes).
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn upstream(banner: Option<&'static [u8]>) -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Some(b) = banner {
                    if s.write_all(b).await.is_err() {
                        return;
                    }
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Upstream { addr, accepted }
}

/// Starts portcullis with only the `ticket-api` inbound listener.
async fn start(forward: SocketAddr, sources: &[&str]) -> (Running, Receiver<AccessRecord>) {
    let mut cfg = Config::load_from(None, Some(Default::default())).unwrap();
    cfg.proxy_listen = vec![];
    cfg.admin_listen = None;
    cfg.handshake_timeout = NEVER;
    cfg.idle_timeout = NEVER;
    cfg.inbound = vec![Inbound {
        name: "ticket-api".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        forward: forward.to_string(),
        sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
    }];
    let (log, rx) = AccessLog::collector();
    let running = portcullis::app::start(cfg, Policy::builtin(), log)
        .await
        .expect("portcullis starts");
    assert_eq!(running.inbound_addrs.len(), 1);
    (running, rx)
}

/// Next access-log record (bounded wait).
fn record(rx: &Receiver<AccessRecord>) -> AccessRecord {
    tokio::task::block_in_place(|| rx.recv_timeout(WAIT))
        .unwrap_or_else(|e| panic!("no access-log record within {WAIT:?}: {e}"))
}

/// Connects to `to` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    within("connect", s.connect(to)).await.expect("connect")
}

/// Reads until EOF or a reset (within `WAIT`, far below every proxy
/// timeout here, so: closed at once); fails if data arrives.
async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match within("the connection to be closed", s.read(&mut buf)).await {
        Ok(0) => {}
        Ok(n) => panic!("a denied connection received {n} bytes"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "unexpected error {e}"
        ),
    }
}

/// Value of the `portcullis_connections_total` series with these labels (0 if absent).
fn connections(running: &Running, decision: &str, reason: &str) -> u64 {
    let text = running.shared.metrics.render();
    let labels = [
        format!("decision=\"{decision}\""),
        "listener=\"inbound\"".to_owned(),
        "rule=\"ticket-api\"".to_owned(),
        format!("reason=\"{reason}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("portcullis_connections_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable metric line {l}")) as u64
        })
        .sum()
}

/// Deterministic pseudo-random bytes (xorshift), so corruption cannot hide
/// in a repeating pattern.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_source_is_forwarded_byte_for_byte_both_ways() {
    let _serial = SERIAL.lock().await;
    let up = upstream(None).await;
    let (running, rx) = start(up.addr, &["127.0.0.1/32"]).await;
    let mut s = connect_from(Ipv4Addr::LOCALHOST, running.inbound_addrs[0]).await;

    let data = payload(1 << 20);
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::with_capacity(data.len());
    let recv = r.read_to_end(&mut back);
    let ((), got) = within("1 MiB echoed through the inbound forward", async {
        tokio::join!(send, recv)
    })
    .await;
    got.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ from the bytes sent");
    drop(s);

    let rec = record(&rx);
    assert_eq!(rec.listener, "inbound");
    assert_eq!(rec.rule, "ticket-api");
    assert_eq!(rec.decision, "allow");
    assert_eq!(rec.reason, "ok");
    assert_eq!(rec.upstream.as_deref(), Some(up.addr.to_string().as_str()));
    assert_eq!(rec.host, "127.0.0.1");
    assert_eq!(rec.port, up.addr.port());
    assert_eq!((rec.bytes_up, rec.bytes_down), (1 << 20, 1 << 20));
    assert!(rec.client.starts_with("127.0.0.1:"), "{}", rec.client);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(connections(&running, "allow", "ok"), 1);
    let text = running.shared.metrics.render();
    assert!(
        text.contains(
            "portcullis_tunnel_bytes_total{direction=\"upstream\",rule=\"ticket-api\"} 1048576"
        ),
        "{text}"
    );
    running.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_through_the_forward() {
    let _serial = SERIAL.lock().await;
    let up = upstream(Some(b"220 tickets ready\r\n")).await;
    let (running, rx) = start(up.addr, &["127.0.0.0/8"]).await;
    let mut s = connect_from(Ipv4Addr::LOCALHOST, running.inbound_addrs[0]).await;
    let mut banner = [0u8; 19];
    within("the upstream's banner", s.read_exact(&mut banner))
        .await
        .unwrap();
    assert_eq!(&banner, b"220 tickets ready\r\n");
    s.write_all(b"ping").await.unwrap();
    let mut pong = [0u8; 4];
    within("the echo", s.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"ping");
    drop(s);
    let rec = record(&rx);
    assert_eq!(
        (rec.decision, rec.bytes_up, rec.bytes_down),
        ("allow", 4, 23)
    );
    running.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_source_is_closed_at_once_and_nothing_reaches_upstream() {
    let _serial = SERIAL.lock().await;
    let up = upstream(None).await;
    let (running, rx) = start(up.addr, &["127.0.0.2/32"]).await;
    let addr = running.inbound_addrs[0];

    let mut s = connect_from(Ipv4Addr::LOCALHOST, addr).await;
    // Bytes the client sends must go nowhere.
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: tickets\r\n\r\n")
        .await;
    expect_closed(&mut s).await;

    let rec = record(&rx);
    assert_eq!(rec.listener, "inbound");
    assert_eq!(rec.rule, "ticket-api");
    assert_eq!(rec.decision, "deny");
    assert_eq!(rec.reason, "http_request_denied");
    assert_eq!(rec.upstream, None);
    assert_eq!((rec.bytes_up, rec.bytes_down), (0, 0));
    assert!(rec.client.starts_with("127.0.0.1:"), "{}", rec.client);
    assert_eq!(connections(&running, "deny", "http_request_denied"), 1);
    // The record is written after the decision, so the denied connection can
    // no longer dial: the upstream has seen nothing.
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);

    // The listed source, from its own loopback address, is served.
    let mut ok = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    ok.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    within("the echo", ok.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"hello");
    drop(ok);
    let rec = record(&rx);
    assert_eq!((rec.decision, rec.rule.as_str()), ("allow", "ticket-api"));
    assert!(rec.client.starts_with("127.0.0.2:"), "{}", rec.client);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(connections(&running, "allow", "ok"), 1);
    running.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_forward_is_logged_as_an_error() {
    let _serial = SERIAL.lock().await;
    // A port nobody listens on: bind, note the port, close.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (running, rx) = start(closed, &["127.0.0.1/32"]).await;
    let mut s = connect_from(Ipv4Addr::LOCALHOST, running.inbound_addrs[0]).await;
    expect_closed(&mut s).await;
    let rec = record(&rx);
    assert_eq!((rec.listener, rec.rule.as_str()), ("inbound", "ticket-api"));
    assert_eq!(rec.decision, "error");
    assert_eq!(rec.reason, "connection_refused");
    assert_eq!(connections(&running, "error", "connection_refused"), 1);
    running.shutdown(Duration::from_millis(200)).await;
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Opens `n` connections from 127.0.0.1 (not listed), at most 50 at a time,
/// each of which must be closed at once.
async fn scan(addr: SocketAddr, n: usize) {
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(50);
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            tasks.push(tokio::spawn(async move {
                let mut s = connect_from(Ipv4Addr::LOCALHOST, addr).await;
                expect_closed(&mut s).await
            }));
        }
        for t in tasks {
            t.await.expect("scan task");
        }
        done += batch;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_scan_from_an_unlisted_source_leaves_memory_flat_and_the_listener_serving() {
    let _serial = SERIAL.lock().await;
    let up = upstream(None).await;
    let (running, rx) = start(up.addr, &["127.0.0.2/32"]).await;
    let addr = running.inbound_addrs[0];
    // Drain the access log as the scan goes (the records are the point, not a leak).
    let drained = Arc::new(AtomicUsize::new(0));
    let counter = drained.clone();
    let drainer = std::thread::spawn(move || {
        while counter.load(Ordering::SeqCst) < 1101 {
            match rx.recv_timeout(WAIT) {
                Ok(r) => {
                    assert_eq!(r.listener, "inbound");
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => break,
            }
        }
    });

    within("warm-up scan", scan(addr, 100)).await;
    let before = rss();
    within("1000-connection scan", scan(addr, 1000)).await;
    let after = rss();
    let growth = after.saturating_sub(before);
    eprintln!("rss {before} -> {after}");
    assert!(
        growth < 16 << 20,
        "RSS grew by {growth} bytes over 1000 denied connections ({before} -> {after})"
    );
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "a denied connection reached upstream"
    );

    // Still serving the listed source.
    let mut ok = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr).await;
    ok.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    within("the echo after the scan", ok.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"still here");
    drop(ok);

    let deadline = Instant::now() + WAIT;
    while drained.load(Ordering::SeqCst) < 1101 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        drained.load(Ordering::SeqCst),
        1101,
        "one record per connection"
    );
    assert_eq!(connections(&running, "deny", "http_request_denied"), 1100);
    assert_eq!(connections(&running, "allow", "ok"), 1);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    assert!(running
        .shared
        .metrics
        .render()
        .contains("portcullis_active_tunnels{listener=\"inbound\"} 0"));
    running.shutdown(Duration::from_millis(200)).await;
    drop(running);
    let _ = drainer.join();
}
