//! Prometheus metrics with the names and labels SPEC fixes, on our own
//! registry. Label values come only from enums and rule names, never from
//! request data.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
}

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
        for o in ["ok", "nxdomain", "timeout", "error"] {
            dns_duration.with_label_values(&[o]);
        }
        for o in ["ok", "refused", "timeout", "error"] {
            connect_duration.with_label_values(&[o]);
        }
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
        })
    }

    /// Makes every rule's tunnel series visible (at zero) before first use,
    /// and sets the rule-count gauge.
    pub fn init_rules<'a>(&self, rules: impl Iterator<Item = &'a str>) {
        let mut n = 0;
        for rule in rules {
            n += 1;
            self.tunnel_bytes.with_label_values(&[rule, "upstream"]);
            self.tunnel_bytes.with_label_values(&[rule, "downstream"]);
            self.tunnel_duration.with_label_values(&[rule]);
        }
        self.policy_rules.set(n);
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
