//! The PAC file, evaluated by a real JavaScript engine (node) with the
//! standard PAC helper functions defined: policy hosts go to `pac.proxy` in
//! order, everything else DIRECT in allowlist mode, everything proxied in
//! all mode; wildcards match subdomains only; nothing resolves names; text
//! from the config and policy cannot break out of its string literals.
//!
//! Without node on PATH these tests print a notice and pass, except under
//! `CI=true`, where node is part of the machine image and its absence fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis::config::PacMode;
use portcullis::pac::{render, CONTENT_TYPE};
use portcullis::policy::Policy;

const LIMIT: Duration = Duration::from_secs(20);

/// The standard PAC environment (Netscape's helper functions, as browsers
/// define them), with every DNS-dependent helper made to throw: a PAC that
/// calls one fails the test. Prints `FindProxyForURL(url, host)` for every
/// case as a JSON array.
const NODE_SCRIPT: &str = r#"
const fs = require('fs');
const vm = require('vm');
const [pacPath, casesPath] = process.argv.slice(1);
const forbidden = (name) => function () {
  throw new Error(name + '() called: the PAC must not resolve names');
};
const env = {
  isPlainHostName: (host) => host.indexOf('.') == -1,
  dnsDomainIs: (host, domain) =>
    host.length >= domain.length &&
    host.substring(host.length - domain.length) == domain,
  localHostOrDomainIs: (host, hostdom) =>
    host == hostdom || hostdom.lastIndexOf(host + '.', 0) == 0,
  dnsDomainLevels: (host) => host.split('.').length - 1,
  shExpMatch: (str, shexp) => {
    const re = shexp
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.');
    return new RegExp('^' + re + '$').test(str);
  },
  weekdayRange: () => false,
  dateRange: () => false,
  timeRange: () => false,
  alert: () => {},
  isResolvable: forbidden('isResolvable'),
  isResolvableEx: forbidden('isResolvableEx'),
  dnsResolve: forbidden('dnsResolve'),
  dnsResolveEx: forbidden('dnsResolveEx'),
  isInNet: forbidden('isInNet'),
  isInNetEx: forbidden('isInNetEx'),
  myIpAddress: forbidden('myIpAddress'),
  myIpAddressEx: forbidden('myIpAddressEx'),
};
vm.createContext(env);
vm.runInContext(fs.readFileSync(pacPath, 'utf8'), env, { filename: 'proxy.pac', timeout: 5000 });
if (typeof env.FindProxyForURL !== 'function') throw new Error('no FindProxyForURL');
const cases = JSON.parse(fs.readFileSync(casesPath, 'utf8'));
const out = cases.map(([url, host]) => {
  const r = env.FindProxyForURL(url, host);
  if (typeof r !== 'string') throw new Error('non-string result for ' + host);
  return r;
});
process.stdout.write(JSON.stringify(out));
"#;

/// A scratch directory under the target dir, removed on drop (also when a
/// test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "pac-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `cmd` (stdout and stderr to files, so no pipe can fill) within LIMIT.
fn run(cmd: &mut Command, dir: &Path) -> (ExitStatus, String, String) {
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status =
        wait_child(&mut child, LIMIT).unwrap_or_else(|| panic!("{cmd:?} ran over {LIMIT:?}"));
    let read = |p: &Path| {
        let mut s = String::new();
        std::fs::File::open(p)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    (status, read(&out_path), read(&err_path))
}

/// `FindProxyForURL` of `pac` for each host (URL `https://host/`), by node.
/// `None` when node is not installed (outside CI).
fn eval_pac(pac: &str, hosts: &[&str]) -> Option<Vec<String>> {
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node is not installed, and CI=true requires it"
        );
        eprintln!("node not on PATH: skipping the JavaScript evaluation of the PAC");
        return None;
    }
    let dir = Scratch::new("eval");
    let pac_path = dir.join("proxy.pac");
    std::fs::write(&pac_path, pac).unwrap();
    let cases: Vec<(String, &str)> = hosts
        .iter()
        .map(|h| (format!("https://{h}/"), *h))
        .collect();
    let cases_path = dir.join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&cases).unwrap()).unwrap();
    let (status, out, err) = run(
        Command::new("node")
            .arg("-e")
            .arg(NODE_SCRIPT)
            .arg(&pac_path)
            .arg(&cases_path),
        &dir.0,
    );
    assert!(
        status.success(),
        "node failed ({status}): {err}\n--- PAC ---\n{pac}"
    );
    let results: Vec<String> = serde_json::from_str(&out).unwrap();
    assert_eq!(results.len(), hosts.len());
    Some(results)
}

/// Asserts each host's route, printing the whole table on failure.
fn assert_routes(pac: &str, want: &[(&str, &str)]) {
    let hosts: Vec<&str> = want.iter().map(|(h, _)| *h).collect();
    let Some(got) = eval_pac(pac, &hosts) else {
        return;
    };
    let wrong: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|((_, w), g)| *w != g.as_str())
        .map(|((h, w), g)| format!("{h}: want {w:?}, got {g:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}\n--- PAC ---\n{pac}", wrong.join("\n"));
}

fn proxies(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const AB: &str = "PROXY a:3128; PROXY b:3128";

/// The seed policy's hosts (SPEC's table).
const SEED_HOSTS: &[&str] = &[
    "cfjex255ag.execute-api.us-east-1.amazonaws.com",
    "apc-button.s3.amazonaws.com",
    "connect.helpdeskbuttons.com",
];

/// Hosts that are not in the seed policy, including near misses.
const OTHER_HOSTS: &[&str] = &[
    "example.com",
    "www.google.com",
    "helpdeskbuttons.com",
    "sub.connect.helpdeskbuttons.com",
    "connect.helpdeskbuttons.com.evil.example",
    "xconnect.helpdeskbuttons.com",
    "s3.amazonaws.com",
    "amazonaws.com",
    "intranet",
    "localhost",
    "10.1.2.3",
];

#[test]
fn seed_hosts_go_to_the_proxies_in_order_and_the_rest_direct() {
    let policy = Policy::builtin();
    let mut from_policy: Vec<&str> = policy
        .rules()
        .iter()
        .flat_map(|r| r.hosts.iter().map(String::as_str))
        .collect();
    from_policy.sort_unstable();
    from_policy.dedup();
    let mut seed = SEED_HOSTS.to_vec();
    seed.sort_unstable();
    assert_eq!(from_policy, seed, "the seed policy names SPEC's hosts");

    let pac = render(&policy, &proxies(&["a:3128", "b:3128"]), PacMode::Allowlist);
    let mut want: Vec<(String, &str)> = Vec::new();
    for h in SEED_HOSTS {
        want.push((h.to_string(), AB));
        want.push((h.to_uppercase(), AB));
        want.push((format!("{h}."), AB));
    }
    for h in OTHER_HOSTS {
        want.push((h.to_string(), "DIRECT"));
    }
    let want: Vec<(&str, &str)> = want.iter().map(|(h, r)| (h.as_str(), *r)).collect();
    assert_routes(&pac, &want);

    // The order of pac.proxy is the failover order.
    let pac = render(&policy, &proxies(&["b:3128", "a:3128"]), PacMode::Allowlist);
    assert_routes(
        &pac,
        &[
            ("connect.helpdeskbuttons.com", "PROXY b:3128; PROXY a:3128"),
            ("example.com", "DIRECT"),
        ],
    );
}

#[test]
fn all_mode_sends_everything_to_the_proxies() {
    let pac = render(
        &Policy::builtin(),
        &proxies(&["a:3128", "b:3128"]),
        PacMode::All,
    );
    let want: Vec<(&str, &str)> = SEED_HOSTS
        .iter()
        .chain(OTHER_HOSTS)
        .map(|h| (*h, AB))
        .collect();
    assert_routes(&pac, &want);
}

#[test]
fn wildcard_matches_subdomains_not_the_apex_and_exact_names_match_exactly() {
    let policy = Policy::from_toml_str(
        "[[rule]]\nname = \"wild\"\nhosts = [\"*.example.com\"]\nports = [443]\n\n\
         [[rule]]\nname = \"exact\"\nhosts = [\"api.other.test\", \"Mixed.Case.Test\"]\nports = [443]\n",
        "wild.toml",
    )
    .expect("policy");
    let pac = render(&policy, &proxies(&["a:3128", "b:3128"]), PacMode::Allowlist);
    assert!(
        pac.contains("dnsDomainIs(host, \".example.com\")"),
        "wildcards use dnsDomainIs with a leading dot:\n{pac}"
    );
    assert!(
        pac.contains("host == \"api.other.test\""),
        "exact names use ==:\n{pac}"
    );
    assert!(
        pac.contains("host == \"mixed.case.test\"") && !pac.contains("Mixed"),
        "host names are lower-cased:\n{pac}"
    );
    assert_routes(
        &pac,
        &[
            ("a.example.com", AB),
            ("x.y.example.com", AB),
            ("A.EXAMPLE.COM", AB),
            ("a.example.com.", AB),
            ("example.com", "DIRECT"),
            ("example.com.", "DIRECT"),
            ("badexample.com", "DIRECT"),
            ("aexample.com", "DIRECT"),
            ("example.com.evil.test", "DIRECT"),
            ("api.other.test", AB),
            ("API.Other.Test", AB),
            ("mixed.case.test", AB),
            ("other.test", "DIRECT"),
            ("x.api.other.test", "DIRECT"),
            ("api.other.test.evil", "DIRECT"),
        ],
    );
}

#[test]
fn idn_hosts_appear_as_a_labels() {
    let policy = Policy::from_toml_str(
        "[[rule]]\nname = \"idn\"\nhosts = [\"bücher.example\", \"*.münchen.test\"]\nports = [443]\n",
        "idn.toml",
    )
    .expect("policy");
    let pac = render(&policy, &proxies(&["a:3128", "b:3128"]), PacMode::Allowlist);
    assert!(pac.is_ascii(), "{pac}");
    assert!(pac.contains("\"xn--bcher-kva.example\""), "{pac}");
    assert_routes(
        &pac,
        &[
            ("xn--bcher-kva.example", AB),
            ("shop.xn--mnchen-3ya.test", AB),
            ("xn--mnchen-3ya.test", "DIRECT"),
            ("bucher.example", "DIRECT"),
        ],
    );
}

#[test]
fn configured_text_cannot_escape_its_string_literal() {
    // pac.proxy values are operator text; whatever they hold, the PAC must
    // stay one function returning exactly that text.
    let hostile = "evil\";return \"DIRECT\";//:3128";
    let script = "x</script><script>alert(1)</script>:1";
    let separators = "p\u{2028}q\u{2029}r\\'s:3128";
    let list = proxies(&[hostile, script, separators]);
    let route = format!("PROXY {hostile}; PROXY {script}; PROXY {separators}");
    for mode in [PacMode::Allowlist, PacMode::All] {
        let pac = render(&Policy::builtin(), &list, mode);
        assert!(!pac.contains("</script"), "{pac}");
        assert!(pac.is_ascii(), "{pac}");
        assert_eq!(
            pac.matches("return").count(),
            pac.matches("return ").count()
        );
        let other = if mode == PacMode::All {
            route.as_str()
        } else {
            "DIRECT"
        };
        assert_routes(
            &pac,
            &[
                ("connect.helpdeskbuttons.com", route.as_str()),
                ("example.com", other),
            ],
        );
    }
}

#[test]
fn the_pac_never_resolves_names_and_ends_with_a_default() {
    let policy = Policy::from_toml_str(
        "[[rule]]\nname = \"w\"\nhosts = [\"*.a.test\", \"b.test\"]\nports = [443]\n",
        "p.toml",
    )
    .unwrap();
    for mode in [PacMode::Allowlist, PacMode::All] {
        let pac = render(&policy, &proxies(&["a:3128"]), mode);
        for f in ["dnsResolve", "isResolvable", "isInNet", "myIpAddress"] {
            assert!(!pac.contains(f), "{f} in\n{pac}");
        }
        let body: Vec<&str> = pac.trim_end().lines().collect();
        assert_eq!(body.last(), Some(&"}"));
        assert!(
            body[body.len() - 2].trim_start().starts_with("return "),
            "the last statement is an unconditional return:\n{pac}"
        );
    }
    // An empty policy proxies nothing in allowlist mode.
    let empty = Policy::from_toml_str("", "empty.toml").unwrap();
    let pac = render(&empty, &proxies(&["a:3128"]), PacMode::Allowlist);
    assert_routes(
        &pac,
        &[
            ("connect.helpdeskbuttons.com", "DIRECT"),
            ("a.test", "DIRECT"),
        ],
    );
}

#[test]
fn content_type_is_the_pac_mime_type() {
    assert_eq!(CONTENT_TYPE, "application/x-ns-proxy-autoconfig");
}

/// `portcullis pac` prints exactly what `pac::render` gives for the
/// configured policy, proxies and mode (the admin listener serves the same
/// text; `tests/admin.rs` compares the two).
#[test]
fn cli_pac_prints_the_rendered_pac() {
    let dir = Scratch::new("cli");
    let policy_path = dir.join("policy.toml");
    let policy_text =
        "[[rule]]\nname = \"w\"\nhosts = [\"*.corp.test\", \"api.vendor.test\"]\nports = [443]\n";
    std::fs::write(&policy_path, policy_text).unwrap();
    let policy = Policy::from_toml_str(policy_text, "policy.toml").unwrap();
    for (mode_text, mode) in [("allowlist", PacMode::Allowlist), ("all", PacMode::All)] {
        let cfg = dir.join(format!("{mode_text}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "policy = {policy_path:?}\n[pac]\nproxy = [\"gw1.corp.test:3128\", \"gw2.corp.test:3128\"]\nmode = \"{mode_text}\"\n"
            ),
        )
        .unwrap();
        let (status, out, err) = run(
            Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["-c", cfg.to_str().unwrap(), "pac"])
                .env_remove("PORTCULLIS__PAC__PROXY")
                .env_remove("PORTCULLIS__PAC__MODE"),
            &dir.0,
        );
        assert!(status.success(), "portcullis pac: {status} {err}");
        let want = render(
            &policy,
            &proxies(&["gw1.corp.test:3128", "gw2.corp.test:3128"]),
            mode,
        );
        assert_eq!(out, want);
        let gw = "PROXY gw1.corp.test:3128; PROXY gw2.corp.test:3128";
        let other = if mode == PacMode::All { gw } else { "DIRECT" };
        assert_routes(
            &out,
            &[
                ("host.corp.test", gw),
                ("api.vendor.test", gw),
                ("corp.test", other),
                ("example.com", other),
            ],
        );
    }
}
