//! Faults around the proxy (issue 7, "faults"): a DNS server that stops
//! answering, truncates over UDP or answers garbage; upstreams that accept
//! and reset, reset mid-transfer, or accept and never answer; file
//! descriptors exhausted in the real binary. In each case the proxy answers
//! what SPEC.md says, keeps no stuck task, and serves again once the fault
//! is gone. (An upstream that blackholes the SYN is
//! `upstream_connect_timeout_is_504_connection_timeout` in tests/connect.rs.)
//!
//! Only loopback addresses; every wait is bounded; every loop is bounded.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
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

/// Waits until the proxy's task tracker is back to `baseline` tasks (its
/// accept loops): no connection task is left behind.
async fn no_stuck_tasks(proxy: &Proxy, baseline: usize) {
    let tasks = &proxy.running.shared.tasks;
    within("connection tasks to finish", async {
        while tasks.len() > baseline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// An echo upstream named `*.<zone>` through a [`ScriptedDns`], a policy
/// allowing `*.<zone>` on its port, and the proxy.
struct DnsFault {
    dns: ScriptedDns,
    upstream: Upstream,
    proxy: Proxy,
    baseline: usize,
}

async fn dns_fault(zone: &str, mode: DnsMode) -> DnsFault {
    let dns = ScriptedDns::start(mode).await;
    let upstream = echo(bind_fresh(0).await);
    let mut cfg = config(dns.addr);
    cfg.dns_timeout = Duration::from_millis(600);
    let proxy = Proxy::start(
        cfg,
        one_rule("zone", &format!("*.{zone}"), upstream.addr.port(), "any"),
    )
    .await;
    let baseline = proxy.running.shared.tasks.len();
    DnsFault {
        dns,
        upstream,
        proxy,
        baseline,
    }
}

impl DnsFault {
    async fn name(&self, name: &str) -> String {
        self.dns.inner.set_v4(name, ip4(self.upstream.addr)).await;
        format!("{name}:{}", self.upstream.addr.port())
    }

    async fn works(&self, authority: &str) {
        let mut t = tunnel(self.proxy.addr, authority).await;
        assert_eq!(roundtrip(&mut t, b"through").await, b"through");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_that_stops_answering_is_504_dns_timeout_and_recovery_is_automatic() {
    let f = dns_fault("flaky.test", DnsMode::Forward).await;
    let before = f.name("before.flaky.test").await;
    f.works(&before).await;

    f.dns.set_mode(DnsMode::Silent);
    let during = f.name("during.flaky.test").await;
    // Several clients at once during the outage: each gets its 504.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, authority) = (f.proxy.addr, during.clone());
        clients.spawn(async move {
            let (mut c, r) = connect(addr, &authority).await;
            assert_error(&r, 504, "dns_timeout");
            expect_closed(&mut c).await;
        });
    }
    within("every client of the outage to be answered", async {
        while let Some(r) = clients.join_next().await {
            r.expect("client task");
        }
    })
    .await;
    assert!(f.dns.udp_queries.load(Ordering::SeqCst) > 1);
    no_stuck_tasks(&f.proxy, f.baseline).await;
    assert_eq!(
        f.proxy.metric(
            "portcullis_dns_lookup_duration_seconds_count",
            &[("outcome", "timeout")]
        ),
        20.0
    );

    // The server is back: the same name resolves at once, no restart.
    f.dns.set_mode(DnsMode::Forward);
    f.works(&during).await;
    f.works(&f.name("after.flaky.test").await).await;
    no_stuck_tasks(&f.proxy, f.baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_udp_answers_fall_back_to_tcp() {
    let f = dns_fault("tc.test", DnsMode::Truncate).await;
    let authority = f.name("big.tc.test").await;
    f.works(&authority).await;
    assert!(
        f.dns.udp_queries.load(Ordering::SeqCst) >= 1,
        "asked over UDP first"
    );
    assert!(
        f.dns.tcp_connections.load(Ordering::SeqCst) >= 1,
        "the truncated answer was retried over TCP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_dns_answers_are_dns_errors_and_the_proxy_recovers() {
    let f = dns_fault("junk.test", DnsMode::Garbage).await;
    for (i, mode) in [DnsMode::Garbage, DnsMode::GarbageSameId]
        .into_iter()
        .enumerate()
    {
        f.dns.set_mode(mode);
        for j in 0..3 {
            let authority = f.name(&format!("n{i}{j}.junk.test")).await;
            let (mut c, r) = connect(f.proxy.addr, &authority).await;
            println!("{mode:?}: {}", r.status);
            match r.status {
                502 => assert_error(&r, 502, "dns_error"),
                504 => assert_error(&r, 504, "dns_timeout"),
                _ => panic!("{mode:?}: {r:?} {}", r.text()),
            }
            expect_closed(&mut c).await;
        }
    }
    assert_eq!(f.upstream.accepted.load(Ordering::SeqCst), 0);
    no_stuck_tasks(&f.proxy, f.baseline).await;
    f.dns.set_mode(DnsMode::Forward);
    f.works(&f.name("clean.junk.test").await).await;
}

/// An upstream that accepts, then resets at once (SO_LINGER 0).
fn resetter(listener: tokio::net::TcpListener) -> Upstream {
    serve_each_pub(listener, |s| async move {
        set_linger_zero(&s);
        drop(s);
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_accepts_then_resets() {
    let dns = DnsServer::start().await;
    let bad = resetter(bind_fresh(0).await);
    let good = echo(bind_fresh(0).await);
    dns.set_v4("reset.test", ip4(bad.addr)).await;
    dns.set_v4("good.test", ip4(good.addr)).await;
    let port = bad.addr.port();
    let pol = policy(&format!(
        "[[rule]]\nname = \"reset\"\nhosts = [\"reset.test\"]\nports = [{port}]\ntls = \"any\"\n\
         [[rule]]\nname = \"good\"\nhosts = [\"good.test\"]\nports = [{}]\ntls = \"any\"\n",
        good.addr.port()
    ));
    let proxy = Proxy::start(config(dns.addr), pol).await;
    let baseline = proxy.running.shared.tasks.len();
    for _ in 0..5 {
        // CONNECT: the dial succeeds (the handshake completes before the
        // reset), then the tunnel ends at once; or the dial itself fails.
        let (mut c, r) = connect(proxy.addr, &format!("reset.test:{port}")).await;
        match r.status {
            200 => {
                let _ = c.write_all(b"anyone there?").await;
                expect_closed(&mut c).await;
            }
            502 => assert_error(&r, 502, "destination_unavailable"),
            _ => panic!("{r:?}"),
        }
        let rec = proxy.next_record();
        assert_eq!(rec.rule, "reset", "{rec:?}");
        // Absolute form: no response can come, so 502.
        let req = format!("GET http://reset.test:{port}/ HTTP/1.1\r\nHost: reset.test\r\n\r\n");
        let (_, r) = send_raw(proxy.addr, req.as_bytes()).await;
        assert_error(&r, 502, "destination_unavailable");
        let _ = proxy.next_record();
    }
    assert!(bad.accepted.load(Ordering::SeqCst) >= 5);
    no_stuck_tasks(&proxy, baseline).await;
    let mut t = tunnel(proxy.addr, &format!("good.test:{}", good.addr.port())).await;
    assert_eq!(roundtrip(&mut t, b"fine").await, b"fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_transfer_closes_the_tunnel() {
    let dns = DnsServer::start().await;
    // Echoes 64 KiB, then resets.
    let up = serve_each_pub(bind_fresh(0).await, |mut s| async move {
        let mut buf = vec![0u8; 64 * 1024];
        if s.read_exact(&mut buf).await.is_ok() {
            let _ = s.write_all(&buf).await;
        }
        set_linger_zero(&s);
    });
    dns.set_v4("midway.test", ip4(up.addr)).await;
    let authority = format!("midway.test:{}", up.addr.port());
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("midway", "midway.test", up.addr.port(), "any"),
    )
    .await;
    let baseline = proxy.running.shared.tasks.len();
    let mut t = tunnel(proxy.addr, &authority).await;
    let data = pattern(64 * 1024, 3);
    assert_eq!(roundtrip(&mut t, &data).await, data);
    // Keep sending: the upstream is gone, the proxy must close our side.
    within("the tunnel to close after the upstream's reset", async {
        let chunk = pattern(64 * 1024, 4);
        for _ in 0..1024 {
            if t.write_all(&chunk).await.is_err() {
                return;
            }
        }
        panic!("64 MiB written into a tunnel whose upstream reset");
    })
    .await;
    let rec = proxy.next_record();
    assert_eq!((rec.rule.as_str(), rec.bytes_down), ("midway", 64 * 1024));
    no_stuck_tasks(&proxy, baseline).await;
}

/// Absolute form to an upstream that accepts and never answers: the request
/// does not hold its connection (and its `max_connections` slot) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_to_a_silent_upstream_is_bounded() {
    let dns = DnsServer::start().await;
    let silent = serve_each_pub(bind_fresh(0).await, |mut s| async move {
        let mut sink = [0u8; 1024];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    });
    dns.set_v4("silent.test", ip4(silent.addr)).await;
    let port = silent.addr.port();
    let mut cfg = config(dns.addr);
    cfg.idle_timeout = Duration::from_secs(1);
    let proxy = Proxy::start(cfg, one_rule("silent", "silent.test", port, "any")).await;
    let baseline = proxy.running.shared.tasks.len();
    let req = format!("GET http://silent.test:{port}/ HTTP/1.1\r\nHost: silent.test\r\n\r\n");
    let (mut c, r) = send_raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(r.status, 504, "{r:?} {}", r.text());
    // connection_timeout today; http_response_timeout (RFC 9209) would fit better.
    let ps = r.header("proxy-status").unwrap_or_default().to_owned();
    let token = if ps.contains("error=http_response_timeout") {
        "http_response_timeout"
    } else {
        "connection_timeout"
    };
    assert_error(&r, 504, token);
    expect_closed(&mut c).await;
    no_stuck_tasks(&proxy, baseline).await;
    // A client that gives up first frees its slot too.
    let mut c = dial(proxy.addr).await;
    c.write_all(req.as_bytes()).await.unwrap();
    drop(c);
    no_stuck_tasks(&proxy, baseline).await;
}

// ---------------------------------------------------------------------------
// File descriptors exhausted (real binary under a low RLIMIT_NOFILE)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptors_exhausted_accept_backs_off_and_recovers() {
    let dns = DnsServer::start().await;
    let up = echo(bind_fresh(0).await);
    dns.set_v4("echo.test", ip4(up.addr)).await;
    let port = up.addr.port();
    let authority = format!("echo.test:{port}");
    let mut bin = BinProxy::spawn(
        "fd-exhaustion",
        &bin_config(dns.addr, true, "handshake_timeout_ms = 60000\n"),
        &format!(
            "[[rule]]\nname = \"echo\"\nhosts = [\"echo.test\"]\nports = [{port}]\ntls = \"any\"\n"
        ),
        // `exec` keeps the pid: the proxy itself runs with 64 descriptors.
        &["sh", "-c", "ulimit -n 64 && exec \"$@\"", "sh"],
    )
    .await;
    let limit = std::fs::read_to_string(format!("/proc/{}/limits", bin.pid())).unwrap();
    assert!(
        limit
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 64 ")),
        "the proxy runs with 64 descriptors:\n{limit}"
    );
    // It works before the flood.
    let mut t = tunnel(bin.proxy, &authority).await;
    assert_eq!(roundtrip(&mut t, b"before").await, b"before");
    drop(t);

    // 100 silent connections: each the proxy accepts holds a descriptor
    // (waiting for a request head), so accept(2) soon fails with EMFILE.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(dial(bin.proxy).await);
    }
    let warnings = |bin: &BinProxy| -> Vec<f64> {
        bin.stderr_lines()
            .iter()
            .filter(|l| l.contains("accept failed"))
            .map(|l| log_seconds(l))
            .collect()
    };
    let first = within("accept errors to be logged, backing off", async {
        loop {
            let w = warnings(&bin);
            if w.len() >= 4 {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The proxy's own timestamps: with the back-off (5 ms, doubling) the
    // fourth failure cannot follow the first sooner than 5+10+20 ms; a hot
    // accept loop would log thousands of them in that time.
    let gap = (first[3] - first[0]).rem_euclid(86_400.0);
    assert!(
        gap >= 0.030,
        "accept retried without backing off: {:?}",
        &first[..4]
    );
    assert!(bin.alive(), "the proxy survived EMFILE");
    // Descriptors inherited from the test harness (a jobserver pipe, say)
    // may sit above the limit; the rest of the table is full.
    let fds = bin.fd_count();
    assert!(fds >= 60, "descriptors are exhausted: {fds} open");
    // A client while descriptors are exhausted waits in the backlog...
    let mut waiting = dial(bin.proxy).await;
    waiting
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();

    // ...and is served once the flood leaves.
    drop(flood);
    let r = read_head(&mut waiting).await;
    assert!(
        r.status == 200 || r.status == 502,
        "the queued client got an answer: {r:?}"
    );
    let mut t = tunnel(bin.proxy, &authority).await;
    assert_eq!(roundtrip(&mut t, b"after").await, b"after");
    assert!(bin.alive());
    println!(
        "{} accept-failure warnings while descriptors were exhausted",
        warnings(&bin).len()
    );
    let _ = TcpStream::connect(bin.admin).await.expect("admin still up");
}

/// Seconds since midnight of a JSON diagnostic line's `timestamp`
/// (RFC 3339, UTC).
fn log_seconds(line: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    let ts = v["timestamp"].as_str().expect("a timestamp");
    let time = ts.split('T').nth(1).expect("RFC 3339 time");
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().unwrap().parse().unwrap();
    let m: f64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    h * 3600.0 + m * 60.0 + s
}
