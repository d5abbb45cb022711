//! Destinations: authority parsing (`host:port`, `[v6]:port`) and host-name
//! normalisation (ASCII case, one trailing dot, IDNA A-labels, IP literals).
//! Shared by the CONNECT head, absolute-form URIs, SNI and policy files.
//!
//! Everything here is pure and total: any input string yields either a
//! normalised [`Target`]/[`Host`] or a [`TargetError`] whose `Display` is a
//! one-line, human-readable reason (it becomes the body of a `400` response).
//! Error messages never echo the input, so they are safe to send and log.
//!
//! Security rule: a non-canonical spelling of an IPv4 address (`2130706433`,
//! `0x7f.1`, `127.1`, `0177.0.0.1`, `1.2.3.4.5`) is never accepted as a host
//! name. Any name whose last label is all decimal digits or `0x`-hex is refused
//! ([`TargetError::NumericName`]): a WHATWG URL parser, `inet_aton` or a
//! resolver library could read it as an address, and no DNS top-level domain
//! is numeric. Only the canonical dotted quad (`127.0.0.1`, optionally with
//! one trailing dot) is an IPv4 literal.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest host name (A-label form, without the trailing dot), in bytes.
pub const MAX_NAME_LEN: usize = 253;

/// Longest single label of a host name (A-label form), in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Longest raw host input handed to IDNA processing. A valid 253-byte name
/// written with U-labels in UTF-8 is well below this; anything longer is
/// refused as too long before doing any Unicode work.
const MAX_RAW_HOST_LEN: usize = 2048;

/// A destination host after normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lower-case ASCII (A-labels), no trailing dot.
    Name(String),
    /// An IP literal; never matches a host-name rule.
    Ip(IpAddr),
}

/// A destination the client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Normalised host.
    pub host: Host,
    /// Destination TCP port (never 0).
    pub port: u16,
}

/// Why a destination string was refused (always `400 http_request_error`).
///
/// The `Display` text of each variant is a complete one-line explanation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Generic refusal with a fixed reason (kept for callers that need one).
    #[error("invalid destination: {0}")]
    Invalid(&'static str),
    /// The destination string is empty.
    #[error("invalid destination: empty")]
    Empty,
    /// `:port` present but nothing before it.
    #[error("invalid destination: missing host before the port")]
    MissingHost,
    /// No `:port` where one is required (authority form).
    #[error("invalid destination: missing port (expected host:port)")]
    MissingPort,
    /// `host:` with nothing after the colon.
    #[error("invalid destination: empty port")]
    EmptyPort,
    /// The port is not 1 to 5 ASCII decimal digits (signs, letters, ...).
    #[error("invalid destination: port is not a decimal number")]
    InvalidPort,
    /// Port 0.
    #[error("invalid destination: port 0 is not allowed")]
    PortZero,
    /// A port above 65535.
    #[error("invalid destination: port is greater than 65535")]
    PortOutOfRange,
    /// `user@host:port`.
    #[error("invalid destination: userinfo (user@) is not allowed")]
    Userinfo,
    /// A `/`, `?` or `#` after the authority.
    #[error("invalid destination: a path, query or fragment is not allowed")]
    PathOrQuery,
    /// Whitespace or a control character (NUL, DEL, C1, Unicode spaces).
    #[error("invalid destination: whitespace or control character")]
    ControlOrWhitespace,
    /// A label longer than 63 bytes after IDNA.
    #[error("invalid destination: host name label longer than 63 bytes")]
    LabelTooLong,
    /// A name longer than 253 bytes after IDNA.
    #[error("invalid destination: host name longer than 253 bytes")]
    NameTooLong,
    /// `a..b`, `.a`, or a lone `.`.
    #[error("invalid destination: empty label in host name")]
    EmptyLabel,
    /// `example.com..` (only one trailing dot is ignored).
    #[error("invalid destination: more than one trailing dot in host name")]
    TrailingDots,
    /// A character other than letters, digits, `-`, `_` and `.` in a name.
    #[error("invalid destination: invalid character in host name")]
    InvalidCharacter,
    /// The name is rejected by IDNA (UTS #46) processing.
    #[error("invalid destination: host name is not a valid internationalised domain name")]
    Idna,
    /// The last label is numeric: a non-canonical IPv4 spelling.
    #[error(
        "invalid destination: host name ends in a number \
         (IPv4 addresses must be written as four decimal octets)"
    )]
    NumericName,
    /// `[...]` whose content is not an IPv6 address.
    #[error("invalid destination: bracketed host is not an IPv6 address")]
    BracketNotIpv6,
    /// A `[` without its `]`, or junk between `]` and `:port`.
    #[error("invalid destination: malformed brackets around IPv6 address")]
    MalformedBrackets,
    /// An IPv6 address without brackets in a `host:port` string.
    #[error("invalid destination: IPv6 address must be in brackets ([v6]:port)")]
    UnbracketedIpv6,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses an authority-form destination (`host:port`, `[v6]:port`), the
/// request target of a `CONNECT`.
///
/// The port is required: 1 to 5 ASCII digits, value 1..=65535 (no sign).
/// Userinfo, a path/query/fragment, whitespace or control characters anywhere,
/// and an unbracketed IPv6 address are refused. The host goes through
/// [`normalize_host`].
pub fn parse_authority(s: &str) -> Result<Target, TargetError> {
    parse_inner(s, None)
}

/// Parses the authority of an absolute-form URI (`http://host[:port]/...`):
/// like [`parse_authority`], but a missing port means `default_port`.
///
/// An empty port after a colon (`host:`) is refused like in
/// [`parse_authority`]; `default_port` 0 is refused as [`TargetError::PortZero`].
pub fn parse_host_port_default(s: &str, default_port: u16) -> Result<Target, TargetError> {
    parse_inner(s, Some(default_port))
}

/// Normalises a bare host name or IP literal (from a URI, an SNI or a policy file).
///
/// - IPv6 as `[v6]` or bare `v6` → [`Host::Ip`] (IPv4-mapped addresses stay
///   V6; zone identifiers are refused).
/// - Names: ASCII case-folded, one trailing dot removed, non-ASCII labels
///   converted to IDNA A-labels (UTS #46, WHATWG URL deny list). The result may
///   contain only `a-z`, `0-9`, `-`, `_` and `.`, with non-empty labels of at
///   most 63 bytes and at most 253 bytes in total.
/// - A result that is a canonical dotted-quad IPv4 address → [`Host::Ip`]
///   (so `１２７.０.０.１` in full-width digits is the IP literal, as in a browser).
/// - Any other name whose last label is all decimal digits or `0x`-hex
///   (`2130706433`, `0x7f.1`, `127.1`, `0177.0.0.1`, `1.2.3.4.5`) is refused
///   with [`TargetError::NumericName`]: such a string is a non-canonical IPv4
///   spelling to some parsers, so it must never match a rule nor be resolved.
pub fn normalize_host(s: &str) -> Result<Host, TargetError> {
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    check_no_control(s)?;
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(TargetError::MalformedBrackets)?;
        if inner.contains(['[', ']']) {
            return Err(TargetError::MalformedBrackets);
        }
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| TargetError::BracketNotIpv6);
    }
    if s.contains(':') {
        return s
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(IpAddr::V6(ip)))
            .map_err(|_| TargetError::InvalidCharacter);
    }
    normalize_name(s)
}

/// Shared implementation of the two authority parsers.
fn parse_inner(s: &str, default_port: Option<u16>) -> Result<Target, TargetError> {
    if s.is_empty() {
        return Err(TargetError::Empty);
    }
    check_no_control(s)?;
    if s.contains('@') {
        return Err(TargetError::Userinfo);
    }
    if s.contains(['/', '?', '#']) {
        return Err(TargetError::PathOrQuery);
    }

    let (host, port) = if s.starts_with('[') {
        let close = s.find(']').ok_or(TargetError::MalformedBrackets)?;
        let (host, rest) = s.split_at(close + 1);
        if rest.is_empty() {
            (host, None)
        } else {
            let port = rest
                .strip_prefix(':')
                .ok_or(TargetError::MalformedBrackets)?;
            (host, Some(port))
        }
    } else {
        match s.rsplit_once(':') {
            None => (s, None),
            Some((host, port)) => {
                if host.contains(':') {
                    let looks_v6 =
                        host.parse::<Ipv6Addr>().is_ok() || s.parse::<Ipv6Addr>().is_ok();
                    return Err(if looks_v6 {
                        TargetError::UnbracketedIpv6
                    } else {
                        TargetError::InvalidCharacter
                    });
                }
                (host, Some(port))
            }
        }
    };

    if host.is_empty() {
        return Err(TargetError::MissingHost);
    }
    let port = match (port, default_port) {
        (Some(p), _) => parse_port(p)?,
        (None, Some(0)) => return Err(TargetError::PortZero),
        (None, Some(d)) => d,
        (None, None) => {
            // `2001:db8::1` never gets here (the host would contain ':'),
            // but a bare `[v6]` does: it is still just a missing port.
            return Err(TargetError::MissingPort);
        }
    };
    let host = normalize_host(host)?;
    Ok(Target { host, port })
}

/// Parses a port: 1 to 5 ASCII digits, value 1..=65535.
fn parse_port(p: &str) -> Result<u16, TargetError> {
    if p.is_empty() {
        return Err(TargetError::EmptyPort);
    }
    if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TargetError::InvalidPort);
    }
    let value: u32 = p
        .bytes()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    match value {
        0 => Err(TargetError::PortZero),
        v => u16::try_from(v).map_err(|_| TargetError::PortOutOfRange),
    }
}

/// Refuses whitespace and control characters anywhere (ASCII and Unicode).
fn check_no_control(s: &str) -> Result<(), TargetError> {
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Err(TargetError::ControlOrWhitespace)
    } else {
        Ok(())
    }
}

/// Is `b` allowed in a normalised host name?
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
}

/// Normalises a DNS name (or a dotted-quad IPv4 literal). `s` is non-empty,
/// has no controls, brackets or colons.
fn normalize_name(s: &str) -> Result<Host, TargetError> {
    if s.len() > MAX_RAW_HOST_LEN {
        return Err(TargetError::NameTooLong);
    }
    // ASCII characters outside the name alphabet are refused up front, for a
    // precise error (IDNA would let some of them, like `!` or `*`, through).
    if s.bytes()
        .any(|b| b.is_ascii() && !is_name_byte(b.to_ascii_lowercase()))
    {
        return Err(TargetError::InvalidCharacter);
    }
    let ascii = idna::domain_to_ascii_cow(s.as_bytes(), idna::AsciiDenyList::URL)
        .map_err(|_| TargetError::Idna)?;
    // IDNA maps upper case and other equivalents; full-width dots (U+3002,
    // U+FF0E, ...) become '.', so all structural checks run on its output.
    let ascii: &str = &ascii;
    if ascii.is_empty() {
        return Err(TargetError::Empty);
    }
    if !ascii.bytes().all(is_name_byte) {
        return Err(TargetError::InvalidCharacter);
    }
    let name = ascii.strip_suffix('.').unwrap_or(ascii);
    if name.ends_with('.') && !name.trim_end_matches('.').is_empty() {
        return Err(TargetError::TrailingDots);
    }
    if name.is_empty() {
        return Err(TargetError::EmptyLabel);
    }
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(TargetError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(TargetError::LabelTooLong);
        }
        last = label;
    }
    if name.len() > MAX_NAME_LEN {
        return Err(TargetError::NameTooLong);
    }
    if is_numeric_label(last) {
        return Err(TargetError::NumericName);
    }
    Ok(Host::Name(name.to_owned()))
}

/// Would a WHATWG URL parser read this (lower-case) label as an IPv4 number?
/// True for all-decimal-digit labels (octal included) and `0x`-hex labels
/// (including a bare `0x`).
fn is_numeric_label(label: &str) -> bool {
    if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    fn name(n: &str) -> Host {
        Host::Name(n.to_owned())
    }

    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    fn t(h: Host, port: u16) -> Target {
        Target { host: h, port }
    }

    #[test]
    fn authority_ok_table() {
        let cases: Vec<(&str, Target)> = vec![
            ("example.com:443", t(name("example.com"), 443)),
            ("EXAMPLE.Com:443", t(name("example.com"), 443)),
            ("example.com.:443", t(name("example.com"), 443)),
            ("a:1", t(name("a"), 1)),
            ("a:65535", t(name("a"), 65535)),
            ("a:00443", t(name("a"), 443)),
            ("_dmarc.example.com:443", t(name("_dmarc.example.com"), 443)),
            (
                "xn--bcher-kva.example:443",
                t(name("xn--bcher-kva.example"), 443),
            ),
            ("bücher.example:443", t(name("xn--bcher-kva.example"), 443)),
            ("BÜCHER.example:443", t(name("xn--bcher-kva.example"), 443)),
            ("bücher。example:443", t(name("xn--bcher-kva.example"), 443)),
            ("-lead.trail-:443", t(name("-lead.trail-"), 443)),
            (
                "cfjex255ag.execute-api.us-east-1.amazonaws.com:443",
                t(name("cfjex255ag.execute-api.us-east-1.amazonaws.com"), 443),
            ),
            (
                "connect.helpdeskbuttons.com:2001",
                t(name("connect.helpdeskbuttons.com"), 2001),
            ),
            ("127.0.0.1:443", t(ip("127.0.0.1"), 443)),
            ("127.0.0.1.:443", t(ip("127.0.0.1"), 443)),
            ("１２７.０.０.１:443", t(ip("127.0.0.1"), 443)),
            ("[::1]:443", t(ip("::1"), 443)),
            ("[2001:DB8::1]:8443", t(ip("2001:db8::1"), 8443)),
            ("[::ffff:127.0.0.1]:443", t(ip("::ffff:127.0.0.1"), 443)),
            ("example.0xg:443", t(name("example.0xg"), 443)),
            ("1example.com:443", t(name("1example.com"), 443)),
            ("example.1com:443", t(name("example.1com"), 443)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_authority(input), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn authority_err_table() {
        use TargetError::*;
        let long_label = format!("{}.com:443", "a".repeat(64));
        let ok_label = format!("{}.com:443", "a".repeat(63));
        assert!(parse_authority(&ok_label).is_ok());
        let long_name = format!("{}a:443", "abcdefghi.".repeat(25)); // 251 bytes
        assert!(parse_authority(&long_name).is_ok());
        let too_long_name = format!("{}abc:443", "abcdefghi.".repeat(25)); // 253 ok
        assert!(parse_authority(&too_long_name).is_ok());
        let too_long_name = format!("{}abcd:443", "abcdefghi.".repeat(25)); // 254
        let huge = format!("{}:443", "a.".repeat(5000));
        let cases: Vec<(&str, TargetError)> = vec![
            ("", Empty),
            (":443", MissingHost),
            ("example.com", MissingPort),
            ("[::1]", MissingPort),
            ("example.com:", EmptyPort),
            ("example.com:abc", InvalidPort),
            ("example.com:+443", InvalidPort),
            ("example.com:-443", InvalidPort),
            ("example.com:4 43", ControlOrWhitespace),
            ("example.com:000443", InvalidPort),
            ("example.com:443443", InvalidPort),
            ("example.com:0", PortZero),
            ("example.com:00000", PortZero),
            ("example.com:65536", PortOutOfRange),
            ("example.com:99999", PortOutOfRange),
            ("example.com:0x1bb", InvalidPort),
            ("example.com:４４３", InvalidPort),
            ("user@example.com:443", Userinfo),
            ("user:pw@example.com:443", Userinfo),
            ("example.com:443/x", PathOrQuery),
            ("example.com:443?q", PathOrQuery),
            ("example.com:443#f", PathOrQuery),
            ("example.com/x:443", PathOrQuery),
            (" example.com:443", ControlOrWhitespace),
            ("example.com:443 ", ControlOrWhitespace),
            ("exa mple.com:443", ControlOrWhitespace),
            ("exa\tmple.com:443", ControlOrWhitespace),
            ("example.com\r\n:443", ControlOrWhitespace),
            ("exa\0mple.com:443", ControlOrWhitespace),
            ("exa\x7fmple.com:443", ControlOrWhitespace),
            ("exa\u{85}mple.com:443", ControlOrWhitespace),
            ("exa\u{a0}mple.com:443", ControlOrWhitespace),
            ("exa\u{3000}mple.com:443", ControlOrWhitespace),
            (&long_label, LabelTooLong),
            (&too_long_name, NameTooLong),
            (&huge, NameTooLong),
            ("a..b:443", EmptyLabel),
            (".a:443", EmptyLabel),
            (".:443", EmptyLabel),
            ("example.com..:443", TrailingDots),
            ("..:443", EmptyLabel),
            ("exa!mple.com:443", InvalidCharacter),
            ("*.example.com:443", InvalidCharacter),
            ("exa%41mple.com:443", InvalidCharacter),
            ("exa\\mple.com:443", InvalidCharacter),
            ("exa\"mple.com:443", InvalidCharacter),
            ("exa[mple.com:443", InvalidCharacter),
            ("exa]mple.com:443", InvalidCharacter),
            ("exa！mple.com:443", InvalidCharacter),
            ("exa／mple.com:443", Idna),
            ("xn--zz--.example:443", Idna),
            ("exa\u{202e}mple.com:443", Idna),
            ("2130706433:443", NumericName),
            ("0x7f.1:443", NumericName),
            ("0x7F.1:443", NumericName),
            ("127.1:443", NumericName),
            ("0177.0.0.1:443", NumericName),
            ("127.000.0.1:443", NumericName),
            ("1.2.3.4.5:443", NumericName),
            ("256.0.0.1:443", NumericName),
            ("127.0.0.0x1:443", NumericName),
            ("example.0x:443", NumericName),
            ("example.0x1F:443", NumericName),
            ("example.123:443", NumericName),
            ("127.0.0.1..:443", TrailingDots),
            ("１２７.1:443", NumericName),
            ("[127.0.0.1]:443", BracketNotIpv6),
            ("[example.com]:443", BracketNotIpv6),
            ("[]:443", BracketNotIpv6),
            ("[fe80::1%25eth0]:443", BracketNotIpv6),
            ("[::1:443", MalformedBrackets),
            ("[::1]x:443", MalformedBrackets),
            ("[::1]]:443", MalformedBrackets),
            ("[[::1]]:443", MalformedBrackets),
            ("::1:443", UnbracketedIpv6),
            ("2001:db8::1", UnbracketedIpv6),
            ("2001:db8::1:443", UnbracketedIpv6),
            ("a:b:443", InvalidCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(parse_authority(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn host_port_default_table() {
        use TargetError::*;
        let ok: Vec<(&str, Target)> = vec![
            ("example.com", t(name("example.com"), 80)),
            ("example.com:8080", t(name("example.com"), 8080)),
            ("Example.COM.", t(name("example.com"), 80)),
            ("[::1]", t(ip("::1"), 80)),
            ("[::1]:81", t(ip("::1"), 81)),
            ("10.0.0.1", t(ip("10.0.0.1"), 80)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_host_port_default(input, 80), Ok(want), "{input:?}");
        }
        let bad: Vec<(&str, TargetError)> = vec![
            ("", Empty),
            ("example.com:", EmptyPort),
            ("example.com:0", PortZero),
            ("user@example.com", Userinfo),
            ("example.com/path", PathOrQuery),
            ("::1", UnbracketedIpv6),
            ("2130706433", NumericName),
            ("[::1]x", MalformedBrackets),
        ];
        for (input, want) in bad {
            assert_eq!(parse_host_port_default(input, 80), Err(want), "{input:?}");
        }
        assert_eq!(parse_host_port_default("example.com", 0), Err(PortZero));
    }

    #[test]
    fn normalize_host_table() {
        use TargetError::*;
        let ok: Vec<(&str, Host)> = vec![
            ("example.com", name("example.com")),
            ("Example.COM.", name("example.com")),
            ("bücher.example", name("xn--bcher-kva.example")),
            ("XN--BCHER-KVA.example", name("xn--bcher-kva.example")),
            ("::1", ip("::1")),
            ("[::1]", ip("::1")),
            (
                "::ffff:10.0.0.1",
                Host::Ip(IpAddr::V6("::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap())),
            ),
            ("10.0.0.1", ip("10.0.0.1")),
            ("10.0.0.1.", ip("10.0.0.1")),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_host(input), Ok(want), "{input:?}");
        }
        let bad: Vec<(&str, TargetError)> = vec![
            ("", Empty),
            (".", EmptyLabel),
            ("example.com..", TrailingDots),
            ("example.com:443", InvalidCharacter),
            ("2130706433", NumericName),
            ("0x7f000001", NumericName),
            ("127.1", NumericName),
            ("[::1]:443", MalformedBrackets),
            ("[10.0.0.1]", BracketNotIpv6),
            ("exa mple", ControlOrWhitespace),
            ("*.example.com", InvalidCharacter),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_host(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn error_messages_are_one_line() {
        let all = [
            TargetError::Invalid("x"),
            TargetError::Empty,
            TargetError::MissingHost,
            TargetError::MissingPort,
            TargetError::EmptyPort,
            TargetError::InvalidPort,
            TargetError::PortZero,
            TargetError::PortOutOfRange,
            TargetError::Userinfo,
            TargetError::PathOrQuery,
            TargetError::ControlOrWhitespace,
            TargetError::LabelTooLong,
            TargetError::NameTooLong,
            TargetError::EmptyLabel,
            TargetError::TrailingDots,
            TargetError::InvalidCharacter,
            TargetError::Idna,
            TargetError::NumericName,
            TargetError::BracketNotIpv6,
            TargetError::MalformedBrackets,
            TargetError::UnbracketedIpv6,
        ];
        for e in all {
            let m = e.to_string();
            assert!(!m.is_empty() && !m.contains(['\n', '\r']), "{m:?}");
            assert!(m.len() < 120, "{m:?}");
        }
    }

    #[test]
    fn display_roundtrip_examples() {
        for s in [
            "example.com:443",
            "[2001:db8::1]:443",
            "10.1.2.3:80",
            "[::ffff:1.2.3.4]:1",
        ] {
            let t = parse_authority(s).unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    fn check_roundtrip(s: &str) {
        if let Ok(t) = parse_authority(s) {
            assert_ne!(t.port, 0);
            let shown = t.to_string();
            assert_eq!(parse_authority(&shown), Ok(t.clone()), "{s:?} -> {shown:?}");
            assert_eq!(normalize_host(&t.host.to_string()), Ok(t.host.clone()));
        }
        if let Ok(t) = parse_host_port_default(s, 443) {
            assert_eq!(parse_authority(&t.to_string()), Ok(t));
        }
        if let Ok(h) = normalize_host(s) {
            if let Host::Name(n) = &h {
                assert!(n.bytes().all(is_name_byte) && !n.ends_with('.'));
                assert!(n.len() <= MAX_NAME_LEN);
            }
            assert_eq!(normalize_host(&h.to_string()), Ok(h.clone()), "{s:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_strings(s in any::<String>()) {
            check_roundtrip(&s);
        }

        #[test]
        fn never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_roundtrip(&String::from_utf8_lossy(&b));
        }

        #[test]
        fn roundtrip_plausible(s in "[a-zA-Z0-9._\\-\\[\\]:üß。０-９]{0,40}(:[0-9]{0,6})?") {
            check_roundtrip(&s);
        }

        #[test]
        fn roundtrip_ips(v6 in any::<u128>(), v4 in any::<u32>(), port in 1u16..) {
            let a = Ipv6Addr::from(v6);
            let t6 = parse_authority(&format!("[{a}]:{port}")).unwrap();
            prop_assert_eq!(t6, Target { host: Host::Ip(IpAddr::V6(a)), port });
            let b = Ipv4Addr::from(v4);
            let t4 = parse_authority(&format!("{b}:{port}")).unwrap();
            prop_assert_eq!(t4, Target { host: Host::Ip(IpAddr::V4(b)), port });
        }
    }
}
