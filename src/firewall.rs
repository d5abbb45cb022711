//! `portcullis firewall`: host firewall rules generated from the config.
//!
//! Three things, all derived from the listeners, `clients.allow` and
//! `[[inbound]]`:
//!
//! 1. **Listener guards** (input hook): an inbound listener's port is open
//!    only to that inbound's `sources`; the proxy, SNI and admin ports only
//!    to `clients.allow`. Anything else sent to those ports is dropped (a port
//!    scan from elsewhere gets no answer at all).
//! 2. **Client egress only through the proxy** (forward hook): traffic that a
//!    client range routes *through* this host is refused at once (TCP reset,
//!    ICMP administratively prohibited), so a program that ignores the PAC or
//!    proxy setting fails visibly instead of leaking. Traffic between client
//!    ranges (site-internal routing) is left to the host's own rules, and so
//!    are replies of connections that were let in.
//! 3. **Transparent redirect** (prerouting nat), when an `[sni]` listener can
//!    take it (`original_dst = true` or `port = 443`): client tcp/443 to
//!    non-site, non-local addresses goes to the SNI listener. Prerouting only
//!    sees packets that arrive on an interface; the proxy's own upstream
//!    connections are generated locally (output hook) and are never
//!    redirected, so this cannot loop.
//!
//! The rules only take traffic away: nftables output lives in its own table
//! (`inet portcullis`, replaced as a whole on each load, other tables
//! untouched; an `accept` there does not override another table's drop), and
//! the iptables output jumps to `PORTCULLIS-*` chains that only `DROP`,
//! `REJECT` or `RETURN`. Ports portcullis does not listen on (SSH, …) are not
//! touched, so loading the rules cannot lock an operator out.
//!
//! [`render`] is a pure function of the [`Config`]; the output is meant for
//! `nft -f`, `iptables-restore` and `ip6tables-restore` and is checked with
//! those tools in `tests/firewall.rs`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::config::{Config, SniListen};

/// Output format of `portcullis firewall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One `nft -f` file: table `inet portcullis`, IPv4 and IPv6.
    Nftables,
    /// `iptables-restore` input (IPv4).
    Iptables,
    /// `ip6tables-restore` input (IPv6).
    Ip6tables,
}

/// IP family of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }

    /// nftables address expression prefix (`ip` / `ip6`).
    fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Which source list may reach a guarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sources {
    /// `clients.allow`.
    Clients,
    /// `inbound[i].sources`.
    Inbound(usize),
}

/// One listening port to guard.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Guard {
    /// What listens there (for the comment).
    what: String,
    addr: SocketAddr,
    sources: Sources,
}

impl Guard {
    /// The destination this guard matches in `family`: `None` if the socket
    /// cannot receive that family, `Some(None)` for any local address,
    /// `Some(Some(ip))` for one address.
    fn daddr(&self, family: Family) -> Option<Option<IpAddr>> {
        reachable(self.addr.ip(), family)
    }
}

/// Can a socket bound to `ip` receive `family` traffic, and on which address?
/// A `[::]` socket is dual-stack on Linux (unless `net.ipv6.bindv6only=1`,
/// in which case the extra IPv4 rule is merely redundant).
fn reachable(ip: IpAddr, family: Family) -> Option<Option<IpAddr>> {
    match (ip, family) {
        (IpAddr::V4(v4), Family::V4) if v4.is_unspecified() => Some(None),
        (IpAddr::V4(v4), Family::V4) => Some(Some(IpAddr::V4(v4))),
        (IpAddr::V4(_), Family::V6) => None,
        (IpAddr::V6(v6), _) if v6.is_unspecified() => Some(None),
        (IpAddr::V6(v6), Family::V4) => v6.to_ipv4_mapped().map(|m| Some(IpAddr::V4(m))),
        (IpAddr::V6(v6), Family::V6) if v6.to_ipv4_mapped().is_some() => None,
        (IpAddr::V6(v6), Family::V6) => Some(Some(IpAddr::V6(v6))),
    }
}

/// Where client tcp/443 of one family is redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Redirect {
    /// `redirect` to this port on the address the packet arrived on.
    Port(u16),
    /// `dnat` to this address (the SNI listener is bound to one address).
    To(SocketAddr),
}

/// Everything the renderers need, derived once from the config.
struct Plan<'a> {
    config: &'a Config,
    guards: Vec<Guard>,
}

impl<'a> Plan<'a> {
    fn new(config: &'a Config) -> Plan<'a> {
        let mut guards = Vec::new();
        let mut push = |what: String, addr: SocketAddr, sources: Sources| {
            if !guards
                .iter()
                .any(|g: &Guard| g.addr == addr && g.sources == sources)
            {
                guards.push(Guard {
                    what,
                    addr,
                    sources,
                });
            }
        };
        for (i, inbound) in config.inbound.iter().enumerate() {
            push(
                format!(
                    "inbound \"{}\" {} (forward {}): its sources only",
                    inbound.name, inbound.listen, inbound.forward
                ),
                inbound.listen,
                Sources::Inbound(i),
            );
        }
        for addr in &config.proxy_listen {
            push(
                format!("proxy listener {addr}: clients.allow only"),
                *addr,
                Sources::Clients,
            );
        }
        for sni in &config.sni_listen {
            push(
                format!("SNI listener {}: clients.allow only", sni.addr),
                sni.addr,
                Sources::Clients,
            );
        }
        if let Some(addr) = config.admin_listen {
            push(
                format!("admin listener {addr} (/metrics, /proxy.pac): clients.allow only"),
                addr,
                Sources::Clients,
            );
        }
        // Rules scoped to one address first, so that a wildcard guard on the
        // same port never shadows them.
        guards.sort_by_key(|g| g.addr.ip().is_unspecified());
        Plan { config, guards }
    }

    fn nets(&self, sources: Sources) -> &[IpNet] {
        match sources {
            Sources::Clients => &self.config.clients_allow,
            Sources::Inbound(i) => &self.config.inbound[i].sources,
        }
    }

    fn nets_of(&self, sources: Sources, family: Family) -> Vec<IpNet> {
        self.nets(sources)
            .iter()
            .filter(|n| family.holds(n))
            .copied()
            .collect()
    }

    fn clients(&self, family: Family) -> Vec<IpNet> {
        self.nets_of(Sources::Clients, family)
    }

    /// The SNI listener that takes client tcp/443 of `family`, if any.
    fn redirect(&self, family: Family) -> Option<(&SniListen, Redirect)> {
        let exact = |s: &SniListen| match family {
            Family::V4 => s.addr.is_ipv4(),
            Family::V6 => s.addr.is_ipv6(),
        };
        let usable = || {
            self.config
                .sni_listen
                .iter()
                .filter(|s| s.original_dst || s.port == 443)
        };
        // Prefer a socket of the family itself, then a dual-stack [::].
        let ordered = usable()
            .filter(|s| exact(s))
            .chain(usable().filter(|s| !exact(s)));
        for s in ordered {
            match reachable(s.addr.ip(), family) {
                Some(None) => return Some((s, Redirect::Port(s.addr.port()))),
                // A packet from another host cannot be sent to loopback.
                Some(Some(ip)) if !ip.is_loopback() => {
                    return Some((s, Redirect::To(SocketAddr::new(ip, s.addr.port()))))
                }
                _ => {}
            }
        }
        None
    }

    fn source_name(&self) -> String {
        match &self.config.file {
            Some(p) => p.display().to_string(),
            None => "the built-in default config".to_owned(),
        }
    }

    /// Why there is no redirect for `family` although SNI listeners exist.
    fn no_redirect_reason(&self, family: Family) -> Option<String> {
        if self.config.sni_listen.is_empty() || self.redirect(family).is_some() {
            return None;
        }
        Some(format!(
            "no transparent redirect for {}: no [sni] listener that takes it (needs original_dst = true or port = 443, \
             bound to a non-loopback {} address or to [::])",
            match family {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
            },
            match family {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
            },
        ))
    }
}

/// Renders the rules for `config` in `format`.
pub fn render(config: &Config, format: Format) -> String {
    let plan = Plan::new(config);
    match format {
        Format::Nftables => nftables(&plan),
        Format::Iptables => iptables(&plan, Family::V4),
        Format::Ip6tables => iptables(&plan, Family::V6),
    }
}

/// nftables set name for a source list.
fn set_name(plan: &Plan<'_>, sources: Sources, family: Family) -> String {
    match sources {
        Sources::Clients => format!("clients_{}", family.suffix()),
        Sources::Inbound(i) => format!(
            "inbound_{}_{}",
            plan.config.inbound[i].name.replace('-', "_"),
            family.suffix()
        ),
    }
}

fn nft_set(out: &mut String, name: &str, family: Family, nets: &[IpNet]) {
    let ty = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    let _ = write!(
        out,
        "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n\t\tauto-merge\n"
    );
    if !nets.is_empty() {
        let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n");
}

fn nftables(plan: &Plan<'_>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "#!/usr/sbin/nft -f\n\
         # portcullis firewall rules (nftables), generated by\n\
         # `portcullis firewall --format nftables` from {}.\n\
         # Regenerate after changing listeners, clients.allow or [[inbound]].\n\
         #\n\
         # Check:  nft -c -f FILE\n\
         # Load:   nft -f FILE     (replaces only table inet portcullis; other tables stay)\n\
         # Remove: nft delete table inet portcullis\n\
         #\n\
         # These rules only take traffic away: an accept here ends this table's\n\
         # verdict, not the host's own firewall's, and no port portcullis does\n\
         # not listen on is touched.",
        plan.source_name()
    );
    for family in [Family::V4, Family::V6] {
        if plan.clients(family).is_empty() && family == Family::V6 {
            o.push_str(
                "#\n# clients.allow names no IPv6 range: IPv6 that clients route through this\n\
                 # host is not refused here (add the site's IPv6 ranges to clients.allow,\n\
                 # or turn IPv6 forwarding off).\n",
            );
        }
        if let Some(why) = plan.no_redirect_reason(family) {
            let _ = writeln!(o, "#\n# {why}.");
        }
    }
    o.push_str(
        "\ntable inet portcullis\ndelete table inet portcullis\n\ntable inet portcullis {\n",
    );

    // Sets: clients, then one pair per inbound.
    o.push_str("\t# clients.allow: may use the proxy, SNI and admin listeners; their forwarded traffic is refused.\n");
    for family in [Family::V4, Family::V6] {
        nft_set(
            &mut o,
            &set_name(plan, Sources::Clients, family),
            family,
            &plan.clients(family),
        );
    }
    for (i, inbound) in plan.config.inbound.iter().enumerate() {
        let _ = writeln!(
            o,
            "\t# inbound \"{}\" sources: the only addresses that may reach {}.",
            inbound.name, inbound.listen
        );
        for family in [Family::V4, Family::V6] {
            nft_set(
                &mut o,
                &set_name(plan, Sources::Inbound(i), family),
                family,
                &plan.nets_of(Sources::Inbound(i), family),
            );
        }
    }

    // Input: listener guards.
    o.push_str(
        "\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\
         \t\tct state established,related accept\n",
    );
    for g in &plan.guards {
        let _ = writeln!(o, "\t\t# {}", g.what);
        let port = g.addr.port();
        let v4 = g.daddr(Family::V4);
        let v6 = g.daddr(Family::V6);
        let mut drops = Vec::new();
        for (family, daddr) in [(Family::V4, v4), (Family::V6, v6)] {
            let Some(daddr) = daddr else { continue };
            let scope = match daddr {
                Some(ip) => format!("{} daddr {ip} tcp dport {port}", family.nft()),
                None if v4.is_some() && v6.is_some() => format!("tcp dport {port}"),
                None => format!("meta nfproto ipv{} tcp dport {port}", family_num(family)),
            };
            let _ = writeln!(
                o,
                "\t\t{scope} {} saddr @{} accept",
                family.nft(),
                set_name(plan, g.sources, family)
            );
            if !drops.contains(&scope) {
                drops.push(scope);
            }
        }
        for scope in drops {
            let _ = writeln!(o, "\t\t{scope} counter drop");
        }
    }
    o.push_str("\t}\n");

    // Forward: client egress only through the proxy.
    o.push_str(
        "\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\t# Site-internal routing between client ranges is left to the host's own rules.\n\
         \t\tip saddr @clients_v4 ip daddr @clients_v4 accept\n\
         \t\tip6 saddr @clients_v6 ip6 daddr @clients_v6 accept\n\
         \t\t# Anything else a client routes through this host is refused at once: a program\n\
         \t\t# that ignores the PAC / proxy setting fails visibly instead of leaking.\n\
         \t\tip saddr @clients_v4 meta l4proto tcp counter reject with tcp reset\n\
         \t\tip saddr @clients_v4 counter reject with icmpx type admin-prohibited\n\
         \t\tip6 saddr @clients_v6 meta l4proto tcp counter reject with tcp reset\n\
         \t\tip6 saddr @clients_v6 counter reject with icmpx type admin-prohibited\n\
         \t}\n",
    );

    // Prerouting: transparent redirect of client tcp/443.
    let redirects: Vec<(Family, &SniListen, Redirect)> = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| plan.redirect(f).map(|(s, r)| (f, s, r)))
        .collect();
    if !redirects.is_empty() {
        o.push_str(
            "\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
             \t\t# Transparent mode: client tcp/443 to the internet goes to the SNI listener.\n\
             \t\t# No loop: prerouting only sees packets that arrive on an interface; the proxy's\n\
             \t\t# own upstream connections are generated locally (output hook) and are never\n\
             \t\t# redirected. Never copy these rules into an output chain without excluding the\n\
             \t\t# proxy's user (meta skuid), see deploy/firewall/nftables-transparent.nft.\n",
        );
        for (family, sni, r) in redirects {
            let f = family.nft();
            let set = set_name(plan, Sources::Clients, family);
            let action = match r {
                Redirect::Port(p) => format!("redirect to :{p}"),
                Redirect::To(a) => format!("dnat {f} to {a}"),
            };
            let _ = writeln!(
                o,
                "\t\t# -> SNI listener {} ({})\n\
                 \t\t{f} saddr @{set} {f} daddr != @{set} fib daddr type != local tcp dport 443 {action}",
                sni.addr,
                sni_desc(sni)
            );
        }
        o.push_str("\t}\n");
    }
    o.push_str("}\n");
    o
}

fn family_num(family: Family) -> u8 {
    match family {
        Family::V4 => 4,
        Family::V6 => 6,
    }
}

fn sni_desc(sni: &SniListen) -> String {
    if sni.original_dst {
        "original_dst = true".to_owned()
    } else {
        format!("port = {}", sni.port)
    }
}

fn iptables(plan: &Plan<'_>, family: Family) -> String {
    let (tool, other, reject) = match family {
        Family::V4 => ("iptables", "ip6tables", "icmp-admin-prohibited"),
        Family::V6 => ("ip6tables", "iptables", "icmp6-adm-prohibited"),
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# portcullis firewall rules ({tool}, IPv{}), generated by\n\
         # `portcullis firewall --format {tool}` from {}.\n\
         # Regenerate after changing listeners, clients.allow or [[inbound]].\n\
         #\n\
         # Check: {tool}-restore --test < FILE\n\
         # Load:  {tool}-restore < FILE\n\
         # Loading replaces the tables below as a whole (their built-in chains get\n\
         # policy ACCEPT and only the jumps to PORTCULLIS-* chains). To keep rules of\n\
         # your own, merge the PORTCULLIS-* chains and the jumps into your rules file.\n\
         # The PORTCULLIS-* chains only DROP, REJECT or RETURN: ports portcullis does\n\
         # not listen on are not touched. The other family: --format {other}.",
        family_num(family),
        plan.source_name()
    );
    let clients = plan.clients(family);
    if clients.is_empty() {
        let _ = writeln!(
            o,
            "#\n# clients.allow names no IPv{} range: no client may use the listeners over\n\
             # IPv{}, and forwarded IPv{} is not refused here.",
            family_num(family),
            family_num(family),
            family_num(family)
        );
    }
    if let Some(why) = plan.no_redirect_reason(family) {
        let _ = writeln!(o, "#\n# {why}.");
    }

    // filter table.
    let mut chains = vec![
        "PORTCULLIS-INPUT".to_owned(),
        "PORTCULLIS-FORWARD".to_owned(),
        "PORTCULLIS-FROM-CLIENT".to_owned(),
        "PORTCULLIS-CLIENTS".to_owned(),
    ];
    for i in 0..plan.config.inbound.len() {
        chains.push(src_chain(Sources::Inbound(i)));
    }
    o.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for c in &chains {
        let _ = writeln!(o, ":{c} - [0:0]");
    }
    o.push_str(
        "-A INPUT -j PORTCULLIS-INPUT\n-A FORWARD -j PORTCULLIS-FORWARD\n\
         -A PORTCULLIS-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n",
    );
    for g in &plan.guards {
        let Some(daddr) = g.daddr(family) else {
            continue;
        };
        let _ = writeln!(o, "# {}", g.what);
        let dst = daddr.map(|ip| format!(" -d {ip}")).unwrap_or_default();
        let _ = writeln!(
            o,
            "-A PORTCULLIS-INPUT{dst} -p tcp --dport {} -j {}",
            g.addr.port(),
            src_chain(g.sources)
        );
    }
    // Source-list chains: RETURN for a listed source, DROP for the rest.
    let mut lists = vec![Sources::Clients];
    lists.extend((0..plan.config.inbound.len()).map(Sources::Inbound));
    for s in lists {
        let label = match s {
            Sources::Clients => "clients.allow".to_owned(),
            Sources::Inbound(i) => format!("inbound \"{}\" sources", plan.config.inbound[i].name),
        };
        let _ = writeln!(o, "# {label}");
        let chain = src_chain(s);
        for net in plan.nets_of(s, family) {
            let _ = writeln!(o, "-A {chain} -s {net} -j RETURN");
        }
        let _ = writeln!(o, "-A {chain} -j DROP");
    }
    o.push_str(
        "# Forwarded traffic from a client range: only site-internal routing passes.\n\
         -A PORTCULLIS-FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN\n",
    );
    for net in &clients {
        let _ = writeln!(
            o,
            "-A PORTCULLIS-FORWARD -s {net} -j PORTCULLIS-FROM-CLIENT"
        );
    }
    for net in &clients {
        let _ = writeln!(o, "-A PORTCULLIS-FROM-CLIENT -d {net} -j RETURN");
    }
    let _ = write!(
        o,
        "# Anything else is refused at once: a program that ignores the PAC / proxy\n\
         # setting fails visibly instead of leaking.\n\
         -A PORTCULLIS-FROM-CLIENT -p tcp -j REJECT --reject-with tcp-reset\n\
         -A PORTCULLIS-FROM-CLIENT -j REJECT --reject-with {reject}\n\
         COMMIT\n"
    );

    // nat table: the transparent redirect.
    if let Some((sni, r)) = plan.redirect(family) {
        let target = match r {
            Redirect::Port(p) => format!("REDIRECT --to-ports {p}"),
            Redirect::To(a) => format!("DNAT --to-destination {a}"),
        };
        let _ = writeln!(
            o,
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
             :PORTCULLIS-TRANSPARENT - [0:0]\n\
             # Transparent mode: client tcp/443 to the internet goes to the SNI listener\n\
             # {} ({}). No loop: PREROUTING only sees packets that arrive on an\n\
             # interface; the proxy's own upstream connections are generated locally\n\
             # (OUTPUT) and are never redirected. Never copy this into OUTPUT without\n\
             # excluding the proxy's user (-m owner ! --uid-owner), see\n\
             # deploy/firewall/iptables-transparent.rules.\n\
             -A PREROUTING -p tcp --dport 443 -m addrtype ! --dst-type LOCAL -j PORTCULLIS-TRANSPARENT",
            sni.addr,
            sni_desc(sni)
        );
        for net in &clients {
            let _ = writeln!(o, "-A PORTCULLIS-TRANSPARENT -d {net} -j RETURN");
        }
        for net in &clients {
            let _ = writeln!(o, "-A PORTCULLIS-TRANSPARENT -s {net} -p tcp -j {target}");
        }
        o.push_str("COMMIT\n");
    }
    o
}

/// iptables chain that checks a source list.
fn src_chain(sources: Sources) -> String {
    match sources {
        Sources::Clients => "PORTCULLIS-CLIENTS".to_owned(),
        // Chain names are limited to 28 characters: number them.
        Sources::Inbound(i) => format!("PORTCULLIS-INBOUND-{}", i + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Inbound;

    fn base() -> Config {
        let mut c = Config::load_from(None, Some(Default::default())).unwrap();
        c.proxy_listen = vec!["0.0.0.0:3128".parse().unwrap()];
        c.admin_listen = Some("10.20.0.5:9128".parse().unwrap());
        c.clients_allow = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ];
        c.sni_listen = vec![SniListen {
            addr: "0.0.0.0:8443".parse().unwrap(),
            port: 443,
            original_dst: true,
        }];
        c.inbound = vec![Inbound {
            name: "ticket-api".into(),
            listen: "0.0.0.0:9443".parse().unwrap(),
            forward: "tickets.corp.example:443".into(),
            sources: vec![
                "174.129.157.90/32".parse().unwrap(),
                "54.146.159.96/32".parse().unwrap(),
            ],
        }];
        c
    }

    #[test]
    fn nftables_guards_every_listener_with_its_own_sources() {
        let out = render(&base(), Format::Nftables);
        assert!(
            out.contains("elements = { 10.0.0.0/8, 192.168.0.0/16 }"),
            "{out}"
        );
        assert!(
            out.contains("set inbound_ticket_api_v4 {")
                && out.contains("elements = { 174.129.157.90/32, 54.146.159.96/32 }"),
            "{out}"
        );
        assert!(out.contains(
            "meta nfproto ipv4 tcp dport 9443 ip saddr @inbound_ticket_api_v4 accept\n\t\tmeta nfproto ipv4 tcp dport 9443 counter drop"
        ), "{out}");
        assert!(out.contains("meta nfproto ipv4 tcp dport 3128 ip saddr @clients_v4 accept"));
        assert!(out.contains("meta nfproto ipv4 tcp dport 8443 ip saddr @clients_v4 accept"));
        assert!(out.contains("ip daddr 10.20.0.5 tcp dport 9128 ip saddr @clients_v4 accept\n\t\tip daddr 10.20.0.5 tcp dport 9128 counter drop"), "{out}");
        // The address-scoped admin guard comes before the wildcard ones.
        assert!(out.find("dport 9128").unwrap() < out.find("dport 3128").unwrap());
        // The inbound port is not opened to clients.
        assert!(!out.contains("dport 9443 ip saddr @clients_v4"));
        // An empty IPv6 set is declared without elements.
        assert!(
            out.contains(
                "set clients_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\tauto-merge\n\t}"
            ),
            "{out}"
        );
        assert!(out.contains("clients.allow names no IPv6 range"));
    }

    #[test]
    fn nftables_refuses_client_forwarding_and_redirects_443() {
        let out = render(&base(), Format::Nftables);
        assert!(out.contains("type filter hook forward priority filter; policy accept;"));
        assert!(out.contains("ip saddr @clients_v4 meta l4proto tcp counter reject with tcp reset"));
        assert!(out.contains("ip saddr @clients_v4 ip daddr @clients_v4 accept"));
        assert!(out.contains(
            "ip saddr @clients_v4 ip daddr != @clients_v4 fib daddr type != local tcp dport 443 redirect to :8443"
        ), "{out}");
        // 0.0.0.0 cannot take IPv6: no IPv6 redirect.
        assert!(!out.contains("ip6 saddr @clients_v6 ip6 daddr != @clients_v6"));
        assert!(out.contains("no transparent redirect for IPv6"));
        assert!(out.starts_with("#!/usr/sbin/nft -f\n"));
        assert!(out.contains("table inet portcullis\ndelete table inet portcullis\n"));
    }

    #[test]
    fn dual_stack_and_address_bound_listeners() {
        let mut c = base();
        c.proxy_listen = vec!["[::]:3128".parse().unwrap()];
        c.clients_allow.push("2001:db8:100::/48".parse().unwrap());
        c.sni_listen = vec![
            SniListen {
                addr: "192.0.2.7:8443".parse().unwrap(),
                port: 443,
                original_dst: false,
            },
            SniListen {
                addr: "[2001:db8::7]:8443".parse().unwrap(),
                port: 443,
                original_dst: true,
            },
        ];
        let out = render(&c, Format::Nftables);
        assert!(out.contains("\t\ttcp dport 3128 ip saddr @clients_v4 accept\n\t\ttcp dport 3128 ip6 saddr @clients_v6 accept\n\t\ttcp dport 3128 counter drop\n"), "{out}");
        assert!(out.contains("ip6 daddr 2001:db8::7 tcp dport 8443 ip6 saddr @clients_v6 accept"));
        assert!(
            out.contains("tcp dport 443 dnat ip to 192.0.2.7:8443"),
            "{out}"
        );
        assert!(
            out.contains("tcp dport 443 dnat ip6 to [2001:db8::7]:8443"),
            "{out}"
        );
        assert!(!out.contains("clients.allow names no IPv6 range"));

        let v6 = render(&c, Format::Ip6tables);
        assert!(v6.contains("-A PORTCULLIS-CLIENTS -s 2001:db8:100::/48 -j RETURN"));
        assert!(!v6.contains("10.0.0.0/8"));
        assert!(v6.contains("-A PORTCULLIS-INPUT -p tcp --dport 3128 -j PORTCULLIS-CLIENTS"));
        assert!(v6.contains("-A PORTCULLIS-INPUT -d 2001:db8::7 -p tcp --dport 8443"));
        assert!(!v6.contains("--dport 9443"), "IPv4-only inbound: {v6}");
        assert!(v6.contains("-j DNAT --to-destination [2001:db8::7]:8443"));
        assert!(v6.contains("--reject-with icmp6-adm-prohibited"));
        let v4 = render(&c, Format::Iptables);
        assert!(!v4.contains("2001:db8"), "{v4}");
        assert!(v4.contains("-j DNAT --to-destination 192.0.2.7:8443"));
    }

    #[test]
    fn iptables_uses_source_chains_and_replaces_filter_and_nat() {
        let out = render(&base(), Format::Iptables);
        assert!(out.contains(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ));
        assert!(out.contains("-A PORTCULLIS-INPUT -p tcp --dport 9443 -j PORTCULLIS-INBOUND-1"));
        assert!(out.contains("-A PORTCULLIS-INBOUND-1 -s 174.129.157.90/32 -j RETURN\n-A PORTCULLIS-INBOUND-1 -s 54.146.159.96/32 -j RETURN\n-A PORTCULLIS-INBOUND-1 -j DROP\n"), "{out}");
        assert!(out.contains(
            "-A PORTCULLIS-INPUT -d 10.20.0.5 -p tcp --dport 9128 -j PORTCULLIS-CLIENTS"
        ));
        assert!(out.contains("-A PORTCULLIS-FORWARD -s 10.0.0.0/8 -j PORTCULLIS-FROM-CLIENT"));
        assert!(out.contains("-A PORTCULLIS-FROM-CLIENT -p tcp -j REJECT --reject-with tcp-reset"));
        assert!(out.contains(
            "-A PORTCULLIS-TRANSPARENT -s 192.168.0.0/16 -p tcp -j REDIRECT --to-ports 8443"
        ));
        assert_eq!(out.matches("COMMIT\n").count(), 2);
        // IPv6 has no client range and 0.0.0.0 listeners: guards drop, no nat table.
        let v6 = render(&base(), Format::Ip6tables);
        assert!(!v6.contains("*nat"));
        assert!(v6.contains("-A PORTCULLIS-CLIENTS -j DROP"));
        assert!(v6.contains("clients.allow names no IPv6 range"));
    }

    #[test]
    fn no_or_unusable_sni_listener_means_no_redirect() {
        let mut c = base();
        c.sni_listen.clear();
        for f in [Format::Nftables, Format::Iptables] {
            let out = render(&c, f);
            assert!(
                !out.contains("prerouting") && !out.contains("*nat"),
                "{out}"
            );
            assert!(!out.contains("no transparent redirect"));
        }
        // Loopback-bound, or a fixed port other than 443: cannot take client 443.
        c.sni_listen = vec![
            SniListen {
                addr: "127.0.0.1:8443".parse().unwrap(),
                port: 443,
                original_dst: true,
            },
            SniListen {
                addr: "0.0.0.0:8444".parse().unwrap(),
                port: 8444,
                original_dst: false,
            },
        ];
        let out = render(&c, Format::Nftables);
        assert!(!out.contains("chain prerouting"), "{out}");
        assert!(out.contains("no transparent redirect for IPv4"));
    }

    #[test]
    fn builtin_default_config_renders() {
        let c = Config::load_from(None, Some(Default::default())).unwrap();
        let out = render(&c, Format::Nftables);
        assert!(out.contains("elements = { 127.0.0.0/8 }"));
        assert!(out.contains("elements = { ::1/128 }"));
        assert!(out.contains("ip daddr 127.0.0.1 tcp dport 3128 ip saddr @clients_v4 accept"));
        assert!(out.contains("from the built-in default config"));
        assert_eq!(out, render(&c, Format::Nftables), "deterministic");
    }
}
