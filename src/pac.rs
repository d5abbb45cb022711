//! The PAC file (proxy auto-config) served at `/proxy.pac` and `/wpad.dat`
//! and printed by `portcullis pac`: policy hosts via the proxies, the rest
//! DIRECT (`pac.mode = "allowlist"`), or everything proxied (`"all"`). It
//! never calls `dnsResolve`/`isResolvable`, which stall browsers.

use std::fmt::Write;

use crate::config::PacMode;
use crate::policy::Policy;

/// Content type PAC clients expect.
pub const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// Renders the PAC file for `policy`.
pub fn render(policy: &Policy, proxies: &[String], mode: PacMode) -> String {
    let route = if proxies.is_empty() {
        "DIRECT".to_owned()
    } else {
        proxies
            .iter()
            .map(|p| format!("PROXY {p}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let route = js_string(&route);
    let mut out = String::new();
    out.push_str("// portcullis proxy auto-config; generated from the policy in force.\n");
    out.push_str("function FindProxyForURL(url, host) {\n");
    match mode {
        PacMode::All => {
            let _ = writeln!(out, "  return {route};");
        }
        PacMode::Allowlist => {
            out.push_str("  host = host.toLowerCase();\n");
            out.push_str("  if (host.charAt(host.length - 1) == \".\") host = host.substring(0, host.length - 1);\n");
            // Policy hosts are already normalised (lower case, A-labels);
            // lower-casing again keeps the PAC right whatever the source.
            let mut exact: Vec<String> = Vec::new();
            let mut suffixes: Vec<String> = Vec::new();
            for rule in policy.rules() {
                for h in &rule.hosts {
                    let h = h.to_ascii_lowercase();
                    match h.strip_prefix("*.") {
                        Some(s) => suffixes.push(s.to_owned()),
                        None => exact.push(h),
                    }
                }
            }
            exact.sort_unstable();
            exact.dedup();
            suffixes.sort_unstable();
            suffixes.dedup();
            for h in exact {
                let _ = writeln!(out, "  if (host == {}) return {route};", js_string(&h));
            }
            for s in suffixes {
                // "*.example.com" is any subdomain, not the apex: dnsDomainIs with a leading dot.
                let _ = writeln!(
                    out,
                    "  if (dnsDomainIs(host, {})) return {route};",
                    js_string(&format!(".{s}"))
                );
            }
            out.push_str("  return \"DIRECT\";\n");
        }
    }
    out.push_str("}\n");
    out
}

/// A double-quoted JavaScript string literal with everything outside
/// printable ASCII (and quotes, backslashes, `<`, `>`) escaped.
fn js_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' | '<' | '>' | '\'' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_hostile_text() {
        assert_eq!(
            js_string("a\"b\\c</script>"),
            "\"a\\u0022b\\u005cc\\u003c/script\\u003e\""
        );
    }

    #[test]
    fn allowlist_lists_seed_hosts_and_never_resolves() {
        let pac = render(
            &Policy::builtin(),
            &["p1:3128".into(), "p2:3128".into()],
            PacMode::Allowlist,
        );
        assert!(pac.contains("if (host == \"connect.helpdeskbuttons.com\") return \"PROXY p1:3128; PROXY p2:3128\";"), "{pac}");
        assert!(pac.contains("return \"DIRECT\";"));
        assert!(!pac.contains("dnsResolve") && !pac.contains("isResolvable"));
    }
}
