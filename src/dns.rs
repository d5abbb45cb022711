//! Connect-time DNS: a hickory resolver with the configured servers (or the
//! system's), a lookup timeout, and answers reused no longer than their TTL
//! capped at `dns.max_ttl_s`. Errors are classified for `Proxy-Status`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::TokioResolver;

/// How a lookup ended, for `portcullis_dns_lookup_duration_seconds{outcome}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no A/AAAA records.
    NoAddresses,
    /// The server answered with an error code (SERVFAIL, REFUSED, ...).
    Rcode(String),
    /// No answer within the timeout.
    Timeout,
    /// Anything else (transport failure, garbage answer).
    Other(String),
}

impl LookupError {
    /// The `outcome` metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            LookupError::NxDomain => "nxdomain",
            LookupError::Timeout => "timeout",
            _ => "error",
        }
    }

    /// The `rcode` parameter of `Proxy-Status: ...; error=dns_error`.
    pub fn rcode(&self) -> String {
        match self {
            LookupError::NxDomain => "NXDOMAIN".into(),
            LookupError::NoAddresses => "NOERROR".into(),
            LookupError::Rcode(r) => r.clone(),
            LookupError::Timeout | LookupError::Other(_) => "SERVFAIL".into(),
        }
    }
}

/// The proxy's resolver.
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
    /// Positive answers until their (capped) TTL expires: read without a lock
    /// on every connection, rebuilt copy-on-write only when a lookup misses.
    answers: Arc<ArcSwap<HashMap<String, Answer>>>,
}

/// A cached positive answer.
#[derive(Clone)]
struct Answer {
    ips: Arc<[IpAddr]>,
    valid_until: std::time::Instant,
}

/// Names kept in the front cache before expired entries are swept.
const FRONT_CACHE_MAX: usize = 4096;

impl Dns {
    /// Builds the resolver: `nameservers` (UDP with TCP fallback) or, if
    /// empty, the system configuration.
    pub fn new(
        nameservers: &[SocketAddr],
        timeout: Duration,
        max_ttl: Duration,
    ) -> Result<Dns, NetError> {
        let mut opts = ResolverOpts::default();
        // Two attempts fit inside the overall timeout enforced in `resolve`.
        opts.timeout = (timeout / 2).max(Duration::from_millis(50));
        opts.attempts = 2;
        opts.positive_max_ttl = Some(max_ttl);
        opts.negative_max_ttl = Some(max_ttl.min(Duration::from_secs(30)));
        opts.cache_size = 4096;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.ndots = 0;
        let builder = if nameservers.is_empty() {
            match TokioResolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "no usable system resolver configuration; every lookup will fail");
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(Vec::new()),
                        TokioRuntimeProvider::default(),
                    )
                }
            }
        } else {
            let servers = nameservers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut builder = builder;
        let o = builder.options_mut();
        o.timeout = opts.timeout;
        o.attempts = opts.attempts;
        o.positive_max_ttl = opts.positive_max_ttl;
        o.negative_max_ttl = opts.negative_max_ttl;
        o.cache_size = opts.cache_size;
        o.ip_strategy = opts.ip_strategy;
        o.ndots = opts.ndots;
        if !nameservers.is_empty() {
            // Explicit servers are the whole truth: no /etc/hosts lookup per
            // connection (it also showed in the setup-path profile).
            o.use_hosts_file = ResolveHosts::Never;
        }
        Ok(Dns {
            resolver: builder.build()?,
            timeout,
            answers: Arc::new(ArcSwap::from_pointee(HashMap::new())),
        })
    }

    /// Resolves `host` (a normalised name, no trailing dot) to its addresses.
    pub async fn resolve(&self, host: &str) -> Result<Arc<[IpAddr]>, LookupError> {
        if let Some(a) = self.answers.load().get(host) {
            if a.valid_until > std::time::Instant::now() {
                return Ok(a.ips.clone());
            }
        }
        // The trailing dot makes the name absolute: no search-domain expansion.
        let fqdn = format!("{host}.");
        match tokio::time::timeout(self.timeout, self.resolver.lookup_ip(fqdn)).await {
            Err(_) => Err(LookupError::Timeout),
            Ok(Ok(answer)) => {
                let ips: Arc<[IpAddr]> = answer.iter().collect();
                if ips.is_empty() {
                    return Err(LookupError::NoAddresses);
                }
                // hickory's expiry already honours the record TTL and `max_ttl_s`.
                self.remember(host, ips.clone(), answer.valid_until());
                Ok(ips)
            }
            Ok(Err(e)) => Err(classify(&e)),
        }
    }

    fn remember(&self, host: &str, ips: Arc<[IpAddr]>, valid_until: std::time::Instant) {
        self.answers.rcu(|old| {
            let now = std::time::Instant::now();
            // Full: sweep expired entries first; still full: don't add.
            let sweep = old.len() >= FRONT_CACHE_MAX;
            let mut map: HashMap<String, Answer> = old
                .iter()
                .filter(|(_, a)| !sweep || a.valid_until > now)
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect();
            if map.len() < FRONT_CACHE_MAX {
                let answer = Answer {
                    ips: ips.clone(),
                    valid_until,
                };
                map.insert(host.to_owned(), answer);
            }
            map
        });
    }
}

fn classify(e: &NetError) -> LookupError {
    match e {
        _ if e.is_nx_domain() => LookupError::NxDomain,
        _ if e.is_no_records_found() => LookupError::NoAddresses,
        NetError::Timeout => LookupError::Timeout,
        NetError::Dns(DnsError::ResponseCode(rc)) => {
            LookupError::Rcode(format!("{rc:?}").to_ascii_uppercase())
        }
        other => LookupError::Other(other.to_string()),
    }
}
