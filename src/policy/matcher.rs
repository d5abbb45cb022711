//! The compiled lookup behind `Policy::decide`: host patterns in hash maps and,
//! per host pattern, sorted port intervals, so a decision costs
//! O(labels in the host name × log ports) whatever the number of rules.
//!
//! Exact names live in one map; `*.suffix` patterns in another, keyed by the
//! suffix. For `a.b.example.com` the lookup tries the exact name, then the
//! wildcard suffixes `b.example.com`, `example.com`, `com` (longest first), so
//! `*.example.com` covers every subdomain but never the apex `example.com`.
//! Only already-normalised names are compared (see `crate::target`).

use std::collections::{BTreeMap, HashMap};

use super::Rule;

/// The outcome of a lookup, before it is turned into a `Decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Allowed by the rule at this index (file order).
    Allow(usize),
    /// Some pattern matches the host, but none of its rules covers the port.
    PortNotAllowed,
    /// No pattern matches the host.
    HostNotAllowed,
}

/// Host patterns → port intervals → rule index.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    /// Exact normalised names.
    exact: HashMap<String, PortMap>,
    /// `*.suffix` patterns, keyed by `suffix`.
    wildcard: HashMap<String, PortMap>,
}

impl Matcher {
    /// Compiles rules (whose hosts are already normalised patterns).
    pub(crate) fn build(rules: &[Rule]) -> Matcher {
        let mut exact: HashMap<String, Vec<Entry>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<Entry>> = HashMap::new();
        for (index, rule) in rules.iter().enumerate() {
            for host in &rule.hosts {
                let (map, key) = match host.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix),
                    None => (&mut exact, host.as_str()),
                };
                let entries = map.entry(key.to_string()).or_default();
                entries.extend(rule.ports.iter().map(|&(lo, hi)| Entry { lo, hi, index }));
            }
        }
        let compile = |map: HashMap<String, Vec<Entry>>| {
            map.into_iter()
                .map(|(key, entries)| (key, PortMap::build(entries)))
                .collect()
        };
        Matcher {
            exact: compile(exact),
            wildcard: compile(wildcard),
        }
    }

    /// Finds the rule for a normalised host name and port.
    ///
    /// The exact entry is tried first, then wildcard suffixes from longest to
    /// shortest; the first whose intervals cover the port wins.
    pub(crate) fn lookup(&self, name: &str, port: u16) -> Lookup {
        let mut host_matched = false;
        if let Some(ports) = self.exact.get(name) {
            host_matched = true;
            if let Some(index) = ports.get(port) {
                return Lookup::Allow(index);
            }
        }
        let mut rest = name;
        while let Some((label, suffix)) = rest.split_once('.') {
            // A wildcard stands for at least one whole, non-empty label.
            if label.is_empty() {
                break;
            }
            if let Some(ports) = self.wildcard.get(suffix) {
                host_matched = true;
                if let Some(index) = ports.get(port) {
                    return Lookup::Allow(index);
                }
            }
            rest = suffix;
        }
        if host_matched {
            Lookup::PortNotAllowed
        } else {
            Lookup::HostNotAllowed
        }
    }
}

/// One rule's inclusive port range for one host pattern.
#[derive(Debug, Clone, Copy)]
struct Entry {
    lo: u16,
    hi: u16,
    index: usize,
}

/// Sorted, non-overlapping inclusive port intervals, each owned by the first
/// rule (in file order) that covers it: O(log n) lookup.
#[derive(Debug, Clone, Default)]
struct PortMap {
    segments: Vec<Entry>,
}

impl PortMap {
    /// Sweeps the range boundaries; between two boundaries the owner is the
    /// lowest rule index among the ranges open there. O(n log n).
    fn build(entries: Vec<Entry>) -> PortMap {
        // (point, is_end, rule index); an end event sits one past the range,
        // so points go up to 65536 and need u32.
        let mut events: Vec<(u32, bool, usize)> = Vec::with_capacity(entries.len() * 2);
        for e in &entries {
            events.push((u32::from(e.lo), false, e.index));
            events.push((u32::from(e.hi) + 1, true, e.index));
        }
        events.sort_unstable();
        // Rule index → how many of its ranges are open (a rule may repeat a host).
        let mut open: BTreeMap<usize, usize> = BTreeMap::new();
        let mut segments: Vec<Entry> = Vec::new();
        let mut i = 0;
        while i < events.len() {
            let point = events[i].0;
            while i < events.len() && events[i].0 == point {
                let (_, is_end, index) = events[i];
                if is_end {
                    if let Some(count) = open.get_mut(&index) {
                        *count -= 1;
                        if *count == 0 {
                            open.remove(&index);
                        }
                    }
                } else {
                    *open.entry(index).or_insert(0) += 1;
                }
                i += 1;
            }
            let (Some((&owner, _)), Some(&(next, _, _))) = (open.first_key_value(), events.get(i))
            else {
                continue;
            };
            // `point < next <= 65536`, and an open range means `point <= 65535`.
            let (Ok(lo), Ok(hi)) = (u16::try_from(point), u16::try_from(next - 1)) else {
                continue;
            };
            match segments.last_mut() {
                Some(last) if last.index == owner && u32::from(last.hi) + 1 == point => {
                    last.hi = hi;
                }
                _ => segments.push(Entry {
                    lo,
                    hi,
                    index: owner,
                }),
            }
        }
        PortMap { segments }
    }

    /// The rule index covering `port`, if any.
    fn get(&self, port: u16) -> Option<usize> {
        let after = self.segments.partition_point(|s| s.lo <= port);
        let segment = self.segments.get(after.checked_sub(1)?)?;
        (port <= segment.hi).then_some(segment.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::TlsMode;

    fn rule(name: &str, hosts: &[&str], ports: &[(u16, u16)]) -> Rule {
        Rule {
            name: name.to_string(),
            description: String::new(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ports: ports.to_vec(),
            tls: TlsMode::Required,
        }
    }

    #[test]
    fn port_map_first_rule_wins_on_overlap() {
        let entries = [
            (10, 20, 1),
            (15, 30, 0),
            (25, 40, 2),
            (50, 50, 3),
            (51, 60, 3),
        ]
        .map(|(lo, hi, index)| Entry { lo, hi, index });
        let map = PortMap::build(entries.to_vec());
        let table: &[(u16, Option<usize>)] = &[
            (1, None),
            (9, None),
            (10, Some(1)),
            (14, Some(1)),
            (15, Some(0)),
            (30, Some(0)),
            (31, Some(2)),
            (40, Some(2)),
            (41, None),
            (49, None),
            (50, Some(3)),
            (60, Some(3)),
            (61, None),
            (65535, None),
        ];
        for &(port, want) in table {
            assert_eq!(map.get(port), want, "port {port}");
        }
        // Adjacent segments of the same rule are merged.
        assert_eq!(map.segments.len(), 4);
    }

    #[test]
    fn port_map_edges() {
        let map = PortMap::build(vec![Entry {
            lo: 1,
            hi: 65535,
            index: 7,
        }]);
        assert_eq!(map.get(0), None);
        assert_eq!(map.get(1), Some(7));
        assert_eq!(map.get(65535), Some(7));
        let empty = PortMap::build(Vec::new());
        assert_eq!(empty.get(443), None);
        let dup = PortMap::build(vec![
            Entry {
                lo: 443,
                hi: 443,
                index: 0,
            },
            Entry {
                lo: 443,
                hi: 443,
                index: 0,
            },
        ]);
        assert_eq!(dup.get(443), Some(0));
        assert_eq!(dup.get(444), None);
    }

    #[test]
    fn lookup_table() {
        use Lookup::*;
        let rules = [
            rule("wild", &["*.example.com"], &[(443, 443)]),
            rule("exact", &["a.example.com"], &[(8443, 8443)]),
            rule("deep", &["*.b.example.com"], &[(443, 443), (80, 80)]),
            rule("range", &["r.test"], &[(2001, 2500)]),
            rule("range2", &["r.test"], &[(2400, 3000)]),
        ];
        let m = Matcher::build(&rules);
        let table: &[(&str, u16, Lookup)] = &[
            ("a.example.com", 8443, Allow(1)),
            ("a.example.com", 443, Allow(0)),
            ("a.example.com", 80, PortNotAllowed),
            ("x.b.example.com", 443, Allow(2)),
            ("x.b.example.com", 80, Allow(2)),
            ("b.example.com", 80, PortNotAllowed),
            ("example.com", 443, HostNotAllowed),
            ("com", 443, HostNotAllowed),
            ("", 443, HostNotAllowed),
            (".example.com", 443, HostNotAllowed),
            ("x..example.com", 443, HostNotAllowed),
            ("example.com.evil", 443, HostNotAllowed),
            ("r.test", 2000, PortNotAllowed),
            ("r.test", 2001, Allow(3)),
            ("r.test", 2450, Allow(3)),
            ("r.test", 2501, Allow(4)),
            ("r.test", 3000, Allow(4)),
            ("r.test", 3001, PortNotAllowed),
        ];
        for &(host, port, want) in table {
            assert_eq!(m.lookup(host, port), want, "{host}:{port}");
        }
    }

    /// The same precedence, by a linear scan: the reference for the proptest.
    fn naive(rules: &[Rule], name: &str, port: u16) -> Lookup {
        let mut patterns = vec![name.to_string()];
        let mut rest = name;
        while let Some((label, suffix)) = rest.split_once('.') {
            if label.is_empty() {
                break;
            }
            patterns.push(format!("*.{suffix}"));
            rest = suffix;
        }
        let mut host_matched = false;
        for pattern in &patterns {
            for (index, rule) in rules.iter().enumerate() {
                if rule.hosts.iter().any(|h| h == pattern) {
                    host_matched = true;
                    if rule.ports.iter().any(|&(lo, hi)| lo <= port && port <= hi) {
                        return Lookup::Allow(index);
                    }
                }
            }
        }
        if host_matched {
            Lookup::PortNotAllowed
        } else {
            Lookup::HostNotAllowed
        }
    }

    const PATTERNS: [&str; 6] = ["a.b.c", "b.c", "*.b.c", "*.c", "c", "*.a.b.c"];
    const NAMES: [&str; 6] = ["a.b.c", "b.c", "c", "x.a.b.c", "x.b.c", "d.c"];

    proptest::proptest! {
        #[test]
        fn matches_linear_scan(
            raw in proptest::collection::vec(
                (
                    proptest::collection::vec(0..PATTERNS.len(), 1..3),
                    proptest::collection::vec((1u16..40, 0u16..10), 1..4),
                ),
                0..12,
            ),
            probes in proptest::collection::vec((0..NAMES.len(), 0u16..52), 1..40),
        ) {
            let rules: Vec<Rule> = raw
                .iter()
                .enumerate()
                .map(|(i, (hosts, ports))| {
                    let hosts: Vec<&str> = hosts.iter().map(|&h| PATTERNS[h]).collect();
                    let ports: Vec<(u16, u16)> =
                        ports.iter().map(|&(lo, len)| (lo, lo + len)).collect();
                    rule(&format!("r{i}"), &hosts, &ports)
                })
                .collect();
            let m = Matcher::build(&rules);
            for (name, port) in probes {
                let name = NAMES[name];
                proptest::prop_assert_eq!(m.lookup(name, port), naive(&rules, name, port));
            }
        }
    }

    #[test]
    fn hundred_thousand_rules() {
        const N: usize = 100_000;
        let rules: Vec<Rule> = (0..N)
            .map(|i| {
                let port = (1 + i % 65535) as u16;
                rule(
                    &format!("r{i}"),
                    &[&format!("h{i}.example.com"), "shared.example.com"],
                    &[(port, port)],
                )
            })
            .collect();
        let m = Matcher::build(&rules);
        for i in [0, 1, 65_534, 65_535, 99_999] {
            let port = (1 + i % 65535) as u16;
            assert_eq!(
                m.lookup(&format!("h{i}.example.com"), port),
                Lookup::Allow(i)
            );
            // On the shared host, the first rule in file order owns each port.
            assert_eq!(
                m.lookup("shared.example.com", port),
                Lookup::Allow(i % 65535)
            );
        }
        assert_eq!(m.lookup("h5.example.com", 1), Lookup::PortNotAllowed);
        assert_eq!(m.lookup("nope.example.com", 1), Lookup::HostNotAllowed);
    }
}
