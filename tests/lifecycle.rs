//! The process lifecycle of the real binary: SIGHUP reloads the policy
//! without cutting open tunnels (and refuses a bad one), SIGTERM/SIGINT drain
//! (readyz 503, listeners closed, open tunnels finish, exit 0), a second
//! signal ends the drain at once, and an expired grace cuts what is left.
//!
//! Signals go through kill(1); every wait is bounded; only loopback is used.

use std::io::{ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::*;

/// A policy with the rule `echo` (echo.test on the echo port) and, if
/// `added`, the rule `added` (added.test on the same port).
fn policy_text(echo_port: u16, added: bool) -> String {
    let mut p = format!(
        "[[rule]]\nname = \"echo\"\nhosts = [\"echo.test\"]\nports = [{echo_port}]\ntls = \"any\"\n"
    );
    if added {
        p.push_str(&format!(
            "\n[[rule]]\nname = \"added\"\nhosts = [\"added.test\"]\nports = [{echo_port}]\ntls = \"any\"\n"
        ));
    }
    p
}

struct Setup {
    dir: TempDir,
    _dns: DnsServer,
    echo: SocketAddr,
    policy: PathBuf,
    config: PathBuf,
}

fn setup(tag: &str, grace_s: u64) -> Setup {
    let dir = TempDir::new(tag);
    let dns = DnsServer::start(&[
        ("echo.test", [127, 0, 0, 1]),
        ("added.test", [127, 0, 0, 1]),
    ]);
    let echo = echo_server();
    let policy = dir.write("policy.toml", &policy_text(echo.port(), false));
    let config = dir.write(
        "portcullis.toml",
        &base_config(&policy, dns.addr, grace_s, &["proxy.test:3128"]),
    );
    Setup {
        dir,
        _dns: dns,
        echo,
        policy,
        config,
    }
}

impl Setup {
    fn start(&self) -> Portcullis {
        Portcullis::spawn(&["-c", self.config.to_str().unwrap(), "run"], &[])
    }

    /// Opens a tunnel to `host` on the echo port and checks it carries bytes.
    fn tunnel(&self, p: &Portcullis, host: &str) -> TcpStream {
        let (status, mut t, head) = proxy_connect(p.proxy, &format!("{host}:{}", self.echo.port()));
        assert_eq!(status, 200, "CONNECT {host}: {head}");
        echo_roundtrip(&mut t, format!("hello {host}").as_bytes());
        t
    }

    fn connect_status(&self, p: &Portcullis, host: &str) -> u16 {
        let (status, _t, _) = proxy_connect(p.proxy, &format!("{host}:{}", self.echo.port()));
        status
    }
}

fn reloads(p: &Portcullis, outcome: &str) -> f64 {
    parse_exposition(&p.metrics())
        .value("portcullis_policy_reloads_total", &[("outcome", outcome)])
        .expect("portcullis_policy_reloads_total is always exported")
}

fn readyz(p: &Portcullis) -> u16 {
    http(p.admin, "GET", "/readyz").expect("GET /readyz").status
}

fn pac(p: &Portcullis) -> String {
    let r = http(p.admin, "GET", "/proxy.pac").expect("GET /proxy.pac");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

/// Half-closes our side, reads the upstream's FIN, drops the socket.
fn close_tunnel(mut t: TcpStream) {
    t.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).expect("tunnel closes cleanly");
    assert!(rest.is_empty());
}

/// True once a new TCP connection to `addr` is refused.
fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(s) => {
            drop(s);
            false
        }
    }
}

/// The signal handlers are in place before the first "listening" line: a
/// SIGHUP sent the moment the listeners are announced reloads, it does not
/// kill the process (SIGHUP's default action).
#[test]
fn sighup_right_after_listening_reloads_instead_of_killing() {
    let s = setup("life-early-hup", 30);
    let mut p = s.start();
    p.signal("HUP");
    wait_for("the reload to be counted", STEP, || {
        (reloads(&p, "ok") == 1.0).then_some(())
    });
    assert!(p.child.try_wait().unwrap().is_none(), "the process died");
    assert_eq!(readyz(&p), 200);
    assert_eq!(reloads(&p, "error"), 0.0);
    assert_eq!(p.wait_exit(Duration::ZERO), None);
}

#[test]
fn sighup_swaps_the_policy_without_cutting_open_tunnels() {
    let s = setup("life-hup", 30);
    let p = s.start();

    let mut old = s.tunnel(&p, "echo.test");
    assert_eq!(
        s.connect_status(&p, "added.test"),
        403,
        "not in the first policy"
    );
    assert!(!pac(&p).contains("added.test"));

    // Add a host: allowed after SIGHUP, no restart; the open tunnel carries on.
    s.dir
        .write("policy.toml", &policy_text(s.echo.port(), true));
    p.signal("HUP");
    wait_for("the reload to be counted", STEP, || {
        (reloads(&p, "ok") == 1.0).then_some(())
    });
    let e = parse_exposition(&p.metrics());
    assert_eq!(e.value("portcullis_policy_rules", &[]), Some(2.0));
    assert_eq!(
        e.value(
            "portcullis_tunnel_bytes_total",
            &[("direction", "upstream"), ("rule", "added")]
        ),
        Some(0.0),
        "the new rule's series exist at zero"
    );
    let added = s.tunnel(&p, "added.test");
    echo_roundtrip(&mut old, b"still here after the reload");
    assert!(
        pac(&p).contains("host == \"added.test\""),
        "the PAC follows the policy"
    );
    close_tunnel(added);

    // A broken policy is refused: error counted, file and line logged, old policy stays.
    let broken = format!(
        "{}\n[[rule]]\nname = \"broken\"\nhosts = [\"broken.test\"]\nports = [443]\nbogus_key = 1\n",
        policy_text(s.echo.port(), true)
    );
    let bad_line = broken
        .lines()
        .position(|l| l.starts_with("bogus_key"))
        .unwrap()
        + 1;
    s.dir.write("policy.toml", &broken);
    p.signal("HUP");
    wait_for("the failed reload to be counted", STEP, || {
        (reloads(&p, "error") == 1.0).then_some(())
    });
    assert_eq!(reloads(&p, "ok"), 1.0);
    let where_ = format!("{}:{bad_line}", s.policy.display());
    wait_for("the refusal to be logged with file and line", STEP, || {
        p.stderr_lines()
            .iter()
            .any(|l| l.contains("policy reload refused") && l.contains(&where_))
            .then_some(())
    });
    assert_eq!(
        parse_exposition(&p.metrics()).value("portcullis_policy_rules", &[]),
        Some(2.0)
    );
    let mut added = s.tunnel(&p, "added.test");
    echo_roundtrip(&mut old, b"still here after the refused reload");
    assert!(pac(&p).contains("added.test") && !pac(&p).contains("broken.test"));

    // Remove the host again: new connections are denied, but the tunnel
    // opened under the previous policy is not cut.
    s.dir
        .write("policy.toml", &policy_text(s.echo.port(), false));
    p.signal("HUP");
    wait_for("the second reload to be counted", STEP, || {
        (reloads(&p, "ok") == 2.0).then_some(())
    });
    assert_eq!(s.connect_status(&p, "added.test"), 403);
    echo_roundtrip(&mut added, b"opened under the old policy, still flowing");
    echo_roundtrip(&mut old, b"and the first one too");
    assert!(!pac(&p).contains("added.test"));
    close_tunnel(added);
    close_tunnel(old);
    assert_eq!(readyz(&p), 200, "reloads never touch readiness");
}

#[test]
fn sigterm_drains_open_tunnels_then_exits_zero() {
    let grace = 30;
    let s = setup("life-term", grace);
    let mut p = s.start();
    let mut t = s.tunnel(&p, "echo.test");
    let mut sent = "hello echo.test".len();

    p.signal("TERM");
    wait_for("/readyz to turn 503", STEP, || {
        (readyz(&p) == 503).then_some(())
    });
    assert_eq!(http(p.admin, "GET", "/healthz").unwrap().status, 200);
    wait_for("the proxy listener to refuse connections", STEP, || {
        refused(p.proxy).then_some(())
    });
    assert_eq!(
        parse_exposition(&p.metrics())
            .value("portcullis_active_tunnels", &[("listener", "connect")]),
        Some(1.0),
        "the admin listener keeps reporting during the drain"
    );

    // The open tunnel still works, and the process waits for it.
    for i in 0..3 {
        let msg = format!("draining, message {i}");
        echo_roundtrip(&mut t, msg.as_bytes());
        sent += msg.len();
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited with a tunnel open"
    );

    close_tunnel(t);
    let status = p
        .wait_exit(Duration::from_secs(grace))
        .expect("no exit within the grace period after the last tunnel closed");
    assert_eq!(status.code(), Some(0), "{}", p.stderr_text());

    // The drained tunnel was logged with every byte it carried.
    let rec = wait_for("the tunnel's access-log line", STEP, || {
        p.stdout_lines().into_iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            (v["rule"] == "echo").then_some(v)
        })
    });
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["bytes_up"], sent as u64);
    assert_eq!(rec["bytes_down"], sent as u64);
    let err = p.stderr_text();
    assert!(
        err.contains("draining") && err.contains("\"stopped\""),
        "{err}"
    );
}

#[test]
fn second_sigterm_during_drain_exits_at_once() {
    let grace = 120;
    let s = setup("life-term2", grace);
    let mut p = s.start();
    let mut t = s.tunnel(&p, "echo.test");

    p.signal("TERM");
    wait_for("/readyz to turn 503", STEP, || {
        (readyz(&p) == 503).then_some(())
    });
    echo_roundtrip(&mut t, b"still draining");
    p.signal("TERM");
    let status = p
        .wait_exit(STEP)
        .expect("the second signal did not end the process");
    assert!(status.code().is_some(), "killed by a signal: {status}");
    // The tunnel was cut, not left hanging.
    let mut buf = [0u8; 16];
    match t.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("tunnel still open after exit: {other:?}"),
    }
    assert!(
        p.stderr_text().contains("second signal"),
        "{}",
        p.stderr_text()
    );
}

#[test]
fn sigint_drains_like_sigterm() {
    let s = setup("life-int", 30);
    let mut p = s.start();
    assert_eq!(readyz(&p), 200);
    p.signal("INT");
    let status = p.wait_exit(STEP).expect("no exit after SIGINT");
    assert_eq!(status.code(), Some(0), "{}", p.stderr_text());
    assert!(p.stderr_text().contains("SIGINT"));
}

#[test]
fn expired_grace_cuts_the_remaining_tunnels_and_exits_zero() {
    let grace = 1;
    let s = setup("life-grace", grace);
    let mut p = s.start();
    let mut t = s.tunnel(&p, "echo.test");
    let signalled = Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(STEP).expect("no exit after the grace expired");
    assert_eq!(status.code(), Some(0), "{}", p.stderr_text());
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_secs(grace),
        "exit after {took:?} with a {grace}s grace"
    );
    let mut buf = [0u8; 16];
    match t.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("tunnel still open after exit: {other:?}"),
    }
    assert!(
        p.stderr_text().contains("grace expired"),
        "{}",
        p.stderr_text()
    );
    let rec = wait_for("the cut tunnel's access-log line", STEP, || {
        p.stdout_lines().into_iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).ok()?;
            (v["rule"] == "echo").then_some(v)
        })
    });
    assert_eq!(rec["bytes_up"], "hello echo.test".len() as u64);
}

mod harness;
