//! Hostile input against the proxy (issue 7, "adversarial clients"):
//!
//! - property tests: the config loader and the policy loader never panic on
//!   arbitrary TOML-ish documents, and what they accept is usable (durations
//!   fit a clock, the connection limit fits a semaphore, listed hosts match);
//! - slowloris on request heads and on ClientHellos, a connection flood to
//!   `max_connections` on both listeners;
//! - request smuggling and header tricks on the absolute-form path, and a
//!   request target that disagrees with its `Host` field (the target decides);
//! - non-canonical IPv4 spellings and IPv6 forms of prohibited ranges, as
//!   CONNECT authorities, absolute URIs, SNI names and DNS answers;
//! - a client that half-closes, one that resets mid-transfer, and one that
//!   never reads while its upstream sends as fast as it can (real binary:
//!   the upstream is back-pressured and the proxy's RSS stays flat).
//!
//! Only loopback addresses; every wait is bounded ([`WAIT`]); every loop is
//! bounded.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use portcullis::config::{Config, Mode, SniListen};
use portcullis::policy::{Decision, Policy};
use portcullis::target::{normalize_host, Host, Target};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn ip4(a: SocketAddr) -> Ipv4Addr {
    match a.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("test upstreams are IPv4"),
    }
}

// ===========================================================================
// 1. Loaders never panic (property tests)
// ===========================================================================

/// Every key the config schema knows, plus near misses.
const CONFIG_KEYS: &[&str] = &[
    "policy",
    "mode",
    "listen",
    "addr",
    "port",
    "original_dst",
    "nameservers",
    "timeout_ms",
    "max_ttl_s",
    "connect_timeout_ms",
    "deny_cidrs",
    "allow_cidrs",
    "allow",
    "max_connections",
    "handshake_timeout_ms",
    "idle_timeout_s",
    "shutdown_grace_s",
    "proxy",
    "format",
    "level",
    "name",
    "forward",
    "sources",
    "Listen",
    "listen ",
    "\"listen\"",
    "limits.max_connections",
    "dns.timeout_ms",
    "bogus",
];

const CONFIG_SECTIONS: &[&str] = &[
    "",
    "[proxy]",
    "[sni]",
    "[[sni.listen]]",
    "[admin]",
    "[dns]",
    "[upstream]",
    "[clients]",
    "[limits]",
    "[pac]",
    "[log]",
    "[[inbound]]",
    "[inbound]",
    "[[proxy]]",
    "[limits.deep]",
    "[bogus]",
    "[ limits ]",
    "[\"dns\"]",
];

/// TOML values, some well-typed for some key, many not.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "65535",
            "65536",
            "9223372036854775807",
            "18446744073709551615",
            "9999999999999999999",
            "1e3",
            "1.5",
            "nan",
            "-inf",
            "true",
            "false",
            "1979-05-27T07:32:00Z",
            "0x10",
            "\"\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:0\"",
            "\"0.0.0.0:8443\"",
            "\"127.0.0.1:3128\"",
            "\"999.1.1.1:1\"",
            "\"default\"",
            "\"10.0.0.0/8\"",
            "\"::/0\"",
            "\"127.0.0.1\"",
            "\"10.0.0.0/33\"",
            "\"enforce\"",
            "\"report\"",
            "\"json\"",
            "\"text\"",
            "\"all\"",
            "\"allowlist\"",
            "\"info\"",
            "\"info,portcullis=debug\"",
            "\"[\"",
            "\"tickets.example:443\"",
            "\"2130706433:443\"",
            "\"ticket-api\"",
            "\"Bad Name\"",
            "'literal'",
            "\"\"\"multi\nline\"\"\"",
        ])
        .prop_map(String::from),
        "\\PC{0,24}".prop_map(|s| toml::Value::String(s).to_string()),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((prop::sample::select(CONFIG_KEYS), inner), 0..3).prop_map(
                |kv| {
                    let fields: Vec<String> =
                        kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", fields.join(", "))
                }
            ),
        ]
    })
}

/// A config document: sections with `key = value` lines and some junk.
fn config_document() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        8 => (prop::sample::select(CONFIG_KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "\\PC{0,30}",
        1 => Just("=".to_owned()),
        1 => Just("[".to_owned()),
    ];
    let block = (
        prop::sample::select(CONFIG_SECTIONS),
        prop::collection::vec(line, 0..6),
    )
        .prop_map(|(s, lines)| format!("{s}\n{}\n", lines.join("\n")));
    prop::collection::vec(block, 0..6).prop_map(|b| b.concat())
}

/// What a config the loader accepts must be safe to start with.
fn assert_usable(cfg: &Config, what: &str) {
    let now = std::time::Instant::now();
    for (name, d) in [
        ("dns.timeout_ms", cfg.dns_timeout),
        ("dns.max_ttl_s", cfg.dns_max_ttl),
        ("upstream.connect_timeout_ms", cfg.connect_timeout),
        ("limits.handshake_timeout_ms", cfg.handshake_timeout),
        ("limits.idle_timeout_s", cfg.idle_timeout),
        ("limits.shutdown_grace_s", cfg.shutdown_grace),
    ] {
        assert!(
            now.checked_add(d).is_some(),
            "{name} = {d:?} was accepted but overflows the clock (deadline arithmetic would panic)\n{what}"
        );
    }
    assert!(
        (1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&cfg.max_connections),
        "limits.max_connections = {} was accepted but cannot size the connection semaphore\n{what}",
        cfg.max_connections
    );
}

fn scratch_file(dir: &ScratchDir, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.0.join("portcullis.toml");
    std::fs::write(&p, bytes).unwrap();
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    /// `Config::load_from` on structured but arbitrary documents: never
    /// panics, and whatever it accepts can be started.
    #[test]
    fn config_loader_never_panics_on_toml_documents(doc in config_document()) {
        let dir = ScratchDir::new("prop-config");
        let path = scratch_file(&dir, doc.as_bytes());
        if let Ok(cfg) = Config::load_from(Some(&path), Some(HashMap::new())) {
            assert_usable(&cfg, &doc);
        }
    }

    /// Every numeric key with boundary values (TOML integers are i64).
    #[test]
    fn config_numeric_limits_are_either_refused_or_usable(
        values in prop::collection::vec((
            prop::sample::select(vec![
                ("dns", "timeout_ms"), ("dns", "max_ttl_s"), ("upstream", "connect_timeout_ms"),
                ("limits", "max_connections"), ("limits", "handshake_timeout_ms"),
                ("limits", "idle_timeout_s"), ("limits", "shutdown_grace_s"),
            ]),
            prop_oneof![
                Just(i64::MAX), Just(i64::MIN), Just(-1i64), Just(0i64), Just(1i64),
                Just(1i64 << 32), Just(1i64 << 53), Just(1i64 << 61), Just(1i64 << 62),
                any::<i64>(), 0i64..1_000_000,
            ],
        ), 1..8),
    ) {
        let dir = ScratchDir::new("prop-config-limits");
        let mut doc = String::new();
        let mut seen = std::collections::HashSet::new();
        for ((section, key), v) in &values {
            if seen.insert((*section, *key)) {
                doc.push_str(&format!("[{section}.x]\n").replace(".x", ""));
                doc.push_str(&format!("{key} = {v}\n"));
            }
        }
        // Sections may repeat above; TOML refuses that, so also try one table per section.
        let mut by_section: std::collections::BTreeMap<&str, String> = Default::default();
        for ((section, key), v) in &values {
            let body = by_section.entry(section).or_default();
            if !body.contains(&format!("{key} =")) {
                body.push_str(&format!("{key} = {v}\n"));
            }
        }
        let grouped: String = by_section.iter().map(|(s, b)| format!("[{s}]\n{b}")).collect();
        for text in [doc, grouped] {
            let path = scratch_file(&dir, text.as_bytes());
            if let Ok(cfg) = Config::load_from(Some(&path), Some(HashMap::new())) {
                assert_usable(&cfg, &text);
            }
        }
    }

    /// Raw bytes (invalid UTF-8, NULs, half a TOML table) are refused, never a panic.
    #[test]
    fn config_loader_never_panics_on_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        prefix in prop::sample::select(vec!["", "[limits]\n", "[[inbound]]\n", "[sni]\nlisten = ["]),
    ) {
        let dir = ScratchDir::new("prop-config-bytes");
        let mut all = prefix.as_bytes().to_vec();
        all.extend_from_slice(&bytes);
        let path = scratch_file(&dir, &all);
        if let Ok(cfg) = Config::load_from(Some(&path), Some(HashMap::new())) {
            assert_usable(&cfg, &String::from_utf8_lossy(&all));
        }
    }

    /// `PORTCULLIS__SECTION__KEY` overrides with arbitrary values.
    #[test]
    fn config_env_overrides_never_panic(
        vars in prop::collection::vec((
            prop::sample::select(vec![
                "PORTCULLIS__MODE",
                "PORTCULLIS__POLICY",
                "PORTCULLIS__PROXY__LISTEN",
                "PORTCULLIS__SNI__LISTEN",
                "PORTCULLIS__DNS__NAMESERVERS",
                "PORTCULLIS__DNS__TIMEOUT_MS",
                "PORTCULLIS__DNS__MAX_TTL_S",
                "PORTCULLIS__UPSTREAM__DENY_CIDRS",
                "PORTCULLIS__UPSTREAM__ALLOW_CIDRS",
                "PORTCULLIS__CLIENTS__ALLOW",
                "PORTCULLIS__LIMITS__MAX_CONNECTIONS",
                "PORTCULLIS__LIMITS__IDLE_TIMEOUT_S",
                "PORTCULLIS__LIMITS__HANDSHAKE_TIMEOUT_MS",
                "PORTCULLIS__LIMITS__SHUTDOWN_GRACE_S",
                "PORTCULLIS__PAC__PROXY",
                "PORTCULLIS__LOG__LEVEL",
                "PORTCULLIS__INBOUND",
                "PORTCULLIS__LIMITS",
                "PORTCULLIS__BOGUS__KEY",
                "PORTCULLIS____",
            ]),
            prop_oneof![
                "\\PC{0,30}",
                prop::sample::select(vec![
                    "18446744073709551615", "9223372036854775807", "0", "-5", "1,2,3",
                    "127.0.0.1:0,", ",", "default,10.0.0.0/8", "true", "",
                ]).prop_map(String::from),
            ],
        ), 0..6),
    ) {
        let env: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if let Ok(cfg) = Config::load_from(None, Some(env.clone())) {
            assert_usable(&cfg, &format!("{env:?}"));
        }
    }
}

const POLICY_KEYS: &[&str] = &[
    "name",
    "description",
    "hosts",
    "ports",
    "tls",
    "host",
    "port",
    "Name",
    "bogus",
];

fn policy_value() -> impl Strategy<Value = String> {
    let host = prop::sample::select(vec![
        "a.test",
        "A.TEST.",
        "*.test",
        "*.a.test",
        "*",
        "*.",
        "a.*.test",
        "xn--bcher-kva.test",
        "bücher.test",
        "127.0.0.1",
        "2130706433",
        "0x7f.1",
        "127.1",
        "[::1]",
        "::ffff:10.0.0.1",
        "a..test",
        "-a.test",
        "a_b.test",
        "",
        " a.test",
        "a.test\u{0}",
    ]);
    let port = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0i64..70_000).prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "\"1-65535\"",
            "\"2001-2500\"",
            "\"5-3\"",
            "\"0-1\"",
            "\"1-65536\"",
            "\"a-b\"",
            "\"443\"",
            "\"-\"",
            "\"1--2\"",
            "1.5",
        ])
        .prop_map(String::from),
    ];
    let leaf = prop_oneof![
        host.prop_map(|h| toml::Value::String(h.to_owned()).to_string()),
        port,
        prop::sample::select(vec![
            "\"required\"",
            "\"optional\"",
            "\"any\"",
            "\"Required\"",
            "\"none\"",
            "\"rule-1\"",
            "\"Rule 1\"",
            "\"\"",
            "true",
            "{}",
        ])
        .prop_map(String::from),
        "\\PC{0,16}".prop_map(|s| toml::Value::String(s).to_string()),
    ];
    leaf.prop_recursive(2, 10, 5, |inner| {
        prop::collection::vec(inner, 0..5).prop_map(|v| format!("[{}]", v.join(", ")))
    })
}

fn policy_document() -> impl Strategy<Value = String> {
    let rule = (
        prop::sample::select(vec![
            "[[rule]]",
            "[[rule]]",
            "[[rule]]",
            "[rule]",
            "[[rules]]",
            "",
        ]),
        prop::collection::vec((prop::sample::select(POLICY_KEYS), policy_value()), 0..7),
    )
        .prop_map(|(h, kv)| {
            let lines: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            format!("{h}\n{}\n", lines.join("\n"))
        });
    // Mostly well-formed rules, so validation (not just TOML parsing) runs.
    let good = (
        "[a-z0-9-]{1,8}",
        prop::collection::vec(policy_value(), 1..3),
        prop::collection::vec(policy_value(), 1..3),
    )
        .prop_map(|(name, hosts, ports)| {
            format!(
                "[[rule]]\nname = \"{name}\"\nhosts = [{}]\nports = [{}]\n",
                hosts.join(", "),
                ports.join(", ")
            )
        });
    prop::collection::vec(prop_oneof![rule, good], 0..5).prop_map(|r| r.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    /// `Policy::from_toml_str` never panics; a policy it accepts allows every
    /// host it lists on that rule's first port, and never an IP literal.
    #[test]
    fn policy_loader_never_panics_and_accepted_policies_decide_consistently(doc in policy_document()) {
        let Ok(policy) = Policy::from_toml_str(&doc, "prop.toml") else {
            return Ok(());
        };
        for rule in policy.rules() {
            let port = rule.ports[0].0;
            for h in &rule.hosts {
                let name = h.strip_prefix("*.").map_or(h.clone(), |rest| format!("sub.{rest}"));
                let host = normalize_host(&name);
                prop_assert!(matches!(host, Ok(Host::Name(_))), "listed host {h:?} does not normalise to a name: {host:?}");
                let target = Target { host: host.unwrap(), port };
                prop_assert!(policy.decide(&target).is_allow(), "rule {} lists {h} on {port} but {target} is denied\n{doc}", rule.name);
            }
        }
        for ip in ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"] {
            let target = Target { host: normalize_host(ip).unwrap(), port: 443 };
            prop_assert!(matches!(policy.decide(&target), Decision::Deny(_)), "IP literal {ip} matched a rule\n{doc}");
        }
    }
}

/// The values the property test above found the loader accepting although
/// they cannot run: refused at load time, with file and line.
#[test]
fn absurd_limits_are_refused_at_load_not_at_start() {
    let dir = ScratchDir::new("absurd-limits");
    for (section, line, key) in [
        (
            "limits",
            "max_connections = 9223372036854775807",
            "max_connections",
        ),
        (
            "limits",
            "idle_timeout_s = 9223372036854775807",
            "idle_timeout_s",
        ),
        (
            "limits",
            "shutdown_grace_s = 9223372036854775807",
            "shutdown_grace_s",
        ),
        ("dns", "max_ttl_s = 9223372036854775807", "max_ttl_s"),
    ] {
        let path = scratch_file(&dir, format!("[{section}]\n{line}\n").as_bytes());
        let err = Config::load_from(Some(&path), Some(HashMap::new()))
            .expect_err(&format!("{line} must be refused"));
        let text = err.to_string();
        assert!(
            text.contains(key) && text.contains(":2:"),
            "the problem names the key and line 2: {text}"
        );
    }
}

// ===========================================================================
// 2. Slow clients and floods
// ===========================================================================

/// Connects to `addr`, writes `bytes[..first]` at once, then one more byte
/// every 200 ms (never the whole of `bytes` within [`WAIT`]) until the proxy
/// answers and closes, or resets. Returns what the proxy sent.
async fn dribble(
    addr: SocketAddr,
    bytes: Arc<Vec<u8>>,
    first: usize,
    started: Arc<tokio::sync::Semaphore>,
) -> Vec<u8> {
    let s = TcpStream::connect(addr)
        .await
        .expect("slow client connects");
    let (mut r, mut w) = s.into_split();
    w.write_all(&bytes[..first]).await.expect("first bytes");
    started.add_permits(1);
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let write = async {
        for b in &bytes[first..] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if w.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        got = read => got,
        _ = write => unreachable!(),
    }
}

/// Runs `n` dribbling clients; once all have sent their first bytes, runs
/// `normal` and checks that no slow client had been cut yet; then checks
/// every slow client was cut by the proxy (answer `expect` or a close).
async fn slowloris(
    addr: SocketAddr,
    n: usize,
    bytes: Vec<u8>,
    first: usize,
    check_answer: fn(&[u8]) -> bool,
    normal: impl std::future::Future<Output = ()>,
) {
    let bytes = Arc::new(bytes);
    let started = Arc::new(tokio::sync::Semaphore::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (b, s, c) = (bytes.clone(), started.clone(), cut.clone());
        clients.spawn(async move {
            let got = dribble(addr, b, first, s).await;
            c.fetch_add(1, Ordering::SeqCst);
            got
        });
    }
    within(
        "every slow client to connect and start",
        started.acquire_many(n as u32),
    )
    .await
    .unwrap()
    .forget();
    normal.await;
    let cut_before = cut.load(Ordering::SeqCst);
    let mut answered = 0;
    within("every slow client to be cut", async {
        while let Some(got) = clients.join_next().await {
            let got = got.expect("slow client task");
            assert!(
                got.is_empty() || check_answer(&got),
                "a slow client got {:?}",
                String::from_utf8_lossy(&got)
            );
            answered += usize::from(!got.is_empty());
        }
    })
    .await;
    println!("{n} slow clients: {answered} answered, the rest closed; {cut_before} cut before the normal client was served");
    assert_eq!(
        cut_before, 0,
        "the normal client was served while every slow client still hung"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_request_heads_are_cut_and_a_normal_client_is_served() {
    raise_fd_limit(4096);
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    dns.set_v4("echo.test", ip4(upstream.addr)).await;
    let port = upstream.addr.port();
    let mut cfg = config(dns.addr);
    cfg.handshake_timeout = Duration::from_secs(2);
    let proxy = Proxy::start(cfg, one_rule("echo-rule", "echo.test", port, "any")).await;
    let authority = format!("echo.test:{port}");
    let mut head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    // A long header that never ends: the head can never complete.
    head.extend_from_slice(b"X-Slow: ");
    head.extend(std::iter::repeat_n(b'x', 200));
    let normal = async {
        let mut t = tunnel(proxy.addr, &authority).await;
        assert_eq!(roundtrip(&mut t, b"served").await, b"served");
    };
    slowloris(
        proxy.addr,
        500,
        head,
        20,
        |got| {
            let text = String::from_utf8_lossy(got);
            text.starts_with("HTTP/1.1 408") && text.contains("error=http_request_error")
        },
        normal,
    )
    .await;
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        1,
        "only the normal client reached upstream"
    );
    let timeouts = proxy.metric(
        "portcullis_connections_total",
        &[("listener", "connect"), ("reason", "http_request_error")],
    );
    assert_eq!(timeouts, 500.0, "every slow client is counted");
}

/// DNS + TLS echo upstream named `host` on a fresh port P, a one-rule policy
/// (`tls = "required"`), the proxy with an SNI listener for port P.
struct SniSetup {
    dns: DnsServer,
    upstream: Upstream,
    proxy: Proxy,
    pki: TestPki,
    sni: SocketAddr,
    host: String,
    port: u16,
}

async fn sni_setup(host: &str, tweak: impl FnOnce(&mut Config)) -> SniSetup {
    let dns = DnsServer::start().await;
    let pki = TestPki::new(host);
    let upstream = tls_echo(bind_fresh(0).await, pki.server_config());
    dns.set_v4(host, ip4(upstream.addr)).await;
    let port = upstream.addr.port();
    let mut cfg = config(dns.addr);
    cfg.sni_listen = vec![SniListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        port,
        original_dst: false,
    }];
    tweak(&mut cfg);
    let proxy = Proxy::start(cfg, one_rule("sni-rule", host, port, "required")).await;
    let sni = proxy.running.sni_addrs[0];
    SniSetup {
        dns,
        upstream,
        proxy,
        pki,
        sni,
        host: host.to_owned(),
        port,
    }
}

impl SniSetup {
    /// A verified TLS session through the SNI listener, echoing `msg`.
    async fn tls_roundtrip(&self, msg: &[u8]) {
        let tcp = dial(self.sni).await;
        let name = ServerName::try_from(self.host.clone()).unwrap();
        let mut tls = within(
            "a TLS handshake through the SNI listener",
            tokio_rustls::TlsConnector::from(self.pki.client_config()).connect(name, tcp),
        )
        .await
        .expect("TLS handshake through the SNI listener");
        within("a TLS echo", async {
            tls.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tls.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_client_hellos_are_cut_and_a_normal_sni_client_is_served() {
    raise_fd_limit(4096);
    let s = sni_setup("slow.test", |cfg| {
        cfg.handshake_timeout = Duration::from_secs(2)
    })
    .await;
    let hello = client_hello_record(s.pki.client_config(), "slow.test").await;
    assert!(hello.len() > 100);
    let normal = s.tls_roundtrip(b"served over SNI");
    slowloris(s.sni, 500, hello, 10, |_| false, normal).await;
    assert_eq!(
        s.upstream.accepted.load(Ordering::SeqCst),
        1,
        "only the normal client reached upstream"
    );
    let cut = s.proxy.metric(
        "portcullis_connections_total",
        &[("listener", "sni"), ("reason", "http_request_error")],
    );
    assert_eq!(cut, 500.0, "every slow ClientHello is counted as cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_to_max_connections_is_refused_and_service_resumes() {
    const LIMIT: usize = 50;
    let s = sni_setup("flood.test", |cfg| cfg.max_connections = LIMIT).await;
    // A plain echo for CONNECT tunnels, under its own rule on the same proxy.
    let echo_up = echo(bind_fresh(0).await);
    s.dns.set_v4("tunnel.test", ip4(echo_up.addr)).await;
    let policy = policy(&format!(
        "[[rule]]\nname = \"sni-rule\"\nhosts = [\"flood.test\"]\nports = [{}]\ntls = \"required\"\n\
         [[rule]]\nname = \"tunnel\"\nhosts = [\"tunnel.test\"]\nports = [{}]\ntls = \"any\"\n",
        s.port,
        echo_up.addr.port()
    ));
    s.proxy.running.shared.policy.store(Arc::new(policy));
    let authority = format!("tunnel.test:{}", echo_up.addr.port());

    // Fill every slot with working tunnels.
    let mut held = Vec::new();
    for i in 0..LIMIT {
        let mut t = tunnel(s.proxy.addr, &authority).await;
        let msg = format!("hold {i}");
        assert_eq!(roundtrip(&mut t, msg.as_bytes()).await, msg.as_bytes());
        held.push(t);
    }
    // Excess CONNECT clients: 503 connection_limit_reached, nothing dialled.
    for _ in 0..20 {
        let (mut c, r) = connect(s.proxy.addr, &authority).await;
        assert_error(&r, 503, "connection_limit_reached");
        expect_closed(&mut c).await;
    }
    // Excess SNI clients: closed without a byte, nothing dialled.
    let hello = client_hello_record(s.pki.client_config(), "flood.test").await;
    for _ in 0..10 {
        let mut c = dial(s.sni).await;
        let _ = c.write_all(&hello).await;
        let mut buf = Vec::new();
        let got = within(
            "an over-limit SNI client to be closed",
            c.read_to_end(&mut buf),
        )
        .await;
        assert!(
            got.is_err() || buf.is_empty(),
            "over-limit SNI client got {buf:?}"
        );
    }
    assert_eq!(echo_up.accepted.load(Ordering::SeqCst), LIMIT as u64);
    assert_eq!(s.upstream.accepted.load(Ordering::SeqCst), 0);
    assert_eq!(
        s.proxy.metric(
            "portcullis_connections_total",
            &[("reason", "connection_limit_reached")]
        ),
        30.0
    );
    // Drain the refusal records so the next waits see the tunnels' records.
    for _ in 0..30 {
        let r = s.proxy.next_record();
        assert_eq!(r.reason, "connection_limit_reached");
    }

    // Ten leave: their slots come back, for CONNECT and for SNI alike.
    for mut t in held.drain(..10) {
        t.shutdown().await.unwrap();
        expect_closed(&mut t).await;
    }
    for _ in 0..10 {
        assert_eq!(s.proxy.next_record_with("allow").listener, "connect");
    }
    let mut again = Vec::new();
    for i in 0..9 {
        let mut t = tunnel(s.proxy.addr, &authority).await;
        let msg = format!("again {i}");
        assert_eq!(roundtrip(&mut t, msg.as_bytes()).await, msg.as_bytes());
        again.push(t);
    }
    s.tls_roundtrip(b"an SNI client after the flood").await;
    assert_eq!(s.upstream.accepted.load(Ordering::SeqCst), 1);
}

// ===========================================================================
// 3. Request smuggling and header tricks (absolute-form path)
// ===========================================================================

/// An HTTP/1.1 request as an origin would frame it.
#[derive(Debug)]
struct Framed {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Bytes after this request (a second, smuggled request would be here).
    rest: Vec<u8>,
}

impl Framed {
    fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Frames one request from `raw` the way a strict origin does (RFC 9112 §6):
/// chunked if Transfer-Encoding says so, else Content-Length, else no body.
/// `None` while incomplete.
fn frame_request(raw: &[u8]) -> Option<Framed> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    let head_len = match req
        .parse(raw)
        .expect("the proxy sent a parseable request head")
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut f = Framed {
        method: req.method.unwrap().to_owned(),
        target: req.path.unwrap().to_owned(),
        headers,
        body: Vec::new(),
        rest: Vec::new(),
    };
    let mut at = head_len;
    let te = f.header_all("transfer-encoding").join(",");
    if te.to_ascii_lowercase().contains("chunked") {
        loop {
            let line_end = raw[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = String::from_utf8_lossy(&raw[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("chunk size");
            at = line_end + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                if raw.len() < at + 2 {
                    return None;
                }
                at += 2;
                break;
            }
            if raw.len() < at + size + 2 {
                return None;
            }
            f.body.extend_from_slice(&raw[at..at + size]);
            at += size + 2;
        }
    } else if let Some(cl) = f.header_all("content-length").first() {
        let n: usize = cl.trim().parse().expect("numeric Content-Length");
        if raw.len() < at + n {
            return None;
        }
        f.body = raw[at..at + n].to_vec();
        at += n;
    }
    f.rest = raw[at..].to_vec();
    Some(f)
}

/// A raw origin: frames each connection's first request strictly, answers
/// `200 ok` with `Connection: close`, then keeps reading to EOF and reports
/// every byte the proxy sent on that connection.
fn raw_origin(listener: TcpListener) -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let up = serve_each_pub(listener, move |mut s| {
        let tx = tx.clone();
        async move {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answered = false;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
                if !answered && frame_request(&raw).is_some() {
                    answered = true;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = s.shutdown().await;
                }
            }
            let _ = tx.send(raw);
        }
    });
    (up, rx)
}

struct HttpSetup {
    _dns: DnsServer,
    origin: Upstream,
    seen: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    proxy: Proxy,
    port: u16,
}

async fn http_setup() -> HttpSetup {
    let dns = DnsServer::start().await;
    let (origin, seen) = raw_origin(bind_fresh(0).await);
    dns.set_v4("web.test", ip4(origin.addr)).await;
    dns.set_v4("evil.test", ip4(origin.addr)).await;
    let port = origin.addr.port();
    let proxy = Proxy::start(config(dns.addr), one_rule("web", "web.test", port, "any")).await;
    HttpSetup {
        _dns: dns,
        origin,
        seen,
        proxy,
        port,
    }
}

impl HttpSetup {
    /// Sends `raw` and reads everything the proxy answers until it closes.
    async fn exchange(&self, raw: &[u8]) -> String {
        let mut c = dial(self.proxy.addr).await;
        c.write_all(raw).await.unwrap();
        let got = within("the proxy's answer and close", async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => return got,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&got).into_owned()
    }

    /// The bytes of the next upstream connection, framed strictly.
    async fn next_upstream_request(&mut self) -> Framed {
        let raw = within("the origin's connection to end", self.seen.recv())
            .await
            .unwrap();
        frame_request(&raw).unwrap_or_else(|| {
            panic!(
                "incomplete request upstream: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }
}

/// Number of HTTP responses in `text` (status lines).
fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let mut s = http_setup().await;
    let p = s.port;
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: web.test:{p}\r\n\r\n");
    // CL.TE: a proxy trusting Content-Length would forward the "0\r\n\r\n"
    // and leave `smuggled` as the next request on its upstream connection.
    let cl_te = format!(
        "POST http://web.test:{p}/a HTTP/1.1\r\nHost: web.test:{p}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    // TE.CL: a back end trusting Content-Length: 3 would see "8\r\n" as the
    // body and "SMUGGLED..." as a new request.
    let te_cl = format!(
        "POST http://web.test:{p}/b HTTP/1.1\r\nHost: web.test:{p}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{smuggled}"
    );
    for (what, raw, body) in [("CL.TE", cl_te, ""), ("TE.CL", te_cl, "SMUGGLED")] {
        let answer = s.exchange(raw.as_bytes()).await;
        let status = answer.get(9..12).unwrap_or_default().to_owned();
        match status.as_str() {
            "200" => {
                let up = s.next_upstream_request().await;
                assert_eq!(up.method, "POST", "{what}");
                assert_eq!(
                    String::from_utf8_lossy(&up.body),
                    body,
                    "{what}: the body the proxy parsed"
                );
                assert!(
                    up.rest.is_empty(),
                    "{what}: bytes after the request upstream: {:?}",
                    String::from_utf8_lossy(&up.rest)
                );
                assert!(
                    up.header_all("content-length").is_empty()
                        || up.header_all("transfer-encoding").is_empty(),
                    "{what}: both framings forwarded: {:?}",
                    up.headers
                );
                assert_eq!(
                    responses(&answer),
                    1,
                    "{what}: the smuggled request was not answered: {answer}"
                );
            }
            "400" => assert!(
                answer.contains("error=http_request_error"),
                "{what}: {answer}"
            ),
            _ => panic!("{what}: unexpected answer {answer}"),
        }
    }
    // The smuggled request never reached the origin as a request of its own.
    let accepted = s.origin.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 2,
        "one upstream connection per forwarded request: {accepted}"
    );
    while let Ok(raw) = s.seen.try_recv() {
        let text = String::from_utf8_lossy(&raw);
        assert!(
            !text.starts_with("GET /smuggled"),
            "smuggled upstream: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_framing_and_obs_fold_are_400_and_never_forwarded() {
    let s = http_setup().await;
    let p = s.port;
    let start = format!("POST http://web.test:{p}/ HTTP/1.1\r\nHost: web.test:{p}\r\n");
    let cases = [
        ("two different Content-Lengths", format!("{start}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")),
        ("a Content-Length list that disagrees", format!("{start}Content-Length: 5, 6\r\n\r\nhello!")),
        ("a non-numeric Content-Length", format!("{start}Content-Length: 5x\r\n\r\nhello")),
        ("a signed Content-Length", format!("{start}Content-Length: +5\r\n\r\nhello")),
        ("Transfer-Encoding not ending in chunked", format!("{start}Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("an unknown Transfer-Encoding with Content-Length", format!("{start}Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello")),
        ("Transfer-Encoding in HTTP/1.0", format!("POST http://web.test:{p}/ HTTP/1.0\r\nHost: web.test:{p}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
        ("obs-fold", format!("{start}X-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n")),
        ("obs-fold hiding Transfer-Encoding", format!("{start}Content-Length: 5\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\nhello")),
        ("whitespace before the colon", format!("{start}Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ];
    for (what, raw) in cases {
        let (mut c, r) = send_raw(s.proxy.addr, raw.as_bytes()).await;
        assert_eq!(r.status, 400, "{what}: {r:?} {}", r.text());
        assert_error(&r, 400, "http_request_error");
        expect_closed(&mut c).await;
    }
    assert_eq!(
        s.origin.accepted.load(Ordering::SeqCst),
        0,
        "nothing was forwarded"
    );
    // Duplicate but equal Content-Lengths are one length: forwarded once.
    let raw =
        format!("{start}Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    let mut s = s;
    let answer = s.exchange(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let up = s.next_upstream_request().await;
    assert_eq!(up.body, b"hello");
    assert_eq!(up.header_all("content-length"), ["5"]);
    assert!(up.rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_target_decides_over_the_host_field() {
    let mut s = http_setup().await;
    let p = s.port;
    // Absolute form: the origin sees the target's authority as Host.
    let raw = format!(
        "GET http://web.test:{p}/x HTTP/1.1\r\nHost: evil.test:{p}\r\nHost: evil.test\r\nConnection: close\r\n\r\n"
    );
    let answer = s.exchange(raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let up = s.next_upstream_request().await;
    assert_eq!(up.target, "/x");
    assert_eq!(
        up.header_all("host"),
        [format!("web.test:{p}")],
        "the target's authority, once"
    );
    let rec = s.proxy.next_record();
    assert_eq!((rec.host.as_str(), rec.decision), ("web.test", "allow"));
    // A denied target is denied whatever Host says.
    let raw = format!("GET http://evil.test:{p}/ HTTP/1.1\r\nHost: web.test:{p}\r\n\r\n");
    let (_, r) = send_raw(s.proxy.addr, raw.as_bytes()).await;
    assert_error(&r, 403, "http_request_denied");
    // Userinfo that looks like the allowed host does not make it allowed.
    let raw =
        format!("GET http://web.test:{p}@evil.test:{p}/ HTTP/1.1\r\nHost: web.test:{p}\r\n\r\n");
    let (_, r) = send_raw(s.proxy.addr, raw.as_bytes()).await;
    assert!(r.status == 400 || r.status == 403, "{r:?}");
    assert_eq!(s.origin.accepted.load(Ordering::SeqCst), 1);

    // CONNECT: the authority decides, the Host field is ignored.
    let raw = format!("CONNECT evil.test:{p} HTTP/1.1\r\nHost: web.test:{p}\r\n\r\n");
    let (_, r) = send_raw(s.proxy.addr, raw.as_bytes()).await;
    assert_error(&r, 403, "http_request_denied");
    assert_eq!(s.origin.accepted.load(Ordering::SeqCst), 1);
    let raw = format!("CONNECT web.test:{p} HTTP/1.1\r\nHost: evil.test:{p}\r\n\r\n");
    let (mut t, r) = send_raw(s.proxy.addr, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    t.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_all(&mut t).await).unwrap();
    assert!(answer.ends_with("ok"), "{answer}");
    drop(t);
    let mut rec = s.proxy.next_record();
    while rec.decision != "allow" {
        rec = s.proxy.next_record();
    }
    assert_eq!((rec.listener, rec.host.as_str()), ("connect", "web.test"));
    assert_eq!(s.origin.accepted.load(Ordering::SeqCst), 2);
}

/// On a reused client connection the second head is hyper's alone: bad
/// framing there is still refused and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_framing_on_a_reused_connection_is_refused_too() {
    let mut s = http_setup().await;
    let p = s.port;
    let mut c = dial(s.proxy.addr).await;
    let first = format!("GET http://web.test:{p}/1 HTTP/1.1\r\nHost: web.test:{p}\r\n\r\n");
    c.write_all(first.as_bytes()).await.unwrap();
    let r = read_response(&mut c).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    let up = s.next_upstream_request().await;
    assert_eq!(up.target, "/1");
    let second = format!(
        "POST http://web.test:{p}/2 HTTP/1.1\r\nHost: web.test:{p}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    c.write_all(second.as_bytes()).await.unwrap();
    let rest = String::from_utf8_lossy(&read_all(&mut c).await).into_owned();
    assert!(rest.starts_with("HTTP/1.1 400"), "{rest}");
    assert_eq!(
        s.origin.accepted.load(Ordering::SeqCst),
        1,
        "the second request was not forwarded"
    );
}

// ===========================================================================
// 4. IP spellings and prohibited ranges
// ===========================================================================

/// Every spelling of 127.0.0.1 (and of other prohibited addresses) as a
/// CONNECT authority or an absolute URI, in report mode (the policy lets IP
/// literals through, so only the parser and the address check stand in the
/// way), with the default `deny_cidrs` and no exception: refused, and no
/// dial is even attempted. The echo on 127.0.0.1:P would answer otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_spellings_never_reach_a_prohibited_address() {
    let dns = DnsServer::start().await;
    let upstream = echo(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let p = upstream.addr.port();
    let mut cfg = config(dns.addr);
    cfg.allow_cidrs.clear();
    cfg.mode = Mode::Report;
    let proxy = Proxy::start(cfg, one_rule("web", "web.test", p, "any")).await;
    let hosts = [
        // Non-canonical IPv4: never a name, never an address.
        "2130706433",
        "0x7f.1",
        "0x7f000001",
        "127.1",
        "127.0.1",
        "0177.0.0.1",
        "0177.0.0.01",
        "127.0.0.1.",
        "0.0.0.0",
        "0",
        "0x0",
        // IPv6 forms of prohibited IPv4 ranges and IPv6 specials.
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[64:ff9b:1::7f00:1]",
        "[2002:7f00:1::]",
        "[::ffff:10.0.0.1]",
        "[64:ff9b::a00:1]",
        "[2002:a00:1::]",
        "[::ffff:169.254.169.254]",
        "[::]",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[fe80::1]",
        "[fd00::1]",
        "[ff02::1]",
    ];
    for host in hosts {
        let authority = format!("{host}:{p}");
        let (_, r) = connect(proxy.addr, &authority).await;
        let text = r.text();
        assert!(
            r.status == 400 || r.status == 403,
            "CONNECT {authority}: {r:?} {text}"
        );
        if r.status == 403 {
            assert_error(&r, 403, "destination_ip_prohibited");
        } else {
            assert_error(&r, 400, "http_request_error");
        }
        let req = format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        let (_, r) = send_raw(proxy.addr, req.as_bytes()).await;
        assert!(
            r.status == 400 || r.status == 403,
            "GET http://{authority}/: {r:?} {}",
            r.text()
        );
        if r.status == 403 {
            assert_error(&r, 403, "destination_ip_prohibited");
        }
    }
    assert_eq!(
        upstream.accepted.load(Ordering::SeqCst),
        0,
        "nothing reached 127.0.0.1"
    );
    for outcome in ["ok", "refused", "timeout", "error"] {
        assert_eq!(
            proxy.metric(
                "portcullis_upstream_connect_duration_seconds_count",
                &[("outcome", outcome)]
            ),
            0.0,
            "no dial was attempted ({outcome})"
        );
    }
    assert_eq!(
        proxy.metric("portcullis_dns_lookup_duration_seconds_count", &[]),
        0.0,
        "no spelling was resolved as a name"
    );
}

/// A name the policy allows, whose DNS answers are prohibited addresses in
/// disguise (DNS rebinding to loopback through IPv6 forms): refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_in_disguise_never_reach_a_prohibited_address() {
    let dns = DnsServer::start().await;
    let upstream = echo(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let p = upstream.addr.port();
    let mut cfg = config(dns.addr);
    cfg.allow_cidrs.clear();
    let proxy = Proxy::start(cfg, one_rule("rebind", "*.rebind.test", p, "any")).await;
    let answers: [&[&str]; 9] = [
        &["::ffff:127.0.0.1"],
        &["::"],
        &["0.0.0.0"],
        &["::127.0.0.1"],
        &["64:ff9b::7f00:1"],
        &["2002:7f00:1::"],
        &["::ffff:169.254.169.254"],
        &["::1", "::ffff:127.0.0.1", "0.0.0.0"],
        &["fe80::1", "100.64.0.1", "192.168.1.1"],
    ];
    for (i, ips) in answers.iter().enumerate() {
        let name = format!("n{i}.rebind.test");
        let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().unwrap()).collect();
        dns.set(&name, &ips, 300).await;
        let (mut c, r) = connect(proxy.addr, &format!("{name}:{p}")).await;
        assert_error(&r, 403, "destination_ip_prohibited");
        expect_closed(&mut c).await;
        let rec = proxy.next_record();
        assert_eq!(
            (rec.reason, rec.rule.as_str()),
            ("destination_ip_prohibited", "rebind"),
            "{ips:?}"
        );
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);
}

/// Non-canonical IPv4 spellings never match a host rule, in enforce mode,
/// as CONNECT authorities and as SNI names (report mode on the SNI listener:
/// even then an address-like SNI is never dialled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_spellings_never_match_a_host_rule() {
    let dns = DnsServer::start().await;
    let pki = TestPki::new("abcdefghij");
    let upstream = echo(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let p = upstream.addr.port();
    // Rules that an address spelled as a name must not match.
    let pol = policy(&format!(
        "[[rule]]\nname = \"wide\"\nhosts = [\"*.test\", \"abcdefghij\"]\nports = [{p}]\ntls = \"any\"\n"
    ));
    let mut cfg = config(dns.addr);
    cfg.sni_listen = vec![SniListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        port: p,
        original_dst: false,
    }];
    let proxy = Proxy::start(cfg.clone(), pol.clone()).await;
    for host in [
        "2130706433",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "127.0.0.1",
        "1.2.3.4.5",
        "0x7f.0.0.1",
    ] {
        let (_, r) = connect(proxy.addr, &format!("{host}:{p}")).await;
        assert!(r.status == 400 || r.status == 403, "CONNECT {host}: {r:?}");
        if r.status == 403 {
            assert_error(&r, 403, "http_request_denied");
        }
    }
    // SNI: a real ClientHello for a 10-byte name, with the name bytes
    // replaced by same-length address spellings (lengths stay valid).
    let hello = client_hello_record(pki.client_config(), "abcdefghij").await;
    let at = hello
        .windows(10)
        .position(|w| w == b"abcdefghij")
        .expect("the SNI in the ClientHello");
    cfg.mode = Mode::Report;
    let report = Proxy::start(cfg, pol).await;
    for p in [&proxy, &report] {
        for spelled in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.00.0.1",
            "0000000001",
        ] {
            let mut h = hello.clone();
            h[at..at + 10].copy_from_slice(spelled.as_bytes());
            let mut c = dial(p.running.sni_addrs[0]).await;
            c.write_all(&h).await.unwrap();
            expect_closed(&mut c).await;
            let mut rec = p.next_record();
            while rec.listener != "sni" {
                rec = p.next_record();
            }
            // Refused by the policy (deny) or already by the ClientHello
            // reader (error, tls_protocol_error): never dialled either way.
            assert!(
                matches!(
                    (rec.decision, rec.reason),
                    ("deny", "http_request_denied") | ("error", "tls_protocol_error")
                ),
                "SNI {spelled}: {rec:?}"
            );
            assert!(rec.upstream.is_none());
        }
    }
    assert_eq!(upstream.accepted.load(Ordering::SeqCst), 0);
}

// ===========================================================================
// 5. Half-close, reset, never reading
// ===========================================================================

/// The CONNECT head, the payload and the FIN in one go, before the proxy has
/// even dialled: the whole payload is echoed, then the tunnel closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_right_after_sending_still_gets_the_full_echo() {
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    dns.set_v4("echo.test", ip4(upstream.addr)).await;
    let p = upstream.addr.port();
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("echo-rule", "echo.test", p, "any"),
    )
    .await;
    for len in [1usize, 3000, 256 * KIB] {
        let payload = pattern(len, len as u32);
        let mut c = dial(proxy.addr).await;
        let mut raw =
            format!("CONNECT echo.test:{p} HTTP/1.1\r\nHost: echo.test:{p}\r\n\r\n").into_bytes();
        raw.extend_from_slice(&payload);
        let (mut r, mut w) = c.split();
        let write = async {
            w.write_all(&raw).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let read = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, got) = within("the echo after a half-close", async {
            tokio::join!(write, read)
        })
        .await;
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
        assert!(
            got.starts_with(ok),
            "{:?}",
            String::from_utf8_lossy(&got[..got.len().min(80)])
        );
        assert!(got[ok.len()..] == payload[..], "{len} bytes echoed exactly");
        let rec = proxy.next_record();
        assert_eq!(
            (rec.decision, rec.bytes_up, rec.bytes_down),
            ("allow", len as u64, len as u64)
        );
    }
}

/// A client that resets mid-transfer: the tunnel ends, its upstream side is
/// closed, the connection is logged, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_mid_transfer_is_logged_and_the_proxy_carries_on() {
    let dns = DnsServer::start().await;
    let upstream = echo(bind_fresh(0).await);
    dns.set_v4("echo.test", ip4(upstream.addr)).await;
    let authority = format!("echo.test:{}", upstream.addr.port());
    let proxy = Proxy::start(
        config(dns.addr),
        one_rule("echo-rule", "echo.test", upstream.addr.port(), "any"),
    )
    .await;
    for round in 0..3u32 {
        let mut t = tunnel(proxy.addr, &authority).await;
        let chunk = pattern(64 * KIB, round);
        assert_eq!(roundtrip(&mut t, &chunk).await, chunk);
        // More bytes in flight both ways, then RST.
        t.write_all(&pattern(MIB, round + 10)).await.unwrap();
        set_linger_zero(&t);
        drop(t);
        let rec = proxy.next_record();
        assert_eq!((rec.listener, rec.rule.as_str()), ("connect", "echo-rule"));
        assert!(rec.bytes_up >= 64 * KIB as u64, "{rec:?}");
        assert!(rec.upstream.is_some());
        assert_eq!(
            proxy.metric("portcullis_active_tunnels", &[("listener", "connect")]),
            0.0,
            "the reset tunnel is gone"
        );
    }
    let mut t = tunnel(proxy.addr, &authority).await;
    assert_eq!(roundtrip(&mut t, b"still serving").await, b"still serving");
}

/// Polls `count` until it stops moving (unchanged for 10 polls 50 ms apart),
/// at most `limit`; returns the last value.
async fn settled(count: &AtomicU64, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = count.load(Ordering::SeqCst);
    let mut still = 0;
    while still < 10 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count.load(Ordering::SeqCst);
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
    last
}

/// A client that never reads while its upstream writes as fast as it can:
/// the upstream is back-pressured (its writes stall after a bounded amount,
/// socket buffers and one pipe), and the real binary's RSS stays flat. Then
/// the client reads and every byte arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_back_pressures_the_upstream() {
    never_reads(&[]).await;
}

/// The same through the portable user-space copy instead of splice(2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_back_pressures_the_upstream_userspace_copy() {
    never_reads(&[("PORTCULLIS_TUNNEL_COPY", "userspace")]).await;
}

async fn never_reads(env: &[(&str, &str)]) {
    let dns = DnsServer::start().await;
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let firehose = serve_each_pub(bind_fresh(0).await, move |mut s| {
        let w = w.clone();
        async move {
            let chunk = pattern(64 * KIB, 7);
            // Bounded: at most 4 GiB, far beyond any buffer.
            for _ in 0..65536 {
                if s.write_all(&chunk).await.is_err() {
                    return;
                }
                w.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    });
    dns.set_v4("firehose.test", ip4(firehose.addr)).await;
    let port = firehose.addr.port();
    let bin = BinProxy::spawn_env(
        "never-reads",
        &bin_config(dns.addr, true, ""),
        &format!("[[rule]]\nname = \"firehose\"\nhosts = [\"firehose.test\"]\nports = [{port}]\ntls = \"any\"\n"),
        &[],
        env,
    )
    .await;
    // Warm up the proxy's allocator and resolver with one short tunnel.
    let mut warm = tunnel(bin.proxy, &format!("firehose.test:{port}")).await;
    let mut buf = vec![0u8; 64 * KIB];
    within("warm-up bytes", warm.read_exact(&mut buf))
        .await
        .unwrap();
    drop(warm);
    let rss_before = bin.rss_kib();
    let base = settled(&written, Duration::from_secs(10)).await;

    let mut idle = tunnel(bin.proxy, &format!("firehose.test:{port}")).await;
    let stalled = settled(&written, Duration::from_secs(15)).await - base;
    let rss_after = bin.rss_kib();
    println!(
        "{env:?}: upstream wrote {} KiB before stalling; proxy RSS {rss_before} KiB -> {rss_after} KiB",
        stalled / 1024
    );
    assert!(
        stalled < 64 * MIB as u64,
        "the upstream wrote {stalled} bytes to a client that never reads: not back-pressured"
    );
    assert!(
        rss_after < rss_before + 16 * 1024,
        "the proxy buffered in memory: RSS {rss_before} KiB -> {rss_after} KiB"
    );
    // Reading resumes the flow: take 4x what was in flight, byte-exact.
    let mut got = vec![0u8; (stalled as usize * 4).max(MIB)];
    within("the held-back bytes to flow", idle.read_exact(&mut got))
        .await
        .unwrap();
    let pat = pattern(64 * KIB, 7);
    assert!(
        got.chunks(64 * KIB).all(|c| c == &pat[..c.len()]),
        "bytes arrive in order, intact"
    );
}

/// After an absolute-form request, an idle keep-alive client connection
/// does not hold its `max_connections` slot forever: the next request head
/// must arrive within `handshake_timeout_ms`, like the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed_after_the_handshake_timeout() {
    let dns = DnsServer::start().await;
    let origin = http_origin(bind_fresh(0).await);
    dns.set_v4("web.test", ip4(origin.addr)).await;
    let p = origin.addr.port();
    let mut cfg = config(dns.addr);
    cfg.handshake_timeout = Duration::from_millis(500);
    cfg.max_connections = 1;
    let proxy = Proxy::start(cfg, one_rule("web", "web.test", p, "any")).await;
    let mut c = dial(proxy.addr).await;
    let req = format!("GET http://web.test:{p}/ HTTP/1.1\r\nHost: web.test:{p}\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut c).await;
    assert_eq!(r.status, 200);
    // Silent from now on: the proxy closes the connection...
    expect_closed(&mut c).await;
    // ...and the only slot is free again.
    let mut d = dial(proxy.addr).await;
    let req = format!(
        "GET http://web.test:{p}/again HTTP/1.1\r\nHost: web.test:{p}\r\nConnection: close\r\n\r\n"
    );
    d.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut d).await;
    assert_eq!(r.status, 200, "{r:?}");
}
