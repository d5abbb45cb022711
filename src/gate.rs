//! The one pipeline every listener goes through: policy decision → DNS →
//! address check → RFC 8305 dial. Listeners only learn the destination and
//! report refusals their own way.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::config::Mode;
use crate::dial::{dial, interleave, DialError};
use crate::dns::LookupError;
use crate::error::{GateError, Reason};
use crate::policy::{Decision, Policy, TlsMode};
use crate::state::Shared;
use crate::target::{Host, Target};

/// What the policy said, before any I/O.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Matching rule name (`None` when report mode let a denied target through).
    pub rule: Option<String>,
    /// The first-bytes check the rule asks for.
    pub tls: TlsMode,
    /// Set when report mode let through what enforce would deny.
    pub reported: Option<Reason>,
}

impl Verdict {
    /// The metric / log `rule` label.
    pub fn rule_label(&self) -> &str {
        self.rule.as_deref().unwrap_or("none")
    }
}

/// An upstream connection ready to tunnel.
#[derive(Debug)]
pub struct Opened {
    /// Connected socket.
    pub stream: TcpStream,
    /// The address that answered.
    pub upstream: SocketAddr,
    /// Every address the name resolved to (before the address check).
    pub resolved: Arc<[IpAddr]>,
}

/// Whether resolved addresses go through `upstream.deny_cidrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressCheck {
    /// Client-chosen destinations: always checked.
    Enforce,
    /// Operator-configured destinations (inbound `forward`): trusted.
    Trusted,
}

/// Decides `target` under `policy` (pure; `mode = "report"` turns a denial
/// into a reported pass).
pub fn decide(policy: &Policy, mode: Mode, target: &Target) -> Result<Verdict, GateError> {
    match policy.decide(target) {
        Decision::Allow(rule) => Ok(Verdict {
            rule: Some(rule.name.clone()),
            tls: rule.tls,
            reported: None,
        }),
        Decision::Deny(why) => match mode {
            Mode::Report => Ok(Verdict {
                rule: None,
                tls: TlsMode::Any,
                reported: Some(Reason::HttpRequestDenied),
            }),
            Mode::Enforce => Err(GateError::Denied(format!("{target} ({why})"))),
        },
    }
}

/// Resolves, checks and dials `target` (already decided).
pub async fn connect(shared: &Shared, target: &Target) -> Result<Opened, GateError> {
    connect_with(shared, target, AddressCheck::Enforce).await
}

/// [`connect`] with an explicit address-check mode.
pub async fn connect_with(
    shared: &Shared,
    target: &Target,
    check: AddressCheck,
) -> Result<Opened, GateError> {
    let ips = match &target.host {
        Host::Ip(ip) => Arc::from([*ip]),
        Host::Name(name) => {
            let started = Instant::now();
            let res = shared.dns.resolve(name).await;
            let outcome = match &res {
                Ok(_) => "ok",
                Err(e) => e.outcome(),
            };
            shared
                .metrics
                .observe_dns(outcome, started.elapsed().as_secs_f64());
            match res {
                Ok(ips) => ips,
                Err(LookupError::Timeout) => return Err(GateError::DnsTimeout(name.clone())),
                Err(e) => {
                    return Err(GateError::Dns {
                        host: name.clone(),
                        rcode: e.rcode(),
                    })
                }
            }
        }
    };
    let permitted: Vec<SocketAddr> = ips
        .iter()
        .filter(|ip| check == AddressCheck::Trusted || shared.addrs.permits(**ip))
        .map(|ip| SocketAddr::new(*ip, target.port))
        .collect();
    if permitted.is_empty() {
        return Err(GateError::IpProhibited(target.host.to_string()));
    }
    let started = Instant::now();
    let res = dial(&interleave(&permitted), shared.config.connect_timeout).await;
    let outcome = match &res {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    shared
        .metrics
        .observe_connect(outcome, started.elapsed().as_secs_f64());
    match res {
        Ok((stream, upstream)) => Ok(Opened {
            stream,
            upstream,
            resolved: ips,
        }),
        Err(DialError::Refused) => Err(GateError::ConnectionRefused(target.to_string())),
        Err(DialError::Unreachable) => Err(GateError::DestinationUnavailable(target.to_string())),
        Err(DialError::Timeout) => Err(GateError::ConnectTimeout(target.to_string())),
        Err(DialError::Local) => Err(GateError::Internal(target.to_string())),
    }
}
