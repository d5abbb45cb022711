//! The admin listener of the real binary: endpoints, readiness, the PAC as
//! served, and `/metrics` (valid Prometheus text, every SPEC metric, counters
//! that move by exactly the traffic sent, nothing from requests in labels).
//!
//! Everything runs on loopback: a hickory-server authoritative for `test.`,
//! a threaded echo upstream, and `portcullis run` with port-0 listeners whose
//! addresses are read from its "listening" lines on stderr.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::Shutdown;

use harness::*;

/// SPEC's metric table: name and type.
const SPEC_METRICS: &[(&str, &str)] = &[
    ("portcullis_connections_total", "counter"),
    ("portcullis_active_tunnels", "gauge"),
    ("portcullis_tunnel_bytes_total", "counter"),
    ("portcullis_tunnel_duration_seconds", "histogram"),
    ("portcullis_dns_lookup_duration_seconds", "histogram"),
    ("portcullis_upstream_connect_duration_seconds", "histogram"),
    ("portcullis_policy_reloads_total", "counter"),
    ("portcullis_policy_rules", "gauge"),
    ("portcullis_build_info", "gauge"),
];

/// SPEC's label names per metric.
fn spec_labels(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "portcullis_connections_total" => &["decision", "listener", "reason", "rule"],
        "portcullis_active_tunnels" => &["listener"],
        "portcullis_tunnel_bytes_total" => &["direction", "rule"],
        "portcullis_tunnel_duration_seconds" => &["rule"],
        "portcullis_dns_lookup_duration_seconds" => &["outcome"],
        "portcullis_upstream_connect_duration_seconds" => &["outcome"],
        "portcullis_policy_reloads_total" => &["outcome"],
        "portcullis_policy_rules" => &[],
        "portcullis_build_info" => &["version"],
        _ => return None,
    })
}

/// Every `portcullis_*` family has exactly SPEC's labels, with values from
/// SPEC's vocabularies (rule names from `rules`).
fn assert_spec_shape(expo: &Exposition, rules: &[&str]) {
    let listeners = ["connect", "http", "sni", "inbound"];
    let decisions = ["allow", "deny", "error", "report"];
    let reasons = [
        "ok",
        "http_request_denied",
        "destination_ip_prohibited",
        "dns_error",
        "dns_timeout",
        "connection_refused",
        "destination_unavailable",
        "connection_timeout",
        "http_request_error",
        "connection_limit_reached",
        "tls_protocol_error",
    ];
    for (name, ty) in SPEC_METRICS {
        assert_eq!(
            expo.types.get(*name).map(String::as_str),
            Some(*ty),
            "# TYPE of {name}"
        );
    }
    for s in &expo.samples {
        if !s.name.starts_with("portcullis_") {
            continue;
        }
        let family = expo.family_of(&s.name).expect("family");
        let want = spec_labels(family)
            .unwrap_or_else(|| panic!("{family} is not a SPEC metric (sample {s:?})"));
        let mut got: Vec<&str> = s
            .labels
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "le")
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "labels of {s:?}");
        for (k, v) in &s.labels {
            let ok = match k.as_str() {
                "listener" => listeners.contains(&v.as_str()),
                "decision" => decisions.contains(&v.as_str()),
                "reason" => reasons.contains(&v.as_str()),
                "rule" => v == "none" || rules.contains(&v.as_str()),
                "direction" => v == "upstream" || v == "downstream",
                "outcome" if family == "portcullis_dns_lookup_duration_seconds" => {
                    ["ok", "nxdomain", "timeout", "error"].contains(&v.as_str())
                }
                "outcome" if family == "portcullis_upstream_connect_duration_seconds" => {
                    ["ok", "refused", "timeout", "error"].contains(&v.as_str())
                }
                "outcome" => v == "ok" || v == "error",
                "version" => v == env!("CARGO_PKG_VERSION"),
                "le" => true,
                _ => false,
            };
            assert!(ok, "label {k}={v:?} is outside SPEC's vocabulary in {s:?}");
        }
    }
    let process: BTreeSet<&str> = expo
        .types
        .keys()
        .map(String::as_str)
        .filter(|n| n.starts_with("process_"))
        .collect();
    for p in [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            process.contains(p),
            "{p} missing; process metrics: {process:?}"
        );
    }
}

fn echo_config(dir: &TempDir, dns: &DnsServer, echo_port: u16) -> std::path::PathBuf {
    let policy = dir.write(
        "policy.toml",
        &format!(
            "[[rule]]\nname = \"echo\"\nhosts = [\"echo.test\"]\nports = [{echo_port}]\ntls = \"any\"\n\n\
             [[rule]]\nname = \"wild\"\nhosts = [\"*.wild.test\"]\nports = [443]\n"
        ),
    );
    dir.write(
        "portcullis.toml",
        &base_config(
            &policy,
            dns.addr,
            30,
            &["a.proxy.test:3128", "b.proxy.test:3128"],
        ),
    )
}

#[test]
fn admin_endpoints_answer_and_everything_else_is_404() {
    let dir = TempDir::new("admin-endpoints");
    let dns = DnsServer::start(&[]);
    let cfg = echo_config(&dir, &dns, 9);
    let p = Portcullis::spawn(&["-c", cfg.to_str().unwrap(), "run"], &[]);

    let r = http(p.admin, "GET", "/healthz").unwrap();
    assert_eq!(r.status, 200);
    let r = http(p.admin, "GET", "/readyz").unwrap();
    assert_eq!(r.status, 200, "ready once the listeners are bound");

    let expected_pac = {
        let out = run_bounded(
            std::process::Command::new(env!("CARGO_BIN_EXE_portcullis")).args([
                "-c",
                cfg.to_str().unwrap(),
                "pac",
            ]),
            STEP,
        );
        assert!(out.status.success(), "portcullis pac: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for path in ["/proxy.pac", "/wpad.dat"] {
        let r = http(p.admin, "GET", path).unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("content-type"),
            Some("application/x-ns-proxy-autoconfig"),
            "{path}"
        );
        let body = String::from_utf8(r.body.clone()).unwrap();
        assert_eq!(
            body, expected_pac,
            "{path} serves what `portcullis pac` prints"
        );
        assert!(body.contains("function FindProxyForURL(url, host)"));
        assert!(body.contains("\"PROXY a.proxy.test:3128; PROXY b.proxy.test:3128\""));
        assert!(body.contains("host == \"echo.test\""), "{body}");
        assert!(body.contains("dnsDomainIs(host, \".wild.test\")"), "{body}");
        assert!(!body.contains("dnsResolve") && !body.contains("isResolvable"));
    }

    let r = http(p.admin, "GET", "/metrics").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain") && c.contains("version=0.0.4")),
        "{:?}",
        r.headers
    );

    for path in ["/", "/nope", "/metrics/x", "/proxy.pac.bak", "/WPAD.DAT"] {
        let r = http(p.admin, "GET", path).unwrap();
        assert_eq!(r.status, 404, "{path}");
    }

    // HEAD: same status and headers, no body.
    for path in ["/metrics", "/healthz", "/readyz", "/proxy.pac", "/wpad.dat"] {
        let r = http(p.admin, "HEAD", path).unwrap();
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path} sent a body");
    }
    let r = http(p.admin, "HEAD", "/wpad.dat").unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("application/x-ns-proxy-autoconfig")
    );
    let r = http(p.admin, "HEAD", "/nope").unwrap();
    assert_eq!(r.status, 404);

    let r = http(p.admin, "POST", "/metrics").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn metrics_count_exactly_the_traffic_sent_and_hold_no_request_data() {
    let dir = TempDir::new("admin-metrics");
    let dns = DnsServer::start(&[("echo.test", [127, 0, 0, 1])]);
    let echo = echo_server();
    let cfg = echo_config(&dir, &dns, echo.port());
    let p = Portcullis::spawn(&["-c", cfg.to_str().unwrap(), "run"], &[]);

    let before = parse_exposition(&p.metrics());
    assert_eq!(before.value("portcullis_policy_rules", &[]), Some(2.0));
    assert_eq!(
        before.value(
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        before.value("portcullis_connections_total", &conn_labels("deny")),
        None,
        "no connections counted before any traffic"
    );

    // Two denied CONNECTs to a host name that must never show up in /metrics.
    let secret = "secret-denied-host.test";
    let mut client_addrs = Vec::new();
    for _ in 0..2 {
        let (status, s, head) = proxy_connect(p.proxy, &format!("{secret}:443"));
        assert_eq!(status, 403, "{head}");
        assert!(head.contains("error=http_request_denied"), "{head}");
        client_addrs.push(s.local_addr().unwrap().to_string());
    }

    // One allowed tunnel to the echo upstream.
    let (status, mut t, head) = proxy_connect(p.proxy, &format!("echo.test:{}", echo.port()));
    assert_eq!(status, 200, "{head}");
    client_addrs.push(t.local_addr().unwrap().to_string());
    let a = vec![b'a'; 1000];
    let b = vec![b'b'; 2345];
    echo_roundtrip(&mut t, &a);
    echo_roundtrip(&mut t, &b);
    let sent = (a.len() + b.len()) as f64;

    let open = parse_exposition(&p.metrics());
    assert_eq!(
        open.value("portcullis_active_tunnels", &[("listener", "connect")]),
        Some(1.0),
        "the open tunnel is in the gauge"
    );

    // Close: half-close our side, read the echo's FIN, then drop.
    t.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(t);

    let up = [("direction", "upstream"), ("rule", "echo")];
    let text = wait_for("tunnel bytes to be counted", STEP, || {
        let text = p.metrics();
        let e = parse_exposition(&text);
        (e.value("portcullis_tunnel_bytes_total", &up) == Some(sent)).then_some(text)
    });
    let e = parse_exposition(&text);
    assert_eq!(
        e.value("portcullis_connections_total", &conn_labels("deny")),
        Some(2.0)
    );
    assert_eq!(
        e.value(
            "portcullis_connections_total",
            &[
                ("decision", "allow"),
                ("listener", "connect"),
                ("reason", "ok"),
                ("rule", "echo"),
            ]
        ),
        Some(1.0)
    );
    let conns: f64 = e
        .samples
        .iter()
        .filter(|s| s.name == "portcullis_connections_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(conns, 3.0, "exactly three connections were made");
    assert_eq!(
        e.value(
            "portcullis_tunnel_bytes_total",
            &[("direction", "downstream"), ("rule", "echo")]
        ),
        Some(sent)
    );
    assert_eq!(
        e.value(
            "portcullis_tunnel_bytes_total",
            &[("direction", "upstream"), ("rule", "wild")]
        ),
        Some(0.0)
    );
    assert_eq!(
        e.value(
            "portcullis_tunnel_duration_seconds_count",
            &[("rule", "echo")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.value(
            "portcullis_dns_lookup_duration_seconds_count",
            &[("outcome", "ok")]
        ),
        Some(1.0),
        "denied CONNECTs never reach DNS"
    );
    assert_eq!(
        e.value(
            "portcullis_upstream_connect_duration_seconds_count",
            &[("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        e.value("portcullis_active_tunnels", &[("listener", "connect")]),
        Some(0.0)
    );
    assert_eq!(
        e.value("portcullis_policy_reloads_total", &[("outcome", "ok")]),
        Some(0.0)
    );
    assert_spec_shape(&e, &["echo", "wild"]);

    // Nothing from the requests: no host name, no client address.
    for needle in [secret, "secret-denied", "echo.test", "127.0.0.1"]
        .into_iter()
        .map(str::to_owned)
        .chain(client_addrs)
    {
        assert!(
            !text.contains(&needle),
            "{needle:?} appears in /metrics:\n{text}"
        );
    }
    // The access log, on the other hand, names them.
    let log = wait_for("three access-log lines", STEP, || {
        let lines = p.stdout_lines();
        (lines.len() >= 3).then_some(lines)
    });
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(log.iter().filter(|l| l.contains(secret)).count() == 2);

    promtool_check(&text);
}

fn conn_labels(decision: &'static str) -> [(&'static str, &'static str); 4] {
    [
        ("decision", decision),
        ("listener", "connect"),
        ("reason", "http_request_denied"),
        ("rule", "none"),
    ]
}

/// The acceptance check: `portcullis run` on the built-in default
/// config (listeners moved to port 0 through the environment, so parallel
/// runs cannot collide) shows every SPEC metric after one proxy request.
#[test]
fn default_config_shows_every_spec_metric_after_one_request() {
    let p = Portcullis::spawn(
        &["run"],
        &[
            ("PORTCULLIS__PROXY__LISTEN", "127.0.0.1:0"),
            ("PORTCULLIS__ADMIN__LISTEN", "127.0.0.1:0"),
        ],
    );
    let (status, s, head) = proxy_connect(p.proxy, "denied.example.org:443");
    assert_eq!(status, 403, "{head}");
    drop(s);
    let text = wait_for("the request to be counted", STEP, || {
        let text = p.metrics();
        parse_exposition(&text)
            .value("portcullis_connections_total", &conn_labels("deny"))
            .is_some()
            .then_some(text)
    });
    let e = parse_exposition(&text);
    for (name, _) in SPEC_METRICS {
        assert!(
            e.samples
                .iter()
                .any(|s| e.family_of(&s.name) == Some(*name)),
            "{name} has no sample:\n{text}"
        );
    }
    assert_eq!(e.value("portcullis_policy_rules", &[]), Some(4.0));
    assert_spec_shape(
        &e,
        &[
            "getconf",
            "diagnostics-upload",
            "techconnect-slot",
            "techconnect-session",
        ],
    );
    assert!(!text.contains("denied.example.org"));
    promtool_check(&text);
}

#[test]
fn exposition_parser_rejects_malformed_text() {
    for bad in [
        "# TYPE a counter\na{x=\"1\" 1\n",
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\nb 1\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na notanumber\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted {bad:?}"
        );
    }
    let ok = parse_exposition(
        "# HELP a x\n# TYPE a counter\na{x=\"q\\\"\\\\\\n\",y=\"2\"} 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n",
    );
    assert_eq!(ok.value("a", &[("x", "q\"\\\n"), ("y", "2")]), Some(3.0));
    assert_eq!(ok.value("h_count", &[]), Some(2.0));
}

mod harness;
