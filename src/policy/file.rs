//! The policy file format (`policy/*.toml`): strict parsing and validation
//! into [`Rule`]s, with every problem reported as `file:line: message`.
//!
//! The document holds only `[[rule]]` tables with the keys `name`,
//! `description`, `hosts`, `ports` and `tls`. TOML syntax errors and unknown
//! keys stop parsing at the first one (that is where serde stops); every other
//! problem is collected over all rules, so one run lists them all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use super::{Rule, TlsMode};
use crate::target::{normalize_host, Host};

/// Longest allowed rule name (a DNS label's limit, so names fit anywhere).
pub const MAX_RULE_NAME_LEN: usize = 63;
/// Longest host name in presentation form, without the trailing dot (RFC 1035 §2.3.4).
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// A policy could not be loaded; holds every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_problems(.problems))]
pub struct PolicyError {
    /// The problems, in file order (never empty).
    pub problems: Vec<PolicyProblem>,
}

impl PolicyError {
    /// An error holding one problem.
    pub fn single(problem: PolicyProblem) -> PolicyError {
        PolicyError {
            problems: vec![problem],
        }
    }
}

/// One problem in a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", render_line(.line))]
pub struct PolicyProblem {
    /// The file (path or origin name) the problem is in.
    pub file: String,
    /// 1-based line, when the problem has a place in the text.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

fn render_line(line: &Option<usize>) -> String {
    match line {
        Some(line) => format!(":{line}"),
        None => String::new(),
    }
}

fn render_problems(problems: &[PolicyProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

/// Every key is optional here so that missing keys are reported together
/// with the other problems instead of stopping the parse.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    hosts: Option<Spanned<Vec<Spanned<String>>>>,
    ports: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    tls: Option<Spanned<String>>,
}

/// Parses and validates a policy document into rules, in file order.
pub(crate) fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, PolicyError> {
    let lines = LineIndex::new(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        PolicyError::single(PolicyProblem {
            file: origin.to_string(),
            line: e.span().map(|span| lines.line_of(span.start)),
            message: e.message().trim_end().to_string(),
        })
    })?;
    let mut checker = Checker {
        origin,
        lines,
        problems: Vec::new(),
        names: HashMap::new(),
    };
    let mut rules = Vec::with_capacity(raw.rule.len());
    for raw_rule in raw.rule {
        if let Some(rule) = checker.rule(raw_rule) {
            rules.push(rule);
        }
    }
    if checker.problems.is_empty() {
        Ok(rules)
    } else {
        Err(PolicyError {
            problems: checker.problems,
        })
    }
}

/// Maps byte offsets to 1-based line numbers in O(log lines).
struct LineIndex {
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        // `starts[0] == 0`, so the partition point is at least 1.
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

/// Validates rules one by one, collecting problems.
struct Checker<'a> {
    origin: &'a str,
    lines: LineIndex,
    problems: Vec<PolicyProblem>,
    /// Rule name → line of its first definition.
    names: HashMap<String, usize>,
}

impl Checker<'_> {
    fn report(&mut self, span: Range<usize>, message: String) {
        self.problems.push(PolicyProblem {
            file: self.origin.to_string(),
            line: Some(self.lines.line_of(span.start)),
            message,
        });
    }

    /// Checks one rule; `None` if it had any problem (already reported).
    fn rule(&mut self, raw: Spanned<RawRule>) -> Option<Rule> {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = match raw.name {
            Some(name) => self.name(name),
            None => self.missing(&span, "name"),
        };
        let hosts = match raw.hosts {
            Some(hosts) => self.hosts(hosts),
            None => self.missing(&span, "hosts"),
        };
        let ports = match raw.ports {
            Some(ports) => self.ports(ports),
            None => self.missing(&span, "ports"),
        };
        let tls = match raw.tls {
            Some(tls) => self.tls(tls),
            None => Some(TlsMode::Required),
        };
        let description = raw.description.map(Spanned::into_inner).unwrap_or_default();
        Some(Rule {
            name: name?,
            description,
            hosts: hosts?,
            ports: ports?,
            tls: tls?,
        })
    }

    fn missing<T>(&mut self, rule_span: &Range<usize>, key: &str) -> Option<T> {
        self.report(
            rule_span.clone(),
            format!("rule is missing the `{key}` key"),
        );
        None
    }

    fn name(&mut self, raw: Spanned<String>) -> Option<String> {
        let span = raw.span();
        let name = raw.into_inner();
        if !is_valid_rule_name(&name) {
            self.report(
                span,
                format!(
                    "invalid rule name {name:?}: use 1 to {MAX_RULE_NAME_LEN} characters from a-z, 0-9 and '-'"
                ),
            );
            return None;
        }
        let line = self.lines.line_of(span.start);
        if let Some(first) = self.names.get(&name) {
            let first = *first;
            self.report(
                span,
                format!("duplicate rule name {name:?} (first used at line {first})"),
            );
            return None;
        }
        self.names.insert(name.clone(), line);
        Some(name)
    }

    fn hosts(&mut self, raw: Spanned<Vec<Spanned<String>>>) -> Option<Vec<String>> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.is_empty() {
            self.report(span, "`hosts` must not be empty".to_string());
            return None;
        }
        let mut ok = true;
        let mut hosts = Vec::with_capacity(raw.len());
        for host in raw {
            let span = host.span();
            match host_pattern(host.get_ref()) {
                Ok(pattern) => hosts.push(pattern),
                Err(message) => {
                    self.report(span, message);
                    ok = false;
                }
            }
        }
        ok.then_some(hosts)
    }

    fn ports(&mut self, raw: Spanned<Vec<Spanned<toml::Value>>>) -> Option<Vec<(u16, u16)>> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.is_empty() {
            self.report(span, "`ports` must not be empty".to_string());
            return None;
        }
        let mut ok = true;
        let mut ranges = Vec::with_capacity(raw.len());
        for port in raw {
            let span = port.span();
            match port_range(port.get_ref()) {
                Ok(range) => ranges.push(range),
                Err(message) => {
                    self.report(span, message);
                    ok = false;
                }
            }
        }
        ok.then(|| merge_ranges(ranges))
    }

    fn tls(&mut self, raw: Spanned<String>) -> Option<TlsMode> {
        let mode = TlsMode::from_name(raw.get_ref());
        if mode.is_none() {
            let message = format!(
                "unknown tls mode {:?} (expected \"required\", \"optional\" or \"any\")",
                raw.get_ref()
            );
            self.report(raw.span(), message);
        }
        mode
    }
}

/// `[a-z0-9-]+`, at most [`MAX_RULE_NAME_LEN`] characters.
fn is_valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RULE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Validates and normalises one `hosts` entry: an exact name, or `*.` followed
/// by a name (any subdomain of it, not the name itself).
fn host_pattern(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("empty host name".to_string());
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid host name {raw:?}: contains whitespace or control characters"
        ));
    }
    let (wildcard, name) = match raw.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    if name.contains('*') || name.is_empty() {
        return Err(format!(
            "invalid host pattern {raw:?}: '*' is allowed only as a whole leading label followed by a name, as in \"*.example.com\""
        ));
    }
    let ip_literal = || {
        format!(
            "IP literal {raw:?} is not allowed: policies name hosts, never addresses (addresses change; the name is resolved at every connection)"
        )
    };
    if looks_like_ip_literal(name) {
        return Err(ip_literal());
    }
    let name = match normalize_host(name) {
        Ok(Host::Name(name)) => name,
        Ok(Host::Ip(_)) => return Err(ip_literal()),
        Err(e) => return Err(format!("invalid host name {raw:?}: {e}")),
    };
    if let Err(why) = check_host_syntax(&name) {
        return Err(format!("invalid host name {raw:?}: {why}"));
    }
    Ok(if wildcard { format!("*.{name}") } else { name })
}

/// An IPv4/IPv6 literal, bracketed or not, with or without one trailing dot.
fn looks_like_ip_literal(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().is_ok()
}

/// Checks a normalised (lower-case A-label) host name: LDH labels (plus `_`,
/// which exists in the wild) of 1..=63 bytes, 253 bytes in all, and a last
/// label that is not numeric (WHATWG URL parsers read such a name as IPv4).
fn check_host_syntax(name: &str) -> Result<(), String> {
    if name.len() > MAX_HOST_LEN {
        return Err(format!("longer than {MAX_HOST_LEN} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".to_string());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("label longer than {MAX_LABEL_LEN} characters"));
        }
        let allowed =
            |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        if !label.bytes().all(allowed) {
            return Err(format!(
                "label {label:?} has characters other than a-z, 0-9, '-' and '_'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || last.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the last label is numeric, so it reads as an IP address".to_string());
    }
    Ok(())
}

/// One `ports` entry: an integer port, or a `"low-high"` (or `"port"`) string.
fn port_range(value: &toml::Value) -> Result<(u16, u16), String> {
    match value {
        toml::Value::Integer(n) => Ok((port_number(*n)?, port_number(*n)?)),
        toml::Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((lo, hi)) => (lo, hi),
                None => (s.as_str(), s.as_str()),
            };
            let lo = port_digits(lo, s)?;
            let hi = port_digits(hi, s)?;
            if lo > hi {
                return Err(format!(
                    "reversed port range {s:?}: the low port comes first, as in \"{hi}-{lo}\""
                ));
            }
            Ok((lo, hi))
        }
        other => Err(format!(
            "a port must be an integer or a \"low-high\" string, not {}",
            other.type_str()
        )),
    }
}

fn port_number(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {n} is out of range (1-65535)")),
    }
}

/// A decimal port inside a port string; `whole` is the string for messages.
fn port_digits(digits: &str, whole: &str) -> Result<u16, String> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "malformed port {whole:?}: expected a port (443) or an inclusive range (\"2001-2500\")"
        ));
    }
    match digits.parse::<i64>() {
        Ok(n) => port_number(n),
        Err(_) => Err(format!("port {digits} is out of range (1-65535)")),
    }
}

/// Sorts inclusive ranges and merges overlapping or adjacent ones.
fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "test.toml";

    fn rule_with(hosts: &str, ports: &str) -> String {
        format!("[[rule]]\nname = \"r\"\nhosts = {hosts}\nports = {ports}\n")
    }

    /// Parses `text` and returns its problems as `(line, message)`.
    fn problems(text: &str) -> Vec<(Option<usize>, String)> {
        match parse_rules(text, FILE) {
            Ok(rules) => panic!("expected errors, got {} rules for:\n{text}", rules.len()),
            Err(e) => {
                assert!(!e.problems.is_empty());
                for p in &e.problems {
                    assert_eq!(p.file, FILE);
                }
                e.problems
                    .into_iter()
                    .map(|p| (p.line, p.message))
                    .collect()
            }
        }
    }

    #[test]
    fn single_errors_name_the_right_line() {
        // (document, line of the problem, a fragment of its message)
        let table: &[(String, usize, &str)] = &[
            // Syntax and unknown keys (reported by serde/toml).
            (
                "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"\n".into(),
                3,
                "unclosed array",
            ),
            (
                "[[rule]]\nname = \"a\"\nname = \"b\"\n".into(),
                3,
                "duplicate key",
            ),
            (
                "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"]\nports = [443]\ncolour = \"red\"\n"
                    .into(),
                5,
                "unknown field `colour`",
            ),
            ("version = 1\n".into(), 1, "unknown field `version`"),
            ("\n[rules]\nx = 1\n".into(), 2, "unknown field `rules`"),
            ("[[rule]]\nname = 5\n".into(), 2, "invalid type"),
            (
                "[[rule]]\nname = \"a\"\nhosts = \"a.com\"\n".into(),
                3,
                "invalid type",
            ),
            (
                "[[rule]]\nname = \"a\"\nhosts = [1]\n".into(),
                3,
                "invalid type",
            ),
            // Names.
            (
                "[[rule]]\nname = \"Upper\"\nhosts = [\"a.com\"]\nports = [1]\n".into(),
                2,
                "invalid rule name",
            ),
            (
                "[[rule]]\nname = \"a_b\"\nhosts = [\"a.com\"]\nports = [1]\n".into(),
                2,
                "invalid rule name",
            ),
            (
                "[[rule]]\nname = \"\"\nhosts = [\"a.com\"]\nports = [1]\n".into(),
                2,
                "invalid rule name",
            ),
            (
                format!(
                    "[[rule]]\nname = \"{}\"\nhosts = [\"a.com\"]\nports = [1]\n",
                    "a".repeat(64)
                ),
                2,
                "invalid rule name",
            ),
            // Missing keys name the rule's header line.
            (
                "\n[[rule]]\nhosts = [\"a.com\"]\nports = [1]\n".into(),
                2,
                "missing the `name` key",
            ),
            (
                "[[rule]]\nname = \"a\"\nports = [1]\n".into(),
                1,
                "missing the `hosts` key",
            ),
            (
                "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"]\n".into(),
                1,
                "missing the `ports` key",
            ),
            // Hosts.
            (rule_with("[]", "[443]"), 3, "`hosts` must not be empty"),
            (
                rule_with("[\"*example.com\"]", "[443]"),
                3,
                "'*' is allowed only",
            ),
            (
                rule_with("[\"a.*.com\"]", "[443]"),
                3,
                "'*' is allowed only",
            ),
            (rule_with("[\"*\"]", "[443]"), 3, "'*' is allowed only"),
            (rule_with("[\"*.\"]", "[443]"), 3, "'*' is allowed only"),
            (
                rule_with("[\"example.*\"]", "[443]"),
                3,
                "'*' is allowed only",
            ),
            (
                rule_with("[\"*.*.example.com\"]", "[443]"),
                3,
                "'*' is allowed only",
            ),
            (
                rule_with("[\"**.example.com\"]", "[443]"),
                3,
                "'*' is allowed only",
            ),
            (rule_with("[\"1.2.3.4\"]", "[443]"), 3, "IP literal"),
            (rule_with("[\"::1\"]", "[443]"), 3, "IP literal"),
            (rule_with("[\"[::1]\"]", "[443]"), 3, "IP literal"),
            (rule_with("[\"*.10.0.0.1\"]", "[443]"), 3, "IP literal"),
            (rule_with("[\"\"]", "[443]"), 3, "empty host name"),
            (rule_with("[\" a.com\"]", "[443]"), 3, "whitespace"),
            (rule_with("[\"a..com\"]", "[443]"), 3, "invalid host name"),
            (
                rule_with("[\"a.com:443\"]", "[443]"),
                3,
                "invalid host name",
            ),
            (rule_with("[\"-a.com\"]", "[443]"), 3, "invalid host name"),
            (rule_with("[\"a/b.com\"]", "[443]"), 3, "invalid host name"),
            (rule_with("[\"1.2.3\"]", "[443]"), 3, "invalid host name"),
            (
                rule_with(&format!("[\"{}.com\"]", "a".repeat(64)), "[443]"),
                3,
                "invalid host name",
            ),
            // Ports.
            (
                rule_with("[\"a.com\"]", "[]"),
                4,
                "`ports` must not be empty",
            ),
            (rule_with("[\"a.com\"]", "[0]"), 4, "port 0 is out of range"),
            (
                rule_with("[\"a.com\"]", "[65536]"),
                4,
                "port 65536 is out of range",
            ),
            (
                rule_with("[\"a.com\"]", "[-1]"),
                4,
                "port -1 is out of range",
            ),
            (
                rule_with("[\"a.com\"]", "[\"0-10\"]"),
                4,
                "port 0 is out of range",
            ),
            (
                rule_with("[\"a.com\"]", "[\"1-70000\"]"),
                4,
                "port 70000 is out of range",
            ),
            (
                rule_with("[\"a.com\"]", "[\"1-99999999999999999999\"]"),
                4,
                "out of range",
            ),
            (
                rule_with("[\"a.com\"]", "[\"2500-2001\"]"),
                4,
                "reversed port range",
            ),
            (rule_with("[\"a.com\"]", "[\"abc\"]"), 4, "malformed port"),
            (rule_with("[\"a.com\"]", "[\"1-2-3\"]"), 4, "malformed port"),
            (rule_with("[\"a.com\"]", "[\"-5\"]"), 4, "malformed port"),
            (rule_with("[\"a.com\"]", "[\"5-\"]"), 4, "malformed port"),
            (
                rule_with("[\"a.com\"]", "[\"2001 - 2500\"]"),
                4,
                "malformed port",
            ),
            (rule_with("[\"a.com\"]", "[\"\"]"), 4, "malformed port"),
            (rule_with("[\"a.com\"]", "[443.0]"), 4, "must be an integer"),
            (rule_with("[\"a.com\"]", "[true]"), 4, "must be an integer"),
            // TLS mode.
            (
                "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"]\nports = [1]\ntls = \"Required\"\n"
                    .into(),
                5,
                "unknown tls mode",
            ),
            (
                "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"]\nports = [1]\ntls = \"\"\n".into(),
                5,
                "unknown tls mode",
            ),
        ];
        for (text, line, fragment) in table {
            let got = problems(text);
            assert_eq!(
                got.len(),
                1,
                "one problem expected for:\n{text}\ngot {got:?}"
            );
            let (got_line, message) = &got[0];
            assert_eq!(
                *got_line,
                Some(*line),
                "line for:\n{text}\nmessage: {message}"
            );
            assert!(
                message.contains(fragment),
                "message {message:?} lacks {fragment:?} for:\n{text}"
            );
        }
    }

    #[test]
    fn duplicate_names_point_at_both_lines() {
        let text = "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"]\nports = [1]\n\n\
                    [[rule]]\nname = \"a\"\nhosts = [\"b.com\"]\nports = [2]\n";
        let got = problems(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Some(7));
        assert!(got[0]
            .1
            .contains("duplicate rule name \"a\" (first used at line 2)"));
    }

    #[test]
    fn all_semantic_problems_are_reported() {
        let text = r#"[[rule]]
name = "BAD"
hosts = ["*x.com", "ok.com", "1.2.3.4"]
ports = [0, "9-8"]
tls = "sometimes"

[[rule]]
name = "good"
hosts = ["good.com"]
ports = [443]

[[rule]]
name = "good"
hosts = []
ports = []
"#;
        let got = problems(text);
        let lines: Vec<Option<usize>> = got.iter().map(|p| p.0).collect();
        assert_eq!(lines, [2, 3, 3, 4, 4, 5, 13, 14, 15].map(Some), "{got:#?}");
    }

    #[test]
    fn display_is_file_line_message() {
        let err = parse_rules(&rule_with("[\"a.com\"]", "[0]"), "p.toml").expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "p.toml:4: port 0 is out of range (1-65535)"
        );
        let err = PolicyError {
            problems: vec![
                PolicyProblem {
                    file: "x".into(),
                    line: Some(1),
                    message: "one".into(),
                },
                PolicyProblem {
                    file: "x".into(),
                    line: None,
                    message: "two".into(),
                },
            ],
        };
        assert_eq!(err.to_string(), "x:1: one\nx: two");
    }

    #[test]
    fn valid_rules_are_normalised() {
        let text = r#"
[[rule]]
name = "r-1"
hosts = ["Example.COM.", "*.Wild.Example"]
ports = ["2001-2500", 443, 444, "445", "2400-2600", 80]

[[rule]]
name = "r-2"
description = "second"
hosts = ["_sip.example.org"]
ports = [65535, "1-1"]
tls = "any"
"#;
        let rules = parse_rules(text, FILE).expect("valid");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].name, "r-1");
        assert_eq!(rules[0].description, "");
        assert_eq!(rules[0].hosts, ["example.com", "*.wild.example"]);
        assert_eq!(rules[0].ports, [(80, 80), (443, 445), (2001, 2600)]);
        assert_eq!(rules[0].tls, TlsMode::Required);
        assert_eq!(rules[1].description, "second");
        assert_eq!(rules[1].ports, [(1, 1), (65535, 65535)]);
        assert_eq!(rules[1].tls, TlsMode::Any);
    }

    #[test]
    fn empty_documents_are_valid() {
        for text in ["", "   \n", "# comment only\n", "rule = []\n"] {
            assert_eq!(parse_rules(text, FILE).map(|r| r.len()), Ok(0), "{text:?}");
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let inputs = [
            "\u{0}",
            "[[rule]",
            "[[rule]]\nname = \"\u{1F600}\"\nhosts = [\"\u{1F600}\"]\nports = [\"\u{1F600}-1\"]\n",
            "[[rule]]\nname = \"a\"\nhosts = [\"*.\u{0}\"]\nports = [\"\u{0}\"]\n",
            "[[rule]]\nname = \"a\"\nhosts = [\"a.com\"]\nports = [9223372036854775807, -9223372036854775808]\n",
            "[[rule]]\nhosts = [[\"a\"]]\n",
            "rule = 1",
            "rule = [1]",
            "[rule]\nname = \"a\"\n",
        ];
        for text in inputs {
            let _ = parse_rules(text, FILE);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_documents_never_panic(text in "\\PC{0,300}") {
            let _ = parse_rules(&text, FILE);
        }

        #[test]
        fn arbitrary_entries_never_panic(entry in "\\PC{0,40}", n in proptest::num::i64::ANY) {
            let _ = host_pattern(&entry);
            let _ = port_range(&toml::Value::String(entry));
            let _ = port_range(&toml::Value::Integer(n));
        }

        #[test]
        fn accepted_ports_are_in_range(lo in 0i64..70_000, hi in 0i64..70_000) {
            let range = format!("{lo}-{hi}");
            if let Ok((a, b)) = port_range(&toml::Value::String(range)) {
                proptest::prop_assert!(a >= 1 && a <= b);
                proptest::prop_assert_eq!((i64::from(a), i64::from(b)), (lo, hi));
            }
        }
    }

    #[test]
    fn line_index() {
        let idx = LineIndex::new("a\nbc\n\nd");
        let got: Vec<usize> = (0..8).map(|o| idx.line_of(o)).collect();
        assert_eq!(got, [1, 1, 2, 2, 2, 3, 4, 4]);
    }
}
