//! State shared by every listener: the policy snapshot (swapped on reload),
//! resolver, address check, limits, metrics, access log and lifecycle tokens.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::addrs::AddressPolicy;
use crate::config::Config;
use crate::dns::Dns;
use crate::metrics::Metrics;
use crate::policy::Policy;

/// Tasks allowed to answer refused-over-limit clients at once; beyond this
/// the excess connections are simply closed.
pub const MAX_REJECTING: usize = 1024;

/// Everything a connection needs, behind one `Arc`.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The policy in force; a connection loads it once.
    pub policy: ArcSwap<Policy>,
    /// Connect-time resolver.
    pub dns: Dns,
    /// Deny/allow CIDR check for resolved addresses.
    pub addrs: AddressPolicy,
    /// Metrics registry and handles.
    pub metrics: Metrics,
    /// Access-log writer.
    pub access_log: AccessLog,
    /// One permit per open connection (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Bounds the tasks that answer over-limit clients.
    pub rejecting: Arc<Semaphore>,
    /// Cancelled when listeners must stop accepting (drain starts).
    pub stop_accepting: CancellationToken,
    /// Cancelled when open tunnels must end (grace expired).
    pub stop_tunnels: CancellationToken,
    /// Every connection task, for draining.
    pub tasks: TaskTracker,
    ready: AtomicBool,
}

impl Shared {
    /// Assembles the shared state.
    pub fn new(
        config: Config,
        policy: Policy,
        dns: Dns,
        metrics: Metrics,
        access_log: AccessLog,
    ) -> Shared {
        metrics.init_rules(policy.rules().iter().map(|r| r.name.as_str()));
        Shared {
            addrs: AddressPolicy::new(config.deny_cidrs.clone(), config.allow_cidrs.clone()),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            rejecting: Arc::new(Semaphore::new(MAX_REJECTING)),
            config,
            policy: ArcSwap::from_pointee(policy),
            dns,
            metrics,
            access_log,
            stop_accepting: CancellationToken::new(),
            stop_tunnels: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ready: AtomicBool::new(false),
        }
    }

    /// True if `ip` may use the proxy listeners (`clients.allow`).
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        client_in(&self.config.clients_allow, ip)
    }

    /// Readiness latch: listeners bound and policy loaded, not draining.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stop_accepting.is_cancelled()
    }

    /// Marks the process ready (every listener bound).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Tests `ip` (and the IPv4 inside an IPv4-mapped IPv6 address) against `nets`.
pub fn client_in(nets: &[IpNet], ip: IpAddr) -> bool {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    nets.iter()
        .any(|n| n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m)))
}
