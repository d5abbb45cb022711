//! The upstream address check: every resolved address is tested against
//! `upstream.deny_cidrs` / `allow_cidrs` before any dial. IPv4-mapped,
//! IPv4-compatible, NAT64 (64:ff9b::/96) and 6to4 (2002::/16) IPv6 forms are
//! also checked as the IPv4 address they carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Deny ranges with their exceptions.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// Builds the check from the configured ranges.
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>) -> Self {
        AddressPolicy { deny, allow }
    }

    /// True if the proxy may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        [Some(ip), embedded].into_iter().flatten().all(|form| {
            !self.deny.iter().any(|n| n.contains(&form))
                || self.allow.iter().any(|n| n.contains(&form))
        })
    }
}

/// The IPv4 address an IPv6 address carries, for the forms a host stack or
/// a translator would turn into an IPv4 connection.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4); // ::ffff:a.b.c.d
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15])); // ::a.b.c.d (deprecated compat)
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15])); // NAT64 well-known / local-use
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])); // 6to4
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_DENY_CIDRS;

    fn default_policy(allow: &[&str]) -> AddressPolicy {
        AddressPolicy::new(
            DEFAULT_DENY_CIDRS
                .iter()
                .map(|c| c.parse().unwrap())
                .collect(),
            allow.iter().map(|c| c.parse().unwrap()).collect(),
        )
    }

    #[test]
    fn default_ranges_are_prohibited_in_every_spelling() {
        let p = default_policy(&[]);
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "::10.0.0.1",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            assert!(!p.permits(ip.parse().unwrap()), "{ip} should be prohibited");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
            "8.8.8.8",
        ] {
            assert!(p.permits(ip.parse().unwrap()), "{ip} should be permitted");
        }
    }

    #[test]
    fn allow_cidrs_make_exceptions() {
        let p = default_policy(&["127.0.0.0/8"]);
        assert!(p.permits("127.0.0.2".parse().unwrap()));
        assert!(p.permits("::ffff:127.0.0.2".parse().unwrap()));
        assert!(!p.permits("10.1.1.1".parse().unwrap()));
        assert!(!p.permits("::1".parse().unwrap()));
    }
}
