//! The compiled policy: which `host:port` destinations a tunnel may reach, and
//! a pure, synchronous [`Policy::decide`] over normalised targets (no DNS, no
//! I/O, no locks).
//!
//! - `file.rs` owns the policy file format (`policy/*.toml`): strict parsing
//!   and validation into [`Rule`]s, every problem reported with file and line.
//! - `matcher.rs` compiles the rules into hash-map lookups whose cost depends
//!   on the number of labels in the host name, not on the number of rules.
//!
//! A [`Policy`] is immutable once built; reload builds a new one and swaps it.

mod file;
mod matcher;

use std::fmt;
use std::path::Path;

pub use file::{PolicyError, PolicyProblem};

use crate::target::{Host, Target};
use matcher::{Lookup, Matcher};

/// The text of the seed policy (`policy/helpdeskbuttons.toml`), built in.
pub const BUILTIN_POLICY_TOML: &str = include_str!("../../policy/helpdeskbuttons.toml");

/// The origin name used in messages about the built-in seed policy.
pub const BUILTIN_POLICY_ORIGIN: &str = "policy/helpdeskbuttons.toml (built in)";

/// What the client must send first inside an allowed tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// A ClientHello whose SNI equals the destination host.
    Required,
    /// If it is a ClientHello, its SNI must equal the host; other bytes pass.
    Optional,
    /// No inspection.
    Any,
}

impl TlsMode {
    /// The policy-file spelling: `"required"`, `"optional"` or `"any"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Required => "required",
            TlsMode::Optional => "optional",
            TlsMode::Any => "any",
        }
    }

    /// Parses the policy-file spelling (exact, lower case); `None` otherwise.
    pub fn from_name(name: &str) -> Option<TlsMode> {
        match name {
            "required" => Some(TlsMode::Required),
            "optional" => Some(TlsMode::Optional),
            "any" => Some(TlsMode::Any),
            _ => None,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique name (`[a-z0-9-]`), used in logs and metric labels.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Normalised host patterns as written (`a.example`, `*.example`).
    pub hosts: Vec<String>,
    /// Inclusive port ranges, sorted.
    pub ports: Vec<(u16, u16)>,
    /// First-bytes check.
    pub tls: TlsMode,
}

impl Rule {
    /// The rule's ports as written in a policy file: `443,2001-2500`.
    pub fn ports_text(&self) -> String {
        render_ports(&self.ports)
    }
}

/// Renders inclusive port ranges as `443` / `2001-2500`, joined by `,`.
pub fn render_ports(ports: &[(u16, u16)]) -> String {
    let parts: Vec<String> = ports
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    parts.join(",")
}

/// Why `decide` refused a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule names this host.
    HostNotAllowed,
    /// Rules name this host, but not on this port.
    PortNotAllowed,
    /// An IP literal never matches a host rule.
    IpLiteral,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::HostNotAllowed => "host not in policy",
            DenyReason::PortNotAllowed => "port not allowed for host",
            DenyReason::IpLiteral => "IP literal destinations are not allowed",
        })
    }
}

/// The verdict for one destination.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    /// Allowed by this rule.
    Allow(&'a Rule),
    /// Refused.
    Deny(DenyReason),
}

impl<'a> Decision<'a> {
    /// The allowing rule, if the destination is allowed.
    pub fn rule(&self) -> Option<&'a Rule> {
        match self {
            Decision::Allow(rule) => Some(rule),
            Decision::Deny(_) => None,
        }
    }

    /// Whether the destination is allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// A loaded, validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    matcher: Matcher,
    origin: String,
}

impl Policy {
    /// Parses and validates policy TOML; `origin` names the file in messages.
    ///
    /// An empty document is a valid policy that denies everything.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let rules = file::parse_rules(text, origin)?;
        let matcher = Matcher::build(&rules);
        Ok(Policy {
            rules,
            matcher,
            origin: origin.to_string(),
        })
    }

    /// Reads, parses and validates a policy file.
    ///
    /// An unreadable file is reported as a problem without a line number.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::single(PolicyProblem {
                file: origin.clone(),
                line: None,
                message: format!("cannot read policy file: {e}"),
            })
        })?;
        Policy::from_toml_str(&text, &origin)
    }

    /// The seed policy (`policy/helpdeskbuttons.toml`), compiled in.
    pub fn builtin() -> Policy {
        // The text is a compile-time constant and `builtin_policy_compiles`
        // checks it, so this cannot fail at run time.
        Policy::from_toml_str(BUILTIN_POLICY_TOML, BUILTIN_POLICY_ORIGIN)
            .expect("the built-in seed policy is valid")
    }

    /// Decides a destination (no I/O).
    ///
    /// An exact host entry is tried first, then `*.` wildcard entries from the
    /// longest suffix to the shortest; the first that covers the port wins,
    /// and among rules naming the same host pattern the first in file order.
    pub fn decide(&self, target: &Target) -> Decision<'_> {
        let name = match &target.host {
            Host::Ip(_) => return Decision::Deny(DenyReason::IpLiteral),
            Host::Name(name) => name,
        };
        match self.matcher.lookup(name, target.port) {
            Lookup::Allow(index) => match self.rules.get(index) {
                Some(rule) => Decision::Allow(rule),
                // Unreachable: the matcher is built from these rules.
                None => Decision::Deny(DenyReason::HostNotAllowed),
            },
            Lookup::PortNotAllowed => Decision::Deny(DenyReason::PortNotAllowed),
            Lookup::HostNotAllowed => Decision::Deny(DenyReason::HostNotAllowed),
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules (and so denies everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Where the policy came from (a file path, or the built-in marker).
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::normalize_host;

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: normalize_host(host).expect("test host normalises"),
            port,
        }
    }

    /// Expected verdict: `Ok(rule name)` or `Err(reason)`.
    fn verdict(policy: &Policy, host: &str, port: u16) -> Result<String, DenyReason> {
        match policy.decide(&target(host, port)) {
            Decision::Allow(rule) => Ok(rule.name.clone()),
            Decision::Deny(reason) => Err(reason),
        }
    }

    fn check_table(policy: &Policy, table: &[(&str, u16, Result<&str, DenyReason>)]) {
        for &(host, port, ref want) in table {
            let want = want.map(str::to_string);
            assert_eq!(verdict(policy, host, port), want, "{host}:{port}");
        }
    }

    #[test]
    fn builtin_policy_compiles() {
        let policy = Policy::builtin();
        let names: Vec<&str> = policy.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "getconf",
                "diagnostics-upload",
                "techconnect-slot",
                "techconnect-session"
            ]
        );
        let summary: Vec<(String, String)> = policy
            .rules()
            .iter()
            .map(|r| (r.ports_text(), r.tls.to_string()))
            .collect();
        let want = [
            ("443", "required"),
            ("443", "required"),
            ("443", "required"),
            ("2001-2500", "optional"),
        ];
        for (got, want) in summary.iter().zip(want) {
            assert_eq!((got.0.as_str(), got.1.as_str()), want);
        }
        assert_eq!(policy.len(), 4);
        assert!(!policy.is_empty());
        assert_eq!(policy.origin(), BUILTIN_POLICY_ORIGIN);
    }

    #[test]
    fn seed_policy_decisions() {
        use DenyReason::*;
        let policy = Policy::builtin();
        let table: &[(&str, u16, Result<&str, DenyReason>)] = &[
            ("connect.helpdeskbuttons.com", 443, Ok("techconnect-slot")),
            ("connect.helpdeskbuttons.com", 2000, Err(PortNotAllowed)),
            (
                "connect.helpdeskbuttons.com",
                2001,
                Ok("techconnect-session"),
            ),
            (
                "connect.helpdeskbuttons.com",
                2500,
                Ok("techconnect-session"),
            ),
            ("connect.helpdeskbuttons.com", 2501, Err(PortNotAllowed)),
            ("connect.helpdeskbuttons.com", 80, Err(PortNotAllowed)),
            (
                "Connect.HelpDeskButtons.COM.",
                2222,
                Ok("techconnect-session"),
            ),
            ("apc-button.s3.amazonaws.com", 443, Ok("diagnostics-upload")),
            ("apc-button.s3.amazonaws.com", 2001, Err(PortNotAllowed)),
            (
                "cfjex255ag.execute-api.us-east-1.amazonaws.com",
                443,
                Ok("getconf"),
            ),
            ("evil-apc-button.s3.amazonaws.com", 443, Err(HostNotAllowed)),
            (
                "apc-button.s3.amazonaws.com.evil.test",
                443,
                Err(HostNotAllowed),
            ),
            ("s3.amazonaws.com", 443, Err(HostNotAllowed)),
            ("amazonaws.com", 443, Err(HostNotAllowed)),
            ("x.connect.helpdeskbuttons.com", 443, Err(HostNotAllowed)),
            ("helpdeskbuttons.com", 443, Err(HostNotAllowed)),
            ("174.129.157.90", 443, Err(IpLiteral)),
            ("::1", 443, Err(IpLiteral)),
        ];
        check_table(&policy, table);
    }

    #[test]
    fn wildcard_subdomain_not_apex() {
        use DenyReason::*;
        let text = r#"
[[rule]]
name = "wild"
hosts = ["*.example.com"]
ports = [443]

[[rule]]
name = "apex-other-port"
hosts = ["example.com"]
ports = [8443]

[[rule]]
name = "exact-sub"
hosts = ["special.example.com"]
ports = [443, 444]

[[rule]]
name = "deeper-wild"
hosts = ["*.deep.example.com"]
ports = ["1000-2000"]
"#;
        let policy = Policy::from_toml_str(text, "t.toml").expect("valid");
        let table: &[(&str, u16, Result<&str, DenyReason>)] = &[
            ("a.example.com", 443, Ok("wild")),
            ("a.b.c.example.com", 443, Ok("wild")),
            ("A.Example.Com.", 443, Ok("wild")),
            ("a.example.com", 444, Err(PortNotAllowed)),
            ("example.com", 443, Err(PortNotAllowed)),
            ("example.com", 8443, Ok("apex-other-port")),
            ("other.com", 443, Err(HostNotAllowed)),
            ("example.com.evil.test", 443, Err(HostNotAllowed)),
            ("notexample.com", 443, Err(HostNotAllowed)),
            // Exact first, then wildcard suffixes longest to shortest.
            ("special.example.com", 443, Ok("exact-sub")),
            ("special.example.com", 444, Ok("exact-sub")),
            ("x.deep.example.com", 1500, Ok("deeper-wild")),
            ("x.deep.example.com", 443, Ok("wild")),
            ("deep.example.com", 443, Ok("wild")),
            ("deep.example.com", 1500, Err(PortNotAllowed)),
        ];
        check_table(&policy, table);
    }

    #[test]
    fn empty_policy_denies_everything() {
        for text in ["", "# nothing here\n", "\n\n"] {
            let policy = Policy::from_toml_str(text, "empty.toml").expect("valid");
            assert!(policy.is_empty());
            assert_eq!(
                verdict(&policy, "connect.helpdeskbuttons.com", 443),
                Err(DenyReason::HostNotAllowed)
            );
        }
        let policy = Policy::default();
        assert_eq!(
            verdict(&policy, "example.com", 443),
            Err(DenyReason::HostNotAllowed)
        );
        assert_eq!(
            verdict(&policy, "10.0.0.1", 443),
            Err(DenyReason::IpLiteral)
        );
    }

    #[test]
    fn idna_names_match_in_a_label_form() {
        let text = "[[rule]]\nname = \"idn\"\nhosts = [\"bücher.example\"]\nports = [443]\n";
        let policy = Policy::from_toml_str(text, "idn.toml").expect("valid");
        assert_eq!(policy.rules()[0].hosts, ["xn--bcher-kva.example"]);
        assert_eq!(
            verdict(&policy, "BÜCHER.example", 443),
            Ok("idn".to_string())
        );
        assert_eq!(
            verdict(&policy, "xn--bcher-kva.example", 443),
            Ok("idn".to_string())
        );
    }

    #[test]
    fn large_policy_compiles_and_decides() {
        const N: usize = 100_000;
        let mut text = String::with_capacity(N * 80);
        for i in 0..N {
            let port = 1000 + (i % 5000);
            text.push_str(&format!(
                "[[rule]]\nname = \"r{i}\"\nhosts = [\"h{i}.example.com\", \"*.w{i}.example.net\"]\nports = [{port}]\n"
            ));
        }
        let policy = Policy::from_toml_str(&text, "big.toml").expect("valid");
        assert_eq!(policy.len(), N);
        for i in [0, 1, 4_999, 5_000, 54_321, N - 1] {
            let port = (1000 + (i % 5000)) as u16;
            let want = Ok(format!("r{i}"));
            assert_eq!(verdict(&policy, &format!("h{i}.example.com"), port), want);
            assert_eq!(verdict(&policy, &format!("a.w{i}.example.net"), port), want);
            assert_eq!(
                verdict(&policy, &format!("h{i}.example.com"), port + 1),
                Err(DenyReason::PortNotAllowed)
            );
            assert_eq!(
                verdict(&policy, &format!("w{i}.example.net"), port),
                Err(DenyReason::HostNotAllowed)
            );
        }
        assert_eq!(
            verdict(&policy, "h100000.example.com", 1000),
            Err(DenyReason::HostNotAllowed)
        );
    }

    #[test]
    fn load_reports_unreadable_file_without_line() {
        let path = Path::new("/nonexistent/portcullis/policy.toml");
        let err = Policy::load(path).expect_err("missing file");
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].line, None);
        assert_eq!(err.problems[0].file, path.display().to_string());
        assert!(err
            .to_string()
            .starts_with("/nonexistent/portcullis/policy.toml: "));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("portcullis-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("p.toml");
        std::fs::write(&path, BUILTIN_POLICY_TOML).expect("write");
        let policy = Policy::load(&path).expect("valid");
        assert_eq!(policy.len(), 4);
        assert_eq!(policy.origin(), path.display().to_string());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn display_texts() {
        assert_eq!(DenyReason::HostNotAllowed.to_string(), "host not in policy");
        assert_eq!(
            DenyReason::PortNotAllowed.to_string(),
            "port not allowed for host"
        );
        assert_eq!(
            DenyReason::IpLiteral.to_string(),
            "IP literal destinations are not allowed"
        );
        for mode in [TlsMode::Required, TlsMode::Optional, TlsMode::Any] {
            assert_eq!(TlsMode::from_name(&mode.to_string()), Some(mode));
        }
        assert_eq!(TlsMode::from_name("Required"), None);
        assert_eq!(render_ports(&[(443, 443), (2001, 2500)]), "443,2001-2500");
        assert_eq!(render_ports(&[]), "");
    }
}
