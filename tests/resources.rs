//! Resource bounds of the real binary (issue 7, "resource bounds"):
//!
//! - the memory an idle tunnel costs: RSS (`VmRSS`) after 5,000 open, idle
//!   tunnels, printed as KiB per tunnel and bounded with generous headroom;
//! - no leak: 20 rounds of 500 connections opened and closed leave the open
//!   descriptor count (`/proc/<pid>/fd`) at its baseline and RSS flat;
//! - a flood far beyond `max_connections` is refused without growing RSS.
//!
//! The test process raises its own `RLIMIT_NOFILE` (the child inherits it)
//! because it holds both ends of thousands of connections. Only loopback
//! addresses; every wait is bounded; every loop is bounded.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ip4(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("test upstreams are IPv4"),
    }
}

/// Descriptors the proxy holds per tunnel at most: two sockets and, once
/// bytes have moved, a splice(2) pipe (two descriptors) per direction.
const FDS_PER_TUNNEL: u64 = 6;

/// An echo upstream, DNS for it, and the real binary allowing it.
struct Setup {
    _dns: DnsServer,
    _upstream: Upstream,
    bin: BinProxy,
    authority: String,
}

async fn setup(tag: &str) -> Setup {
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    dns.set_v4("echo.test", ip4(upstream.addr)).await;
    let port = upstream.addr.port();
    let bin = BinProxy::spawn(
        tag,
        &bin_config(dns.addr, true, ""),
        &format!(
            "[[rule]]\nname = \"echo\"\nhosts = [\"echo.test\"]\nports = [{port}]\ntls = \"any\"\n\
             [[rule]]\nname = \"other\"\nhosts = [\"other.test\"]\nports = [{port}]\ntls = \"any\"\n"
        ),
        &[],
    )
    .await;
    Setup {
        _dns: dns,
        _upstream: upstream,
        bin,
        authority: format!("echo.test:{port}"),
    }
}

/// Opens `n` tunnels (100 at a time), each carrying one small round trip.
async fn open_tunnels(proxy: SocketAddr, authority: &str, n: usize) -> Vec<TcpStream> {
    let authority: Arc<str> = authority.into();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(100);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let a = authority.clone();
            set.spawn(async move {
                let mut t = tunnel(proxy, &a).await;
                assert_eq!(roundtrip(&mut t, b"ping").await, b"ping");
                t
            });
        }
        while let Some(t) = set.join_next().await {
            out.push(t.expect("tunnel task"));
        }
    }
    out
}

/// Sockets and pipes among a process's open descriptors.
fn fd_kinds(pid: u32) -> (usize, usize) {
    let (mut sockets, mut pipes) = (0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        match std::fs::read_link(e.path()) {
            Ok(l) if l.to_string_lossy().starts_with("socket:") => sockets += 1,
            Ok(l) if l.to_string_lossy().starts_with("pipe:") => pipes += 1,
            _ => {}
        }
    }
    (sockets, pipes)
}

/// Opens `n` tunnels (100 at a time) that never carry a byte.
async fn open_quiet_tunnels(proxy: SocketAddr, authority: &str, n: usize) -> Vec<TcpStream> {
    let authority: Arc<str> = authority.into();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(100);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let a = authority.clone();
            set.spawn(async move { tunnel(proxy, &a).await });
        }
        while let Some(t) = set.join_next().await {
            out.push(t.expect("tunnel task"));
        }
    }
    out
}

/// Closes tunnels the polite way (FIN, then the echo's FIN back).
async fn close_tunnels(tunnels: Vec<TcpStream>) {
    let mut set = tokio::task::JoinSet::new();
    for mut t in tunnels {
        set.spawn(async move {
            let _ = t.shutdown().await;
            expect_closed(&mut t).await;
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("close task");
    }
}

/// Waits until the proxy reports `n` open CONNECT tunnels.
async fn active_tunnels_become(bin: &BinProxy, n: f64) {
    within(&format!("{n} active tunnels"), async {
        loop {
            let m = bin.metrics().await;
            if metric_value(&m, "portcullis_active_tunnels", &[("listener", "connect")]) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Waits until the proxy holds at most `limit` descriptors; returns the count.
async fn fds_settle(bin: &BinProxy, limit: usize) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = bin.fd_count();
        if n <= limit || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_per_idle_tunnel_is_bounded() {
    const N: usize = 5000;
    // The test process holds a client and an upstream socket per tunnel; the
    // proxy (it inherits the limit) two sockets per tunnel, plus two pipes
    // once bytes have moved. Raise the limit as far as allowed, and let as
    // many tunnels carry a round trip as the proxy's share allows.
    let limit = raise_fd_limit(N as u64 * FDS_PER_TUNNEL + 1000);
    assert!(
        limit >= 2 * N as u64 + 1000,
        "RLIMIT_NOFILE {limit} is too low for {N} tunnels"
    );
    let used = (N as u64).min((limit - 1000 - 2 * N as u64) / (FDS_PER_TUNNEL - 2)) as usize;
    let s = setup("rss-idle").await;
    // Warm-up: threads, allocator arenas, resolver cache, metric series.
    let warm = open_tunnels(s.bin.proxy, &s.authority, 200).await;
    close_tunnels(warm).await;
    active_tunnels_become(&s.bin, 0.0).await;
    let before = s.bin.rss_kib();
    let fds_before = s.bin.fd_count();

    let mut tunnels = open_tunnels(s.bin.proxy, &s.authority, used).await;
    tunnels.extend(open_quiet_tunnels(s.bin.proxy, &s.authority, N - used).await);
    active_tunnels_become(&s.bin, N as f64).await;
    let after = s.bin.rss_kib();
    let fds_after = s.bin.fd_count();
    let per_tunnel = (after.saturating_sub(before)) as f64 / N as f64;
    println!(
        "{N} idle tunnels ({used} of them after a round trip): RSS {before} KiB -> {after} KiB \
         = {per_tunnel:.1} KiB per tunnel; descriptors {fds_before} -> {fds_after}"
    );
    assert!(
        per_tunnel < 64.0,
        "an idle tunnel costs {per_tunnel:.1} KiB of RSS"
    );
    // Two sockets per tunnel; pipes (splice) only for tunnels whose pump
    // has woken up, at most two per direction.
    let (sockets, pipes) = fd_kinds(s.bin.pid());
    println!("descriptors: {sockets} sockets, {pipes} pipes");
    assert!(sockets <= 2 * N + 10, "{sockets} sockets for {N} tunnels");
    assert!(pipes <= 4 * N + 10, "{pipes} pipes for {N} tunnels");
    close_tunnels(tunnels).await;
    active_tunnels_become(&s.bin, 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_descriptor_or_memory_growth_over_20_rounds_of_500_connections() {
    raise_fd_limit(500 * FDS_PER_TUNNEL + 1000);
    let s = setup("rss-rounds").await;
    let mut rss = Vec::new();
    let mut fds = Vec::new();
    for round in 0..20 {
        // 450 tunnels and 50 refused requests (403) per round.
        let tunnels = open_tunnels(s.bin.proxy, &s.authority, 450).await;
        let mut refused = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let proxy = s.bin.proxy;
            let port = s.authority.rsplit(':').next().unwrap().to_owned();
            refused.spawn(async move {
                let (mut c, r) = connect(proxy, &format!("denied.test:{port}")).await;
                assert_error(&r, 403, "http_request_denied");
                expect_closed(&mut c).await;
            });
        }
        while let Some(r) = refused.join_next().await {
            r.expect("refused client");
        }
        close_tunnels(tunnels).await;
        active_tunnels_become(&s.bin, 0.0).await;
        let baseline = fds.first().copied().unwrap_or(usize::MAX);
        fds.push(fds_settle(&s.bin, baseline.saturating_add(4)).await);
        rss.push(s.bin.rss_kib());
        println!(
            "round {round}: {} descriptors, RSS {} KiB",
            fds[round], rss[round]
        );
    }
    let fd_base = fds[0];
    assert!(
        fds.iter().all(|&n| n <= fd_base + 4),
        "descriptors grow across rounds: {fds:?}"
    );
    // Allocator arenas settle during the first rounds; after that a leak of
    // even 1 KiB per connection would add ~7 MiB over the last 15 rounds.
    let growth = rss[19] as i64 - rss[4] as i64;
    assert!(
        growth < 4 * 1024,
        "RSS grows across rounds ({growth} KiB from round 5 to 20): {rss:?}"
    );
    // Every connection is access-logged (the writer thread may lag a little).
    let logged = || {
        s.bin
            .stdout_lines()
            .iter()
            .filter(|l| l.contains("\"listener\":\"connect\""))
            .count()
    };
    within("every connection to be access-logged", async {
        while logged() < 20 * 500 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(logged(), 20 * 500, "one record per connection");
}

/// A flood far beyond `max_connections` against the real binary: the
/// excess is refused (503 or a close), memory stays bounded, and the
/// proxy serves again once the flood is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_beyond_max_connections_keeps_memory_bounded() {
    const FLOOD: usize = 3000;
    raise_fd_limit(FLOOD as u64 * 2 + 1000);
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    dns.set_v4("echo.test", ip4(upstream.addr)).await;
    let port = upstream.addr.port();
    let authority = format!("echo.test:{port}");
    let bin = BinProxy::spawn(
        "flood",
        &bin_config(dns.addr, true, "max_connections = 50\n"),
        &format!(
            "[[rule]]\nname = \"echo\"\nhosts = [\"echo.test\"]\nports = [{port}]\ntls = \"any\"\n"
        ),
        &[],
    )
    .await;
    let held = open_tunnels(bin.proxy, &authority, 50).await;
    let before = bin.rss_kib();
    // The flood: every client sends its CONNECT and holds on.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut c = dial(bin.proxy).await;
        let _ = c
            .write_all(format!("CONNECT {authority} HTTP/1.1\r\n\r\n").as_bytes())
            .await;
        flood.push(c);
    }
    let mut refused = 0;
    for c in &mut flood {
        let mut buf = Vec::new();
        within("an over-limit client's answer", async {
            let mut chunk = [0u8; 1024];
            loop {
                match c.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 503"),
            "an over-limit client got {text}"
        );
        refused += 1;
    }
    let after = bin.rss_kib();
    println!("{refused} over-limit clients refused; RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "a flood of {FLOOD} refused clients grew RSS from {before} KiB to {after} KiB"
    );
    drop(flood);
    close_tunnels(held).await;
    active_tunnels_become(&bin, 0.0).await;
    let again = open_tunnels(bin.proxy, &authority, 50).await;
    assert_eq!(again.len(), 50, "every slot is usable again");
}
