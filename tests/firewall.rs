//! `portcullis firewall` output and the deploy/firewall/ snippets, loaded
//! into the real tools: `nft -c -f` and `iptables-restore --test` /
//! `ip6tables-restore --test` (check mode: nothing on the host changes),
//! then for real inside a private network namespace (`unshare -n`), where
//! the listener guards are also probed with loopback connections.
//!
//! Needs root and the Debian packages `nftables`, `iptables` (and
//! `util-linux`, `iproute2`, `python3` for the namespace tests). When a tool
//! is missing the test fails if `CI=true` and is skipped with a printed
//! reason otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use portcullis::config::{Config, Inbound, SniListen};
use portcullis::firewall::{render, Format};
use tools::{find_tool, unavailable, Scratch};

mod tools;

/// Upper bound for any external command.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The tools, or `None` after failing (CI) or printing why the test is skipped.
fn tools(names: &[&str]) -> Option<Vec<PathBuf>> {
    if !is_root() {
        unavailable(
            "the firewall tests need root (nft and iptables talk to the kernel even in check mode)",
        );
        return None;
    }
    let mut found = Vec::new();
    for n in names {
        match find_tool(n) {
            Some(p) => found.push(p),
            None => {
                unavailable(&format!(
                    "`{n}` is not installed (apt-get install nftables iptables iproute2 util-linux python3)"
                ));
                return None;
            }
        }
    }
    Some(found)
}

/// Runs a command with `stdin` (if any), killing it after [`CMD_TIMEOUT`].
fn run(cmd: &mut Command, stdin: Option<&Path>) -> Output {
    tools::run(cmd, stdin, CMD_TIMEOUT)
}

fn assert_ok(what: &str, out: &Output, input: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({})\nstderr: {}\nstdout: {}\n--- input ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
        numbered(input)
    );
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} {l}\n", i + 1))
        .collect()
}

/// Checks one ruleset with the tool of its format, in check mode.
fn check(format: Format, text: &str, nft: &Path, ipt: &Path, ip6t: &Path) {
    let scratch = Scratch::new("firewall");
    let file = scratch.write("rules", text);
    let (what, out) = match format {
        Format::Nftables => (
            "nft -c -f",
            run(Command::new(nft).arg("-c").arg("-f").arg(&file), None),
        ),
        Format::Iptables => (
            "iptables-restore --test",
            run(Command::new(ipt).arg("--test"), Some(&file)),
        ),
        Format::Ip6tables => (
            "ip6tables-restore --test",
            run(Command::new(ip6t).arg("--test"), Some(&file)),
        ),
    };
    assert_ok(what, &out, text);
}

const FORMATS: [Format; 3] = [Format::Nftables, Format::Iptables, Format::Ip6tables];

fn check_tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let t = tools(&["nft", "iptables-restore", "ip6tables-restore"])?;
    Some((t[0].clone(), t[1].clone(), t[2].clone()))
}

fn example_config() -> Config {
    Config::load_from(
        Some(&manifest_dir().join("deploy/portcullis.toml")),
        Some(Default::default()),
    )
    .expect("deploy/portcullis.toml loads")
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn sni(addr: &str, port: u16, original_dst: bool) -> SniListen {
    SniListen {
        addr: addr.parse().unwrap(),
        port,
        original_dst,
    }
}

/// The example config and variants that exercise every branch of the generator.
fn variants() -> Vec<(&'static str, Config)> {
    let example = example_config();
    let mut out = vec![
        ("deploy/portcullis.toml", example.clone()),
        (
            "built-in default",
            Config::load_from(None, Some(Default::default())).unwrap(),
        ),
    ];

    let mut dual = example.clone();
    dual.proxy_listen = vec!["[::]:3128".parse().unwrap()];
    dual.admin_listen = Some("[2001:db8:20::5]:9128".parse().unwrap());
    dual.clients_allow.extend([
        net("2001:db8:100::/48"),
        // Overlapping ranges must not break an interval set.
        net("2001:db8:100:7::/64"),
        net("10.1.0.0/16"),
    ]);
    dual.sni_listen = vec![sni("[::]:8443", 443, true)];
    dual.inbound[0]
        .sources
        .push("2001:db8:ffff::1/128".parse().unwrap());
    out.push(("dual-stack [::] listeners, IPv6 clients", dual));

    let mut bound = example.clone();
    bound.sni_listen = vec![
        sni("192.0.2.7:8443", 443, false),
        sni("[2001:db8::7]:8443", 443, true),
        sni("127.0.0.1:8444", 443, true),
    ];
    bound.inbound.push(Inbound {
        name: "second-inbound-with-a-rather-long-name".into(),
        listen: "[2001:db8::9]:9444".parse().unwrap(),
        forward: "[2001:db8::10]:443".into(),
        sources: vec!["2001:db8:abcd::/48".parse().unwrap()],
    });
    out.push(("address-bound SNI listeners (dnat), two inbounds", bound));

    let mut plain = example.clone();
    plain.sni_listen.clear();
    plain.inbound.clear();
    plain.admin_listen = None;
    out.push(("no SNI, no inbound, no admin", plain));

    let mut nobody = example;
    nobody.clients_allow.clear();
    nobody.sni_listen = vec![sni("0.0.0.0:8443", 8443, false)];
    out.push((
        "empty clients.allow, SNI that cannot take a redirect",
        nobody,
    ));
    out
}

#[test]
fn example_config_output_of_the_cli_passes_the_real_tools_in_check_mode() {
    let Some((nft, ipt, ip6t)) = check_tools() else {
        return;
    };
    for (format, name) in [
        (Format::Nftables, "nftables"),
        (Format::Iptables, "iptables"),
        (Format::Ip6tables, "ip6tables"),
    ] {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .arg("-c")
                .arg(manifest_dir().join("deploy/portcullis.toml"))
                .args(["firewall", "--format", name]),
            None,
        );
        assert_ok(&format!("portcullis firewall --format {name}"), &out, "");
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        assert_eq!(text, render(&example_config(), format));
        check(format, &text, &nft, &ipt, &ip6t);
    }
}

#[test]
fn every_variant_passes_the_real_tools_in_check_mode() {
    let Some((nft, ipt, ip6t)) = check_tools() else {
        return;
    };
    for (name, config) in variants() {
        for format in FORMATS {
            eprintln!("checking {name} as {format:?}");
            check(format, &render(&config, format), &nft, &ipt, &ip6t);
        }
    }
}

#[test]
fn deploy_transparent_snippets_pass_the_real_tools_in_check_mode() {
    let Some((nft, ipt, ip6t)) = check_tools() else {
        return;
    };
    let dir = manifest_dir().join("deploy/firewall");
    let nft_text = std::fs::read_to_string(dir.join("nftables-transparent.nft")).unwrap();
    assert!(
        nft_text.contains("meta skuid != $PROXY_UIDS"),
        "loop prevention"
    );
    check(Format::Nftables, &nft_text, &nft, &ipt, &ip6t);
    let ipt_text = std::fs::read_to_string(dir.join("iptables-transparent.rules")).unwrap();
    assert!(
        ipt_text.contains("-m owner ! --uid-owner"),
        "loop prevention"
    );
    check(Format::Iptables, &ipt_text, &nft, &ipt, &ip6t);
}

/// Runs `script` with `sh` in a new, private network namespace (loopback only).
fn in_netns(unshare: &Path, script: &str) -> Output {
    run(
        Command::new(unshare)
            .args(["--net", "--", "sh", "-ec"])
            .arg(script),
        None,
    )
}

fn netns_tools() -> Option<Vec<PathBuf>> {
    let t = tools(&[
        "unshare",
        "ip",
        "nft",
        "iptables-restore",
        "ip6tables-restore",
        "python3",
    ])?;
    let probe = in_netns(&t[0], "true");
    if !probe.status.success() {
        unavailable(&format!(
            "cannot create a network namespace: {}",
            String::from_utf8_lossy(&probe.stderr)
        ));
        return None;
    }
    Some(t)
}

#[test]
fn rulesets_load_for_real_and_reload_cleanly_in_a_private_netns() {
    let Some(t) = netns_tools() else { return };
    let scratch = Scratch::new("firewall");
    for (name, config) in variants() {
        let nft_file = scratch.write("r.nft", &render(&config, Format::Nftables));
        let v4_file = scratch.write("r.v4", &render(&config, Format::Iptables));
        let v6_file = scratch.write("r.v6", &render(&config, Format::Ip6tables));
        // Loading twice shows that a reload replaces rather than duplicates.
        let script = format!(
            "{nft} -f {n}; {nft} -f {n}; {nft} list table inet portcullis >/dev/null\n\
             {ipt} < {v4}; {ipt} < {v4}; {ip6t} < {v6}; {ip6t} < {v6}",
            nft = t[2].display(),
            ipt = t[3].display(),
            ip6t = t[4].display(),
            n = nft_file.display(),
            v4 = v4_file.display(),
            v6 = v6_file.display(),
        );
        let out = in_netns(&t[0], &script);
        assert_ok(&format!("loading {name}"), &out, &script);
    }
    let dir = manifest_dir().join("deploy/firewall");
    let script = format!(
        "{nft} -f {a}; {nft} -f {a}; {ipt} < {b}; {ipt} < {b}",
        nft = t[2].display(),
        ipt = t[3].display(),
        a = dir.join("nftables-transparent.nft").display(),
        b = dir.join("iptables-transparent.rules").display(),
    );
    let out = in_netns(&t[0], &script);
    assert_ok("loading the deploy/firewall snippets", &out, &script);
}

/// Listens on the given ports of 127.0.0.1, then connects to each `(source,
/// port)` from that source address and prints `source port open|dropped|refused`.
const PROBE_PY: &str = r#"
import socket, sys
ports, probes = sys.argv[1].split(","), sys.argv[2:]
servers = []
for p in ports:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(p)))
    s.listen(16)
    servers.append(s)
for pr in probes:
    src, port = pr.split(":")
    c = socket.socket()
    c.settimeout(1.0)
    c.bind((src, 0))
    try:
        c.connect(("127.0.0.1", int(port)))
        r = "open"
    except socket.timeout:
        r = "dropped"
    except ConnectionRefusedError:
        r = "refused"
    finally:
        c.close()
    print(src, port, r, flush=True)
"#;

/// A config whose guards can be probed on loopback: clients are 127.0.0.2,
/// the inbound's only source is 127.0.0.4.
fn loopback_config() -> Config {
    let mut c = Config::load_from(None, Some(Default::default())).unwrap();
    c.proxy_listen = vec!["127.0.0.1:3128".parse().unwrap()];
    c.admin_listen = Some("0.0.0.0:9128".parse().unwrap());
    c.sni_listen = vec![sni("127.0.0.1:8443", 443, true)];
    c.clients_allow = vec!["127.0.0.2/32".parse().unwrap()];
    c.inbound = vec![Inbound {
        name: "ticket-api".into(),
        listen: "127.0.0.1:9443".parse::<SocketAddr>().unwrap(),
        forward: "127.0.0.1:1".into(),
        sources: vec!["127.0.0.4/32".parse().unwrap()],
    }];
    c
}

#[test]
fn loaded_rules_open_each_listener_only_to_its_sources() {
    let Some(t) = netns_tools() else { return };
    let scratch = Scratch::new("firewall");
    let py = scratch.write("probe.py", PROBE_PY);
    let config = loopback_config();
    let expected = [
        ("127.0.0.2", 3128, "open"),
        ("127.0.0.3", 3128, "dropped"),
        ("127.0.0.4", 3128, "dropped"),
        ("127.0.0.2", 8443, "open"),
        ("127.0.0.3", 8443, "dropped"),
        ("127.0.0.2", 9128, "open"),
        ("127.0.0.3", 9128, "dropped"),
        ("127.0.0.4", 9443, "open"),
        ("127.0.0.2", 9443, "dropped"),
        // A port portcullis does not listen on is not touched.
        ("127.0.0.3", 5000, "open"),
    ];
    let probes: Vec<String> = expected
        .iter()
        .map(|(s, p, _)| format!("{s}:{p}"))
        .collect();
    let want: String = expected
        .iter()
        .map(|(s, p, r)| format!("{s} {p} {r}\n"))
        .collect();
    let ip = t[1].display();
    for (format, load) in [
        (Format::Nftables, format!("{} -f", t[2].display())),
        (Format::Iptables, format!("{} <", t[3].display())),
    ] {
        let rules = scratch.write("rules", &render(&config, format));
        let script = format!(
            "{ip} link set lo up\n{load} {rules}\n{py3} {py} 3128,8443,9128,9443,5000 {probes}",
            rules = rules.display(),
            py3 = t[5].display(),
            py = py.display(),
            probes = probes.join(" "),
        );
        let out = in_netns(&t[0], &script);
        assert_ok(&format!("probing {format:?} rules"), &out, &script);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "{format:?} rules"
        );
    }
}
