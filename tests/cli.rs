//! The offline commands of the real binary (SPEC "Command line"): `check`,
//! `explain`, `pac`, their output and exit codes. (`run` and the process
//! lifecycle are covered elsewhere.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Runs the binary with `args`, without any `PORTCULLIS__*` override from
/// the environment of the test run.
fn portcullis(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("PORTCULLIS")
        {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("running the portcullis binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit={:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const RULE_NAMES: [&str; 4] = [
    "getconf",
    "diagnostics-upload",
    "techconnect-slot",
    "techconnect-session",
];

#[test]
fn check_on_the_built_in_default_prints_the_four_rules_and_exits_0() {
    let o = portcullis(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    for name in RULE_NAMES {
        assert!(out.contains(name), "rule {name} listed:\n{}", show(&o));
    }
    assert!(out.contains("2001-2500"), "ports shown:\n{out}");
}

#[test]
fn check_on_a_valid_config_file_with_its_own_policy_exits_0() {
    let dir = TempDir::new();
    dir.write(
        "mine.toml",
        "[[rule]]\nname = \"only-one\"\nhosts = [\"a.example\"]\nports = [443]\n",
    );
    let cfg = dir.write(
        "portcullis.toml",
        "policy = \"mine.toml\"\n[proxy]\nlisten = [\"127.0.0.1:0\"]\n",
    );
    let o = portcullis(&["-c", cfg.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("only-one"), "{}", show(&o));
    assert!(
        !stdout(&o).contains("getconf"),
        "the named policy, not the built-in one:\n{}",
        show(&o)
    );
}

#[test]
fn check_on_a_bad_policy_file_exits_1_naming_file_and_line() {
    let dir = TempDir::new();
    dir.write(
        "bad.toml",
        "# a policy with a bad port\n[[rule]]\nname = \"broken\"\nhosts = [\"a.example\"]\nports = [\"99999\"]\n",
    );
    let cfg = dir.write("portcullis.toml", "policy = \"bad.toml\"\n");
    let o = portcullis(&["-c", cfg.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("bad.toml"), "names the file:\n{}", show(&o));
    assert!(
        err.contains("bad.toml:5") || err.contains("line 5"),
        "names the line (5):\n{}",
        show(&o)
    );
}

#[test]
fn check_on_a_policy_with_an_unknown_key_exits_1() {
    let dir = TempDir::new();
    dir.write(
        "bad.toml",
        "[[rule]]\nname = \"typo\"\nhots = [\"a.example\"]\nports = [443]\n",
    );
    let cfg = dir.write("portcullis.toml", "policy = \"bad.toml\"\n");
    let o = portcullis(&["-c", cfg.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("bad.toml"), "names the file:\n{}", show(&o));
    assert!(err.contains("hots"), "names the unknown key:\n{}", show(&o));
    assert!(
        err.contains("bad.toml:3") || err.contains("line 3"),
        "names the line (3):\n{}",
        show(&o)
    );
}

#[test]
fn check_on_a_config_with_an_unknown_key_exits_1() {
    let dir = TempDir::new();
    let cfg = dir.write(
        "portcullis.toml",
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n\n[limits]\nmax_conections = 5\n",
    );
    let o = portcullis(&["-c", cfg.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("max_conections"),
        "names the key:\n{}",
        show(&o)
    );
    assert!(
        err.contains("portcullis.toml"),
        "names the file:\n{}",
        show(&o)
    );
    assert!(
        err.contains(":5") || err.contains("line 5"),
        "names the line (5):\n{}",
        show(&o)
    );
}

#[test]
fn check_on_a_missing_policy_file_exits_1() {
    let dir = TempDir::new();
    let cfg = dir.write("portcullis.toml", "policy = \"absent.toml\"\n");
    let o = portcullis(&["-c", cfg.to_str().unwrap(), "check"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("absent.toml"), "{}", show(&o));
}

#[test]
fn explain_allowed_destination_prints_allow_rule_and_exits_0() {
    let o = portcullis(&["explain", "connect.helpdeskbuttons.com:2001"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o).trim(), "ALLOW techconnect-session");
    let o = portcullis(&["explain", "connect.helpdeskbuttons.com:443"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o).trim(), "ALLOW techconnect-slot");
    let o = portcullis(&["explain", "CONNECT.HelpDeskButtons.com.:2500"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(stdout(&o).trim(), "ALLOW techconnect-session");
}

#[test]
fn explain_denied_destination_prints_deny_and_exits_1() {
    for dest in [
        "example.com:443",
        "connect.helpdeskbuttons.com:2000",
        "connect.helpdeskbuttons.com:2501",
        "evil-apc-button.s3.amazonaws.com:443",
        "1.2.3.4:443",
    ] {
        let o = portcullis(&["explain", dest]);
        assert_eq!(o.status.code(), Some(1), "{dest}: {}", show(&o));
        let out = stdout(&o);
        assert!(out.starts_with("DENY "), "{dest}: {}", show(&o));
        assert_eq!(out.lines().count(), 1, "{dest}: one line: {}", show(&o));
    }
}

#[test]
fn explain_usage_errors_exit_2() {
    for args in [
        &["explain", "notaport"][..],
        &["explain", "host:0"][..],
        &["explain"][..],
    ] {
        let o = portcullis(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        assert!(
            stdout(&o).is_empty() || !stdout(&o).starts_with("ALLOW"),
            "{args:?}: {}",
            show(&o)
        );
    }
}

#[test]
fn explain_uses_the_configured_policy() {
    let dir = TempDir::new();
    dir.write(
        "p.toml",
        "[[rule]]\nname = \"wild\"\nhosts = [\"*.example.org\"]\nports = [\"8000-8010\"]\n",
    );
    let cfg = dir.write("c.toml", "policy = \"p.toml\"\n");
    let c = cfg.to_str().unwrap();
    let o = portcullis(&["-c", c, "explain", "a.example.org:8005"]);
    assert_eq!(
        (o.status.code(), stdout(&o).trim().to_owned()),
        (Some(0), "ALLOW wild".to_owned()),
        "{}",
        show(&o)
    );
    let o = portcullis(&["-c", c, "explain", "example.org:8005"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the apex is not covered by *.: {}",
        show(&o)
    );
    let o = portcullis(&["-c", c, "explain", "connect.helpdeskbuttons.com:2001"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the built-in policy is not used: {}",
        show(&o)
    );
    let _ = dir.path();
}

#[test]
fn pac_prints_a_pac_file_and_exits_0() {
    let o = portcullis(&["pac"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("FindProxyForURL"), "{out}");
    assert!(
        out.contains("127.0.0.1:3128"),
        "names the default proxy: {out}"
    );
    assert!(
        out.contains("connect.helpdeskbuttons.com"),
        "allowlist mode lists policy hosts: {out}"
    );
    assert!(out.contains("DIRECT"), "{out}");
}
