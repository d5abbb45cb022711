//! Prometheus metrics with the names and labels SPEC fixes, on our own
//! registry. Label values come only from enums and rule names, never from
//! request data.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Histogram buckets (seconds): resolve sub-millisecond cache hits and multi-second timeouts.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Tunnel duration buckets (seconds): from a single request to a day-long session.
const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Listener kinds (the `listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// Explicit proxy, CONNECT.
    Connect,
    /// Explicit proxy, absolute-form http://.
    Http,
    /// Transparent SNI listener.
    Sni,
    /// Inbound forward.
    Inbound,
}

impl Listener {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Connect => "connect",
            Listener::Http => "http",
            Listener::Sni => "sni",
            Listener::Inbound => "inbound",
        }
    }
    /// All kinds, for pre-initialising series.
    pub const ALL: [Listener; 4] = [
        Listener::Connect,
        Listener::Http,
        Listener::Sni,
        Listener::Inbound,
    ];
}

/// Every metric the proxy exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `portcullis_connections_total{listener,decision,rule,reason}`
    pub connections: IntCounterVec,
    /// `portcullis_active_tunnels{listener}`
    pub active_tunnels: IntGaugeVec,
    /// `portcullis_tunnel_bytes_total{rule,direction}`
    pub tunnel_bytes: IntCounterVec,
    /// `portcullis_tunnel_duration_seconds{rule}`
    pub tunnel_duration: HistogramVec,
    /// `portcullis_dns_lookup_duration_seconds{outcome}`
    pub dns_duration: HistogramVec,
    /// `portcullis_upstream_connect_duration_seconds{outcome}`
    pub connect_duration: HistogramVec,
    /// `portcullis_policy_reloads_total{outcome}`
    pub policy_reloads: IntCounterVec,
    /// `portcullis_policy_rules`
    pub policy_rules: IntGauge,
    /// Resolved handles, so a connection never hashes these label sets.
    handles: Arc<Handles>,
}

/// Label handles resolved once (per process, or per policy load for rules).
struct Handles {
    active: [IntGauge; 4],
    dns: [Histogram; 4],
    connect: [Histogram; 4],
    rules: ArcSwap<HashMap<String, RuleHandles>>,
}

/// One rule's tunnel series.
struct RuleHandles {
    up: IntCounter,
    down: IntCounter,
    duration: Histogram,
}

/// Outcomes of `portcullis_dns_lookup_duration_seconds`, in handle order.
const DNS_OUTCOMES: [&str; 4] = ["ok", "nxdomain", "timeout", "error"];
/// Outcomes of `portcullis_upstream_connect_duration_seconds`, in handle order.
const CONNECT_OUTCOMES: [&str; 4] = ["ok", "refused", "timeout", "error"];

impl Metrics {
    /// Creates and registers every metric (plus `process_*` and build info).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let connections = IntCounterVec::new(
            Opts::new(
                "portcullis_connections_total",
                "Connections and requests by listener, decision, rule and reason.",
            ),
            &["listener", "decision", "rule", "reason"],
        )?;
        let active_tunnels = IntGaugeVec::new(
            Opts::new("portcullis_active_tunnels", "Tunnels currently open."),
            &["listener"],
        )?;
        let tunnel_bytes = IntCounterVec::new(
            Opts::new(
                "portcullis_tunnel_bytes_total",
                "Bytes carried by tunnels, counted when a tunnel ends.",
            ),
            &["rule", "direction"],
        )?;
        let tunnel_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_tunnel_duration_seconds",
                "How long tunnels stayed open.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["rule"],
        )?;
        let dns_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_dns_lookup_duration_seconds",
                "DNS lookup latency by outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let connect_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_connect_duration_seconds",
                "Upstream connect latency by outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "portcullis_policy_reloads_total",
                "Policy reloads by outcome.",
            ),
            &["outcome"],
        )?;
        let policy_rules =
            IntGauge::new("portcullis_policy_rules", "Rules in the policy in force.")?;
        let build_info = IntGaugeVec::new(
            Opts::new("portcullis_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for l in Listener::ALL {
            active_tunnels.with_label_values(&[l.as_str()]);
        }
        for o in ["ok", "error"] {
            policy_reloads.with_label_values(&[o]);
        }
        let handles = Arc::new(Handles {
            active: Listener::ALL.map(|l| active_tunnels.with_label_values(&[l.as_str()])),
            dns: DNS_OUTCOMES.map(|o| dns_duration.with_label_values(&[o])),
            connect: CONNECT_OUTCOMES.map(|o| connect_duration.with_label_values(&[o])),
            rules: ArcSwap::from_pointee(HashMap::new()),
        });
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(active_tunnels.clone()))?;
        registry.register(Box::new(tunnel_bytes.clone()))?;
        registry.register(Box::new(tunnel_duration.clone()))?;
        registry.register(Box::new(dns_duration.clone()))?;
        registry.register(Box::new(connect_duration.clone()))?;
        registry.register(Box::new(policy_reloads.clone()))?;
        registry.register(Box::new(policy_rules.clone()))?;
        registry.register(Box::new(build_info))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            registry,
            connections,
            active_tunnels,
            tunnel_bytes,
            tunnel_duration,
            dns_duration,
            connect_duration,
            policy_reloads,
            policy_rules,
            handles,
        })
    }

    /// Makes every rule's tunnel series visible (at zero) before first use,
    /// and sets the rule-count gauge.
    pub fn init_rules<'a>(&self, rules: impl Iterator<Item = &'a str>) {
        let mut map = HashMap::new();
        let mut n = 0;
        for rule in rules {
            n += 1;
            map.insert(rule.to_owned(), self.rule_handles(rule));
        }
        map.insert("none".to_owned(), self.rule_handles("none"));
        self.handles.rules.store(Arc::new(map));
        self.policy_rules.set(n);
    }

    fn rule_handles(&self, rule: &str) -> RuleHandles {
        RuleHandles {
            up: self.tunnel_bytes.with_label_values(&[rule, "upstream"]),
            down: self.tunnel_bytes.with_label_values(&[rule, "downstream"]),
            duration: self.tunnel_duration.with_label_values(&[rule]),
        }
    }

    /// The open-tunnel gauge of a listener.
    pub fn active(&self, listener: Listener) -> &IntGauge {
        &self.handles.active[listener as usize]
    }

    /// Records a DNS lookup's latency under its outcome label.
    pub fn observe_dns(&self, outcome: &str, seconds: f64) {
        let i = DNS_OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(3);
        self.handles.dns[i].observe(seconds);
    }

    /// Records an upstream connect's latency under its outcome label.
    pub fn observe_connect(&self, outcome: &str, seconds: f64) {
        let i = CONNECT_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(3);
        self.handles.connect[i].observe(seconds);
    }

    /// Counts a finished tunnel's bytes and duration under its rule.
    pub fn record_tunnel(&self, rule: &str, up: u64, down: u64, seconds: f64) {
        let rules = self.handles.rules.load();
        match rules.get(rule) {
            Some(h) => {
                h.up.inc_by(up);
                h.down.inc_by(down);
                h.duration.observe(seconds);
            }
            // A rule from a policy that was reloaded away while the tunnel ran.
            None => {
                let h = self.rule_handles(rule);
                h.up.inc_by(up);
                h.down.inc_by(down);
                h.duration.observe(seconds);
            }
        }
    }

    /// Counts one finished connection.
    pub fn count_connection(&self, listener: Listener, decision: &str, rule: &str, reason: &str) {
        self.connections
            .with_label_values(&[listener.as_str(), decision, rule, reason])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
