//! Integration tests of the explicit proxy listener (CONNECT and
//! absolute-form), against SPEC.md: the "Explicit proxy behaviour" table, the
//! seed policy, connect-time DNS, tunnels, report mode, the access log.
//!
//! Every test starts its own DNS server, upstreams (on their own loopback
//! addresses) and proxy, so tests run in parallel without sharing state.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use portcullis::config::Mode;
use portcullis::policy::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;

const MIB: usize = 1024 * 1024;

fn v4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

/// DNS + one echo upstream named `host` on a fresh port, a one-rule policy
/// for it with `tls`, and the proxy.
struct EchoSetup {
    dns: DnsServer,
    upstream: Upstream,
    proxy: Proxy,
    authority: String,
}

async fn echo_setup(
    host: &str,
    tls: &str,
    tweak: impl FnOnce(&mut portcullis::config::Config),
) -> EchoSetup {
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    let ip = match upstream.addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!(),
    };
    dns.set_v4(host, ip).await;
    let port = upstream.addr.port();
    let mut cfg = config(dns.addr);
    tweak(&mut cfg);
    let proxy = Proxy::start(cfg, one_rule("echo-rule", host, port, tls)).await;
    EchoSetup {
        dns,
        upstream,
        proxy,
        authority: format!("{host}:{port}"),
    }
}

// ---------------------------------------------------------------------------
// SPEC "Explicit proxy behaviour" table, row by row
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_connect_gets_200_and_a_byte_tunnel() {
    let s = echo_setup("echo.test", "any", |_| {}).await;
    let (mut t, r) = connect(s.proxy.addr, &s.authority).await;
    assert_eq!(r.status, 200, "{r:?}");
    let data = pattern(4096, 1);
    assert_eq!(roundtrip(&mut t, &data).await, data);
    assert_eq!(s.upstream.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_not_in_policy_is_403_http_request_denied() {
    let s = echo_setup("echo.test", "any", |_| {}).await;
    let port = s.upstream.addr.port();
    // Host not in policy (DNS would answer: the refusal is the policy's).
    s.dns
        .set_v4("other.test", Ipv4Addr::new(127, 0, 0, 1))
        .await;
    let (mut c, r) = connect(s.proxy.addr, &format!("other.test:{port}")).await;
    assert_error(&r, 403, "http_request_denied");
    expect_closed(&mut c).await;
    // Right host, wrong port.
    let (_, r) = connect(
        s.proxy.addr,
        &format!("echo.test:{}", port.wrapping_add(1).max(1)),
    )
    .await;
    assert_error(&r, 403, "http_request_denied");
    // IP literal of the allowed upstream.
    let (_, r) = connect(s.proxy.addr, &s.upstream.addr.to_string()).await;
    assert_error(&r, 403, "http_request_denied");
    assert_eq!(
        s.upstream.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_not_in_clients_allow_is_403_http_request_denied() {
    let s = echo_setup("echo.test", "any", |cfg| {
        cfg.clients_allow = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    })
    .await;
    let (mut c, r) = connect(s.proxy.addr, &s.authority).await;
    assert_error(&r, 403, "http_request_denied");
    expect_closed(&mut c).await;
    assert_eq!(s.upstream.accepted.load(Ordering::SeqCst), 0);
    let rec = s.proxy.next_record();
    assert_eq!((rec.decision, rec.reason), ("deny", "http_request_denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolved_address_prohibited_is_403_destination_ip_prohibited() {
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    let port = upstream.addr.port();
    let loopback = upstream.addr.ip();
    dns.set(
        "inside.test",
        &[
            loopback,
            "10.0.0.1".parse().unwrap(),
            "169.254.169.254".parse().unwrap(),
        ],
        300,
    )
    .await;
    // Default deny_cidrs, no 127/8 exception.
    let mut cfg = config(dns.addr);
    cfg.allow_cidrs.clear();
    let proxy = Proxy::start(cfg, one_rule("inside", "inside.test", port, "any")).await;
    let (mut c, r) = connect(proxy.addr, &format!("inside.test:{port}")).await;
    assert_error(&r, 403, "destination_ip_prohibited");
    expect_closed(&mut c).await;
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        0,
        "the proxy never dialled"
    );
    let rec = proxy.next_record();
    assert_eq!(
        (rec.decision, rec.reason, rec.rule.as_str()),
        ("deny", "destination_ip_prohibited", "inside")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_502_dns_error_with_rcode() {
    let dns = DnsServer::start().await;
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("ghost", "ghost.test", 443, "any"),
    )
    .await;
    let (mut c, r) = connect(proxy.addr, "ghost.test:443").await;
    assert_error(&r, 502, "dns_error");
    let ps = r.header("proxy-status").unwrap();
    assert!(
        ps.split(';').any(|p| p.trim() == "rcode=\"NXDOMAIN\""),
        "rcode parameter: {ps}"
    );
    expect_closed(&mut c).await;
    let rec = proxy.next_record();
    assert_eq!((rec.decision, rec.reason), ("error", "dns_error"));
    assert_eq!(
        proxy.metric(
            "portcullis_dns_lookup_duration_seconds_count",
            &[("outcome", "nxdomain")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_timeout_is_504_dns_timeout() {
    let dns = SilentDns::start().await;
    let mut cfg = config(dns.addr);
    cfg.dns_timeout = Duration::from_millis(300);
    let proxy = Proxy::start(cfg, one_rule("slow", "slow.test", 443, "any")).await;
    let (mut c, r) = connect(proxy.addr, "slow.test:443").await;
    assert_error(&r, 504, "dns_timeout");
    expect_closed(&mut c).await;
    assert_eq!(
        proxy.metric(
            "portcullis_dns_lookup_duration_seconds_count",
            &[("outcome", "timeout")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_connection_refused() {
    let dns = DnsServer::start().await;
    // A fresh loopback address where nothing listens: every port refuses.
    let dead = fresh_ip();
    dns.set_v4("dead.test", dead).await;
    let proxy = Proxy::start(config(dns.addr), one_rule("dead", "dead.test", 4433, "any")).await;
    let (mut c, r) = connect(proxy.addr, "dead.test:4433").await;
    assert_error(&r, 502, "connection_refused");
    expect_closed(&mut c).await;
    let rec = proxy.next_record();
    assert_eq!((rec.decision, rec.reason), ("error", "connection_refused"));
    assert_eq!(
        proxy.metric(
            "portcullis_upstream_connect_duration_seconds_count",
            &[("outcome", "refused")]
        ),
        1.0
    );
}

/// Loopback-only way to make a connect hang: a listener with backlog 0 whose
/// accept queue is full drops further SYNs, so `connect` neither succeeds nor
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout_is_504_connection_timeout() {
    let dns = DnsServer::start().await;
    let (listener, addr) = loop {
        let sock = TcpSocket::new_v4().unwrap();
        if sock.bind(SocketAddr::new(v4(fresh_ip()), 0)).is_err() {
            continue;
        }
        let l = sock.listen(0).unwrap();
        let a = l.local_addr().unwrap();
        break (l, a);
    };
    // Fill the accept queue until a connect no longer completes.
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filler connect failed: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "could not fill the accept queue of a backlog-0 listener"
    );
    let IpAddr::V4(ip) = addr.ip() else {
        unreachable!()
    };
    dns.set_v4("stuck.test", ip).await;
    let mut cfg = config(dns.addr);
    cfg.connect_timeout = Duration::from_millis(500);
    let proxy = Proxy::start(cfg, one_rule("stuck", "stuck.test", addr.port(), "any")).await;
    let (mut c, r) = connect(proxy.addr, &format!("stuck.test:{}", addr.port())).await;
    assert_error(&r, 504, "connection_timeout");
    expect_closed(&mut c).await;
    assert_eq!(
        proxy.metric(
            "portcullis_upstream_connect_duration_seconds_count",
            &[("outcome", "timeout")]
        ),
        1.0
    );
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_http_request_error() {
    let s = echo_setup("echo.test", "any", |_| {}).await;
    let long_label = "a".repeat(64);
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            "missing port".into(),
            b"CONNECT echo.test HTTP/1.1\r\nHost: echo.test\r\n\r\n".to_vec(),
        ),
        (
            "empty port".into(),
            b"CONNECT echo.test: HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "port 0".into(),
            b"CONNECT echo.test:0 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "port 70000".into(),
            b"CONNECT echo.test:70000 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "non-numeric port".into(),
            b"CONNECT echo.test:https HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "userinfo".into(),
            b"CONNECT user:pw@echo.test:443 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "path".into(),
            b"CONNECT echo.test:443/path HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "absolute URI".into(),
            b"CONNECT http://echo.test:443/ HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "control byte in host".into(),
            b"CONNECT ec\x01ho.test:443 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "DEL in host".into(),
            b"CONNECT ec\x7fho.test:443 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "label over 63 bytes".into(),
            format!("CONNECT {long_label}.test:443 HTTP/1.1\r\n\r\n").into_bytes(),
        ),
        (
            "empty label".into(),
            b"CONNECT echo..test:443 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "bracketed non-IPv6".into(),
            b"CONNECT [echo.test]:443 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("not HTTP".into(), b"HELLO\r\n\r\n".to_vec()),
        (
            "origin-form GET".into(),
            b"GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n".to_vec(),
        ),
        (
            "bad header line".into(),
            b"CONNECT echo.test:443 HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
        ),
    ];
    for (what, raw) in cases {
        let (mut c, r) = send_raw(s.proxy.addr, &raw).await;
        assert!(
            r.status == 400,
            "{what}: expected 400, got {r:?} body={:?}",
            r.text()
        );
        assert_error(&r, 400, "http_request_error");
        expect_closed(&mut c).await;
    }
    assert_eq!(s.upstream.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_8_kib_is_431() {
    let s = echo_setup("echo.test", "any", |_| {}).await;
    let mut raw = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\n",
        s.authority, s.authority
    )
    .into_bytes();
    raw.extend_from_slice(b"X-Filler: ");
    raw.extend(std::iter::repeat_n(b'a', 9 * 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    let (mut c, r) = send_raw(s.proxy.addr, &raw).await;
    assert_error(&r, 431, "http_request_error");
    expect_closed(&mut c).await;
    // Many small fields adding up to more than 8 KiB as well.
    let mut raw = format!("CONNECT {} HTTP/1.1\r\n", s.authority).into_bytes();
    for i in 0..400 {
        raw.extend_from_slice(format!("X-F{i}: 0123456789\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let (_, r) = send_raw(s.proxy.addr, &raw).await;
    assert_error(&r, 431, "http_request_error");
    assert_eq!(s.upstream.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_not_complete_in_handshake_timeout_is_408() {
    let s = echo_setup("echo.test", "any", |cfg| {
        cfg.handshake_timeout = Duration::from_millis(300)
    })
    .await;
    let started = Instant::now();
    let raw = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\n",
        s.authority, s.authority
    );
    let (mut c, r) = send_raw(s.proxy.addr, raw.as_bytes()).await;
    assert_error(&r, 408, "http_request_error");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout: {:?}",
        started.elapsed()
    );
    expect_closed(&mut c).await;
    // A client that sends nothing at all is closed too (no tunnel held open).
    let mut silent = dial(s.proxy.addr).await;
    let mut buf = Vec::new();
    within(
        "the silent client to be dropped",
        silent.read_to_end(&mut buf),
    )
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_reached_is_503_connection_limit_reached() {
    let s = echo_setup("echo.test", "any", |cfg| cfg.max_connections = 1).await;
    let mut held = tunnel(s.proxy.addr, &s.authority).await;
    assert_eq!(roundtrip(&mut held, b"hold").await, b"hold");
    let (mut c, r) = connect(s.proxy.addr, &s.authority).await;
    assert_error(&r, 503, "connection_limit_reached");
    expect_closed(&mut c).await;
    assert_eq!(
        s.upstream.accepted.load(Ordering::SeqCst),
        1,
        "the refused client never reached upstream"
    );
    // Release the held tunnel; once its record is written its slot is free.
    held.shutdown().await.unwrap();
    expect_closed(&mut held).await;
    drop(held);
    let rec = s.proxy.next_record_with("allow");
    assert_eq!(rec.bytes_up, 4);
    let mut again = tunnel(s.proxy.addr, &s.authority).await;
    assert_eq!(roundtrip(&mut again, b"again").await, b"again");
}

/// A client that connects and sends a TLS ClientHello with `sni`, through a
/// CONNECT tunnel to `authority`. Returns whether the TLS handshake succeeded.
async fn tls_hello_with_sni(proxy: SocketAddr, authority: &str, sni: &str, pki: &TestPki) -> bool {
    let t = tunnel(proxy, authority).await;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    // Bounded below WAIT: if the proxy wrongly forwarded the ClientHello to a
    // sink, the handshake would hang; dropping the client then lets the sink
    // report the bytes it got, which the caller asserts on.
    matches!(
        tokio::time::timeout(Duration::from_secs(3), connector.connect(name, t)).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_with_mismatched_sni_closes_before_any_byte_reaches_upstream() {
    let dns = DnsServer::start().await;
    let sink = Sink::start(bind_fresh(0).await);
    let IpAddr::V4(ip) = sink.upstream.addr.ip() else {
        unreachable!()
    };
    let port = sink.upstream.addr.port();
    dns.set_v4("secure.test", ip).await;
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("secure", "secure.test", port, "required"),
    )
    .await;
    let authority = format!("secure.test:{port}");
    let pki = TestPki::new("other.test");

    // SNI names another host.
    assert!(!tls_hello_with_sni(proxy.addr, &authority, "other.test", &pki).await);
    assert_eq!(
        sink.next_closed().await,
        0,
        "no client byte reached the upstream"
    );
    let rec = proxy.next_record();
    assert_eq!(
        (rec.decision, rec.reason, rec.rule.as_str()),
        ("deny", "tls_protocol_error", "secure")
    );
    assert_eq!(rec.bytes_up, 0);

    // Not TLS at all where TLS is required.
    let mut t = tunnel(proxy.addr, &authority).await;
    let _ = t
        .write_all(b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n")
        .await;
    expect_closed(&mut t).await;
    assert_eq!(
        sink.next_closed().await,
        0,
        "no client byte reached the upstream"
    );
    let rec = proxy.next_record();
    assert_eq!((rec.decision, rec.reason), ("deny", "tls_protocol_error"));

    assert_eq!(
        proxy.metric(
            "portcullis_connections_total",
            &[
                ("listener", "connect"),
                ("decision", "deny"),
                ("rule", "secure"),
                ("reason", "tls_protocol_error")
            ]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_optional_passes_plain_bytes_but_checks_a_client_hello() {
    let dns = DnsServer::start().await;
    let sink = Sink::start(bind_fresh(0).await);
    let IpAddr::V4(ip) = sink.upstream.addr.ip() else {
        unreachable!()
    };
    let port = sink.upstream.addr.port();
    dns.set_v4("opt.test", ip).await;
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("opt", "opt.test", port, "optional"),
    )
    .await;
    let authority = format!("opt.test:{port}");
    // Plain bytes pass.
    let mut t = tunnel(proxy.addr, &authority).await;
    t.write_all(b"plain protocol").await.unwrap();
    t.shutdown().await.unwrap();
    assert_eq!(sink.next_closed().await, 14);
    drop(t);
    assert_eq!(proxy.next_record().decision, "allow");
    // A ClientHello for another name does not.
    let pki = TestPki::new("other.test");
    assert!(!tls_hello_with_sni(proxy.addr, &authority, "other.test", &pki).await);
    assert_eq!(sink.next_closed().await, 0);
    let rec = proxy.next_record();
    assert_eq!((rec.decision, rec.reason), ("deny", "tls_protocol_error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_bytes_flow_at_once_while_the_tls_check_waits() {
    let dns = DnsServer::start().await;
    let server = banner(bind_fresh(0).await, "HELLO");
    let IpAddr::V4(ip) = server.addr.ip() else {
        unreachable!()
    };
    let port = server.addr.port();
    dns.set_v4("speaks-first.test", ip).await;
    for tls in ["optional", "required"] {
        let proxy = Proxy::start(
            config(dns.addr),
            one_rule("first", "speaks-first.test", port, tls),
        )
        .await;
        let mut t = tunnel(proxy.addr, &format!("speaks-first.test:{port}")).await;
        // The client has sent nothing yet; the server's greeting still arrives.
        let mut greeting = [0u8; 5];
        within("the server greeting", t.read_exact(&mut greeting))
            .await
            .unwrap();
        assert_eq!(&greeting, b"HELLO", "tls = {tls}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_lets_a_failed_tls_check_through_and_reports_it() {
    let dns = DnsServer::start().await;
    let sink = Sink::start(bind_fresh(0).await);
    let IpAddr::V4(ip) = sink.upstream.addr.ip() else {
        unreachable!()
    };
    let port = sink.upstream.addr.port();
    dns.set_v4("secure.test", ip).await;
    let mut cfg = config(dns.addr);
    cfg.mode = Mode::Report;
    let proxy = Proxy::start(cfg, one_rule("secure", "secure.test", port, "required")).await;
    let mut t = tunnel(proxy.addr, &format!("secure.test:{port}")).await;
    t.write_all(b"not a client hello").await.unwrap();
    t.shutdown().await.unwrap();
    assert_eq!(
        sink.next_closed().await,
        18,
        "report mode lets the bytes through"
    );
    expect_closed(&mut t).await;
    drop(t);
    let rec = proxy.next_record();
    assert_eq!(
        (rec.decision, rec.reason, rec.rule.as_str()),
        ("report", "tls_protocol_error", "secure")
    );
    assert_eq!(
        proxy.metric(
            "portcullis_connections_total",
            &[("decision", "report"), ("reason", "tls_protocol_error")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------
// The seed policy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policy_ports_of_connect_helpdeskbuttons_com() {
    let dns = DnsServer::start().await;
    let ports = [443u16, 2000, 2001, 2500, 2501];
    let (ip, listeners) = bind_ports(&ports).await;
    let upstreams: Vec<Upstream> = listeners.into_iter().map(echo).collect();
    dns.set_v4("connect.helpdeskbuttons.com", ip).await;
    let proxy = Proxy::start(config(dns.addr), Policy::builtin()).await;

    let (_t, r) = connect(proxy.addr, "connect.helpdeskbuttons.com:443").await;
    assert_eq!(r.status, 200, "443 is techconnect-slot: {r:?}");
    for port in [2001u16, 2500] {
        let mut t = tunnel(proxy.addr, &format!("connect.helpdeskbuttons.com:{port}")).await;
        // techconnect-session is tls = "optional": a non-TLS protocol passes.
        assert_eq!(
            roundtrip(&mut t, b"session bytes").await,
            b"session bytes",
            "port {port}"
        );
    }
    for port in [2000u16, 2501] {
        let (_, r) = connect(proxy.addr, &format!("connect.helpdeskbuttons.com:{port}")).await;
        assert_error(&r, 403, "http_request_denied");
    }
    let accepted: Vec<u64> = upstreams
        .iter()
        .map(|u| u.accepted.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        accepted,
        vec![1, 0, 1, 1, 0],
        "upstream connections per port {ports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policy_rejects_look_alikes_and_ip_literals() {
    let dns = DnsServer::start().await;
    let (ip, listeners) = bind_ports(&[443, 2001]).await;
    let upstreams: Vec<Upstream> = listeners.into_iter().map(echo).collect();
    for name in [
        "connect.helpdeskbuttons.com",
        "apc-button.s3.amazonaws.com",
        "evil-apc-button.s3.amazonaws.com",
        "apc-button.s3.amazonaws.com.evil.test",
        "s3.amazonaws.com",
        "x.connect.helpdeskbuttons.com",
        "helpdeskbuttons.com",
    ] {
        dns.set_v4(name, ip).await;
    }
    let proxy = Proxy::start(config(dns.addr), Policy::builtin()).await;
    for authority in [
        "evil-apc-button.s3.amazonaws.com:443",
        "apc-button.s3.amazonaws.com.evil.test:443",
        "s3.amazonaws.com:443",
        "x.connect.helpdeskbuttons.com:443",
        "helpdeskbuttons.com:443",
        "connect.helpdeskbuttons.com.evil.test:2001",
    ] {
        let (_, r) = connect(proxy.addr, authority).await;
        assert!(r.status == 403, "{authority}: {r:?}");
        assert_error(&r, 403, "http_request_denied");
    }
    // The allowed host's own address as an IP literal.
    for authority in [
        format!("{ip}:443"),
        format!("{ip}:2001"),
        format!("[::ffff:{ip}]:443"),
    ] {
        let (_, r) = connect(proxy.addr, &authority).await;
        assert!(r.status == 403, "{authority}: {r:?}");
        assert_error(&r, 403, "http_request_denied");
    }
    assert!(
        upstreams
            .iter()
            .all(|u| u.accepted.load(Ordering::SeqCst) == 0),
        "nothing reached an upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policy_matches_case_insensitively_and_ignores_one_trailing_dot() {
    let dns = DnsServer::start().await;
    let (ip, listeners) = bind_ports(&[2001]).await;
    let upstream = echo(listeners.into_iter().next().unwrap());
    dns.set_v4("connect.helpdeskbuttons.com", ip).await;
    let proxy = Proxy::start(config(dns.addr), Policy::builtin()).await;
    for authority in [
        "CONNECT.HelpDeskButtons.COM:2001",
        "connect.helpdeskbuttons.com.:2001",
        "Connect.HelpdeskButtons.Com.:2001",
    ] {
        let mut t = tunnel(proxy.addr, authority).await;
        assert_eq!(roundtrip(&mut t, b"hi").await, b"hi", "{authority}");
        t.shutdown().await.unwrap();
        expect_closed(&mut t).await;
        let rec = proxy.next_record();
        assert_eq!(rec.rule, "techconnect-session", "{authority}");
        assert_eq!(
            rec.host, "connect.helpdeskbuttons.com",
            "logged normalised: {authority}"
        );
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 3);
    // Two trailing dots are not "one trailing dot".
    let (_, r) = connect(proxy.addr, "connect.helpdeskbuttons.com..:2001").await;
    assert!(
        r.status == 400 || r.status == 403,
        "double trailing dot refused: {r:?}"
    );
}

// ---------------------------------------------------------------------------
// Connect-time DNS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answer_change_is_followed_after_its_ttl_without_restart() {
    let dns = DnsServer::start().await;
    let mut ls = bind_same_port(2, 0).await;
    let b = banner(ls.pop().unwrap(), "B");
    let a = banner(ls.pop().unwrap(), "A");
    let port = a.addr.port();
    let (IpAddr::V4(ip_a), IpAddr::V4(ip_b)) = (a.addr.ip(), b.addr.ip()) else {
        unreachable!()
    };
    dns.set("moving.test", &[v4(ip_a)], 1).await;
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("moving", "moving.test", port, "any"),
    )
    .await;
    let authority = format!("moving.test:{port}");

    let mut t = tunnel(proxy.addr, &authority).await;
    assert_eq!(read_all(&mut t).await, b"A");
    drop(t);
    assert_eq!(
        proxy.next_record().upstream.as_deref(),
        Some(a.addr.to_string().as_str())
    );

    dns.set("moving.test", &[v4(ip_b)], 1).await;
    // Awaited condition: poll the proxy (bounded, far below the 300 s
    // `max_ttl_s`) until the new address answers.
    within("the proxy to follow the new DNS answer", async {
        loop {
            let mut t = tunnel(proxy.addr, &authority).await;
            let got = read_all(&mut t).await;
            if got == b"B" {
                return;
            }
            assert_eq!(got, b"A");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(b.accepted.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_first_address_falls_through_to_the_working_second() {
    let dns = DnsServer::start().await;
    let live = echo(bind_fresh(0).await);
    let port = live.addr.port();
    let dead = fresh_ip(); // nothing listens there
    dns.set("twice.test", &[v4(dead), live.addr.ip()], 300)
        .await;
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("twice", "twice.test", port, "any"),
    )
    .await;
    let mut t = tunnel(proxy.addr, &format!("twice.test:{port}")).await;
    assert_eq!(roundtrip(&mut t, b"second").await, b"second");
    t.shutdown().await.unwrap();
    expect_closed(&mut t).await;
    let rec = proxy.next_record();
    assert_eq!(rec.decision, "allow");
    assert_eq!(
        rec.upstream.as_deref(),
        Some(live.addr.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_answers_are_refused_by_default() {
    let dns = DnsServer::start().await;
    let cases: [(&str, IpAddr); 6] = [
        ("rfc1918.test", "10.0.0.1".parse().unwrap()),
        ("metadata.test", "169.254.169.254".parse().unwrap()),
        ("loopback.test", "127.0.0.1".parse().unwrap()),
        ("mapped.test", "::ffff:10.0.0.1".parse().unwrap()),
        ("v6loopback.test", "::1".parse().unwrap()),
        ("cgnat.test", "100.64.0.1".parse().unwrap()),
    ];
    let mut rules = String::new();
    for (name, ip) in &cases {
        dns.set(name, &[*ip], 300).await;
        rules.push_str(&format!(
            "[[rule]]\nname = \"{}\"\nhosts = [\"{name}\"]\nports = [443]\ntls = \"any\"\n",
            name.trim_end_matches(".test")
        ));
    }
    let mut cfg = config(dns.addr);
    cfg.allow_cidrs.clear();
    let proxy = Proxy::start(cfg, policy(&rules)).await;
    for (name, ip) in &cases {
        let (_, r) = connect(proxy.addr, &format!("{name}:443")).await;
        assert!(r.status == 403, "{name} -> {ip}: {r:?} body={:?}", r.text());
        assert_error(&r, 403, "destination_ip_prohibited");
    }
    assert_eq!(
        proxy.metric("portcullis_upstream_connect_duration_seconds_count", &[]),
        0.0,
        "the proxy never dialled"
    );
}

// ---------------------------------------------------------------------------
// Tunnels
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_mib_each_way_byte_exact_with_half_close() {
    let s = echo_setup("bulk.test", "any", |_| {}).await;
    let t = tunnel(s.proxy.addr, &s.authority).await;
    let data = pattern(16 * MIB, 16);
    let (mut r, mut w) = t.into_split();
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.expect("write 16 MiB");
        w.shutdown().await.expect("half-close");
        w
    });
    let mut back = Vec::with_capacity(16 * MIB);
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut back))
        .await
        .expect("16 MiB echoed within 30 s")
        .expect("read echo");
    let _w = within("the writer", writer).await.unwrap();
    assert_eq!(back.len(), data.len(), "byte count");
    assert!(back == data, "bytes differ");
    let rec = s.proxy.next_record();
    assert_eq!(
        (rec.bytes_up, rec.bytes_down),
        (16 * MIB as u64, 16 * MIB as u64)
    );
    assert_eq!(
        s.proxy.metric(
            "portcullis_tunnel_bytes_total",
            &[("rule", "echo-rule"), ("direction", "upstream")]
        ),
        (16 * MIB) as f64
    );
    assert_eq!(
        s.proxy.metric(
            "portcullis_tunnel_bytes_total",
            &[("rule", "echo-rule"), ("direction", "downstream")]
        ),
        (16 * MIB) as f64
    );
}

async fn tls_setup(host: &str) -> (DnsServer, Upstream, Proxy, TestPki, String) {
    let dns = DnsServer::start().await;
    let pki = TestPki::new(host);
    let server = tls_echo(bind_fresh(0).await, pki.server_config());
    let IpAddr::V4(ip) = server.addr.ip() else {
        unreachable!()
    };
    dns.set_v4(host, ip).await;
    let port = server.addr.port();
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("tls-rule", host, port, "required"),
    )
    .await;
    (dns, server, proxy, pki, format!("{host}:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_handshake_through_the_tunnel() {
    let (_dns, _server, proxy, pki, authority) = tls_setup("secure.example.test").await;
    let t = tunnel(proxy.addr, &authority).await;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = ServerName::try_from("secure.example.test").unwrap();
    let mut tls = within("TLS handshake", connector.connect(name, t))
        .await
        .expect("verified handshake");
    tls.write_all(b"over tls").await.unwrap();
    let mut back = [0u8; 8];
    within("TLS echo", tls.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"over tls");
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = within("TLS close", tls.read_to_end(&mut rest)).await;
    drop(tls);
    let rec = proxy.next_record();
    assert_eq!(
        (rec.decision, rec.reason, rec.rule.as_str()),
        ("allow", "ok", "tls-rule")
    );
    assert!(rec.bytes_up > 8 && rec.bytes_down > 8, "{rec:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_in_the_same_write_as_the_connect_head_is_not_lost() {
    let (_dns, _server, proxy, pki, authority) = tls_setup("eager.example.test").await;
    let tcp = dial(proxy.addr).await;
    let wrapped = ConnectPrefixed::new(tcp, &authority);
    let first_write = wrapped.first_write_len.clone();
    let head_len =
        format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").len() as u64;
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = ServerName::try_from("eager.example.test").unwrap();
    let mut tls = within("TLS handshake", connector.connect(name, wrapped))
        .await
        .expect("handshake after eager write");
    assert!(
        first_write.load(Ordering::SeqCst) > head_len + 100,
        "head and ClientHello went in one write"
    );
    tls.write_all(b"eager").await.unwrap();
    let mut back = [0u8; 5];
    within("TLS echo", tls.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"eager");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_bytes_in_the_same_write_as_the_connect_head_are_not_lost() {
    let s = echo_setup("eager.test", "any", |_| {}).await;
    let mut raw = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        s.authority, s.authority
    )
    .into_bytes();
    raw.extend_from_slice(b"early bytes");
    let (mut t, r) = send_raw(s.proxy.addr, &raw).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut back = [0u8; 11];
    within("the early bytes echoed", t.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"early bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed_after_idle_timeout() {
    let s = echo_setup("idle.test", "any", |cfg| {
        cfg.idle_timeout = Duration::from_secs(1)
    })
    .await;
    let mut t = tunnel(s.proxy.addr, &s.authority).await;
    assert_eq!(roundtrip(&mut t, b"x").await, b"x");
    let started = Instant::now();
    expect_closed(&mut t).await;
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(800),
        "closed only after being idle: {idle:?}"
    );
    let rec = s.proxy.next_record();
    assert_eq!((rec.bytes_up, rec.bytes_down), (1, 1));
}

// ---------------------------------------------------------------------------
// Report mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mode_lets_a_denied_host_through_and_reports_it() {
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    let IpAddr::V4(ip) = upstream.addr.ip() else {
        unreachable!()
    };
    let port = upstream.addr.port();
    dns.set_v4("unlisted.test", ip).await;
    dns.set_v4("private.test", Ipv4Addr::new(10, 0, 0, 1)).await;
    let mut cfg = config(dns.addr);
    cfg.mode = Mode::Report;
    cfg.allow_cidrs = vec![format!("{ip}/32").parse().unwrap()];
    let proxy = Proxy::start(cfg, one_rule("listed", "listed.test", port, "required")).await;
    let before = proxy.metric("portcullis_connections_total", &[("decision", "report")]);

    let mut t = tunnel(proxy.addr, &format!("unlisted.test:{port}")).await;
    assert_eq!(roundtrip(&mut t, b"reported").await, b"reported");
    t.shutdown().await.unwrap();
    expect_closed(&mut t).await;
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        1,
        "reached the upstream"
    );
    let rec = proxy.next_record();
    assert_eq!(
        (rec.decision, rec.reason),
        ("report", "http_request_denied")
    );
    assert_eq!(
        rec.upstream.as_deref(),
        Some(upstream.addr.to_string().as_str())
    );
    let after = proxy.metric(
        "portcullis_connections_total",
        &[
            ("listener", "connect"),
            ("decision", "report"),
            ("reason", "http_request_denied"),
        ],
    );
    assert_eq!(after - before, 1.0, "{}", proxy.metrics());

    // deny_cidrs still applies in report mode.
    let (_, r) = connect(proxy.addr, &format!("private.test:{port}")).await;
    assert_error(&r, 403, "destination_ip_prohibited");
    // Malformed requests are still refused.
    let (_, r) = connect(proxy.addr, "unlisted.test").await;
    assert_error(&r, 400, "http_request_error");
}

// ---------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_complete_record_per_connection() {
    let s = echo_setup("logged.test", "any", |_| {}).await;
    let port = s.upstream.addr.port();

    // Allowed: 1000 bytes up, 1000 down.
    let mut t = tunnel(s.proxy.addr, &s.authority).await;
    let client = t.local_addr().unwrap().to_string();
    let data = pattern(1000, 7);
    assert_eq!(roundtrip(&mut t, &data).await, data);
    t.shutdown().await.unwrap();
    expect_closed(&mut t).await;
    drop(t);
    let rec = s.proxy.next_record();
    let json = serde_json::to_value(&rec).unwrap();
    for key in [
        "ts",
        "listener",
        "client",
        "host",
        "port",
        "decision",
        "rule",
        "reason",
        "upstream",
        "bytes_up",
        "bytes_down",
        "duration_ms",
    ] {
        assert!(json.get(key).is_some(), "field {key} missing: {json}");
    }
    assert!(
        json.get("original_dst").is_none(),
        "original_dst only on the SNI listener: {json}"
    );
    assert_eq!(json["listener"], "connect");
    assert_eq!(json["client"], client.as_str());
    assert_eq!(json["host"], "logged.test");
    assert_eq!(json["port"], port);
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["rule"], "echo-rule");
    assert_eq!(json["reason"], "ok");
    assert_eq!(json["upstream"], s.upstream.addr.to_string().as_str());
    assert_eq!(json["bytes_up"], 1000);
    assert_eq!(json["bytes_down"], 1000);
    assert!(json["duration_ms"].is_u64());
    let ts = json["ts"].as_str().unwrap();
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {ts}"
    );
    assert!(
        s.proxy.no_pending_record(),
        "exactly one record for the connection"
    );

    // Denied: decision deny, rule none, nothing dialled.
    s.dns.set_v4("nope.test", Ipv4Addr::new(127, 0, 0, 1)).await;
    let (_, r) = connect(s.proxy.addr, &format!("nope.test:{port}")).await;
    assert_error(&r, 403, "http_request_denied");
    let rec = s.proxy.next_record();
    let json = serde_json::to_value(&rec).unwrap();
    assert_eq!(json["decision"], "deny");
    assert_eq!(json["rule"], "none");
    assert_eq!(json["reason"], "http_request_denied");
    assert_eq!(json["host"], "nope.test");
    assert_eq!(json["port"], port);
    assert!(json["upstream"].is_null(), "{json}");
    assert_eq!(json["bytes_up"], 0);
    assert_eq!(json["bytes_down"], 0);
    assert!(s.proxy.no_pending_record());

    assert_eq!(
        s.proxy.metric(
            "portcullis_connections_total",
            &[
                ("listener", "connect"),
                ("decision", "allow"),
                ("rule", "echo-rule"),
                ("reason", "ok")
            ]
        ),
        1.0
    );
    assert_eq!(
        s.proxy.metric(
            "portcullis_connections_total",
            &[
                ("listener", "connect"),
                ("decision", "deny"),
                ("rule", "none"),
                ("reason", "http_request_denied")
            ]
        ),
        1.0
    );
    assert!(
        !s.proxy.metrics().contains("nope.test"),
        "no denied host name in metric labels"
    );
}

// ---------------------------------------------------------------------------
// Absolute-form HTTP
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_http_is_forwarded_when_allowed_and_refused_otherwise() {
    let dns = DnsServer::start().await;
    let origin = http_origin(bind_fresh(0).await);
    let IpAddr::V4(ip) = origin.addr.ip() else {
        unreachable!()
    };
    let port = origin.addr.port();
    dns.set_v4("web.test", ip).await;
    dns.set_v4("denied.test", ip).await;
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("web", "web.test", port, "required"),
    )
    .await;

    // Allowed: forwarded, origin-form upstream, answer relayed.
    let req = format!(
        "GET http://web.test:{port}/path?q=1 HTTP/1.1\r\nHost: web.test:{port}\r\nProxy-Connection: keep-alive\r\nConnection: close\r\n\r\n"
    );
    let mut c = dial(proxy.addr).await;
    c.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200, "{r:?} {}", r.text());
    assert_eq!(r.header("x-origin"), Some("yes"));
    assert_eq!(
        r.text(),
        format!("origin saw GET /path?q=1 host=web.test:{port}")
    );
    let rec = proxy.next_record();
    assert_eq!(
        (rec.listener, rec.decision, rec.rule.as_str()),
        ("http", "allow", "web")
    );

    // Denied host: 403 with Proxy-Status, never forwarded.
    let req =
        format!("GET http://denied.test:{port}/ HTTP/1.1\r\nHost: denied.test:{port}\r\n\r\n");
    let (mut c, r) = send_raw(proxy.addr, req.as_bytes()).await;
    assert_error(&r, 403, "http_request_denied");
    expect_closed(&mut c).await;
    // Allowed host, port not allowed.
    let req = format!(
        "GET http://web.test:{}/ HTTP/1.1\r\nHost: web.test\r\n\r\n",
        port.wrapping_add(1).max(1)
    );
    let (_, r) = send_raw(proxy.addr, req.as_bytes()).await;
    assert_error(&r, 403, "http_request_denied");
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);

    // Origin-form to the proxy itself: not a proxy request.
    let (mut c, r) = send_raw(
        proxy.addr,
        b"GET /relative HTTP/1.1\r\nHost: web.test\r\n\r\n",
    )
    .await;
    assert_error(&r, 400, "http_request_error");
    expect_closed(&mut c).await;
}

// ---------------------------------------------------------------------------
// Lifecycle bits reachable in-process
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_open_tunnels_and_applies_to_new_connections() {
    let dir = std::env::temp_dir().join(format!("portcullis-it-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.toml");
    let s_dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    let IpAddr::V4(ip) = upstream.addr.ip() else {
        unreachable!()
    };
    let port = upstream.addr.port();
    s_dns.set_v4("first.test", ip).await;
    s_dns.set_v4("second.test", ip).await;
    let rule = |host: &str| {
        format!("[[rule]]\nname = \"r\"\nhosts = [\"{host}\"]\nports = [{port}]\ntls = \"any\"\n")
    };
    std::fs::write(&policy_path, rule("first.test")).unwrap();
    let mut cfg = config(s_dns.addr);
    cfg.policy = Some(policy_path.clone());
    let policy = portcullis::app::load_policy(&cfg).unwrap();
    let proxy = Proxy::start(cfg, policy).await;

    let mut open = tunnel(proxy.addr, &format!("first.test:{port}")).await;
    std::fs::write(&policy_path, rule("second.test")).unwrap();
    proxy.running.reload().expect("valid policy reloads");
    assert_eq!(roundtrip(&mut open, b"still open").await, b"still open");
    let (_, r) = connect(proxy.addr, &format!("first.test:{port}")).await;
    assert_error(&r, 403, "http_request_denied");
    let _t = tunnel(proxy.addr, &format!("second.test:{port}")).await;

    // A broken policy is refused; the previous one stays in force.
    std::fs::write(&policy_path, "[[rule]]\nname = \"r\"\nhots = []\n").unwrap();
    assert!(proxy.running.reload().is_err());
    assert_eq!(
        proxy.metric("portcullis_policy_reloads_total", &[("outcome", "error")]),
        1.0
    );
    let _t2 = tunnel(proxy.addr, &format!("second.test:{port}")).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `policy_watch_s`: a changed policy file is applied without SIGHUP or a
/// restart (how a mounted Kubernetes ConfigMap update takes effect).
#[tokio::test]
async fn policy_watch_applies_a_changed_file_without_a_signal() {
    let dir = std::env::temp_dir().join(format!("portcullis-it-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.toml");
    let s_dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    let IpAddr::V4(ip) = upstream.addr.ip() else {
        unreachable!()
    };
    let port = upstream.addr.port();
    s_dns.set_v4("watched.test", ip).await;
    std::fs::write(&policy_path, "").unwrap();
    let mut cfg = config(s_dns.addr);
    cfg.policy = Some(policy_path.clone());
    cfg.policy_watch = std::time::Duration::from_millis(100);
    let policy = portcullis::app::load_policy(&cfg).unwrap();
    let proxy = Proxy::start(cfg, policy).await;
    let target = format!("watched.test:{port}");
    let (_, r) = connect(proxy.addr, &target).await;
    assert_error(&r, 403, "http_request_denied");

    // Written to a new file and renamed over the old one, as a ConfigMap
    // update swaps its files.
    let next = dir.join("policy.toml.new");
    let rule = format!(
        "[[rule]]\nname = \"w\"\nhosts = [\"watched.test\"]\nports = [{port}]\ntls = \"any\"\n"
    );
    std::fs::write(&next, rule).unwrap();
    std::fs::rename(&next, &policy_path).unwrap();
    let mut allowed = false;
    for _ in 0..100 {
        let (_, r) = connect(proxy.addr, &target).await;
        if r.status == 200 {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(allowed, "the changed policy was not applied within 10 s");
    assert_eq!(
        proxy.metric("portcullis_policy_reloads_total", &[("outcome", "ok")]),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
