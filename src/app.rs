//! Process assembly and lifecycle: build the shared state, bind every
//! listener, flip readiness, reload the policy on SIGHUP, drain on
//! SIGTERM/SIGINT in phases (readiness off → stop accepting → grace → cut).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::dns::Dns;
use crate::listen;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError};
use crate::state::Shared;

/// Loads the policy the config names, or the built-in seed policy.
pub fn load_policy(config: &Config) -> Result<Policy, PolicyError> {
    match &config.policy {
        Some(path) => Policy::load(path),
        None => Ok(Policy::builtin()),
    }
}

/// Builds the policy file anew and swaps it in; on failure the old policy
/// stays in force. Counted in `portcullis_policy_reloads_total`.
fn reload(shared: &Shared) -> Result<(), PolicyError> {
    let m = &shared.metrics;
    match load_policy(&shared.config) {
        Ok(p) => {
            m.init_rules(p.rules().iter().map(|r| r.name.as_str()));
            let rules = p.rules().len();
            shared.policy.store(Arc::new(p));
            m.policy_reloads.with_label_values(&["ok"]).inc();
            tracing::info!(rules, "policy reloaded");
            Ok(())
        }
        Err(e) => {
            m.policy_reloads.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
            Err(e)
        }
    }
}

/// What identifies a version of the policy file: a ConfigMap update swaps a
/// symlink, an editor rewrites in place; both change one of these.
fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reloads the policy whenever its file changes (`policy_watch_s`), so a
/// mounted ConfigMap update applies without a signal or a restart.
async fn watch_policy(shared: Arc<Shared>, path: PathBuf, every: Duration) {
    let mut last = file_stamp(&path);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = file_stamp(&path);
        if now != last {
            last = now;
            tracing::info!(path = %path.display(), "policy file changed");
            let _ = reload(&shared);
        }
    }
}

/// A started proxy: its bound addresses and shared state.
pub struct Running {
    /// Shared state (policy, metrics, tokens).
    pub shared: Arc<Shared>,
    /// Bound explicit-proxy addresses, in config order.
    pub proxy_addrs: Vec<SocketAddr>,
    /// Bound SNI listener addresses, in config order.
    pub sni_addrs: Vec<SocketAddr>,
    /// Bound inbound listener addresses, in config order.
    pub inbound_addrs: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: Option<SocketAddr>,
}

/// Binds every listener and starts serving. `access_log` decides where records go.
pub async fn start(
    config: Config,
    policy: Policy,
    access_log: AccessLog,
) -> anyhow::Result<Running> {
    let dns = Dns::new(
        &config.dns_nameservers,
        config.dns_timeout,
        config.dns_max_ttl,
    )
    .context("building the DNS resolver")?;
    let metrics = Metrics::new().context("registering metrics")?;
    let shared = Arc::new(Shared::new(config, policy, dns, metrics, access_log));
    let mut proxy_addrs = Vec::new();
    for addr in &shared.config.proxy_listen {
        let l = listen::bind(*addr).with_context(|| format!("binding proxy listener {addr}"))?;
        let local = l.local_addr()?;
        tracing::info!(listener = "proxy", addr = %local, "listening");
        proxy_addrs.push(local);
        shared.tasks.spawn(listen::accept_loop(
            l,
            shared.clone(),
            listen::connect::serve,
            listen::connect::reject_over_limit,
        ));
    }
    let mut sni_addrs = Vec::new();
    for sni in &shared.config.sni_listen {
        let l =
            listen::bind(sni.addr).with_context(|| format!("binding SNI listener {}", sni.addr))?;
        let local = l.local_addr()?;
        tracing::info!(listener = "sni", addr = %local, port = sni.port, original_dst = sni.original_dst, "listening");
        sni_addrs.push(local);
        let sni = sni.clone();
        shared.tasks.spawn(listen::accept_loop(
            l,
            shared.clone(),
            move |s, st, p, pm| listen::sni::serve(s, st, p, pm, sni.clone()),
            listen::sni::reject_over_limit,
        ));
    }
    let mut inbound_addrs = Vec::new();
    for inbound in &shared.config.inbound {
        let l = listen::bind(inbound.listen).with_context(|| {
            format!(
                "binding inbound listener {} ({})",
                inbound.listen, inbound.name
            )
        })?;
        let local = l.local_addr()?;
        tracing::info!(listener = "inbound", name = %inbound.name, addr = %local, forward = %inbound.forward, "listening");
        inbound_addrs.push(local);
        let inbound = Arc::new(inbound.clone());
        shared.tasks.spawn(listen::accept_loop(
            l,
            shared.clone(),
            move |s, st, p, pm| listen::inbound::serve(s, st, p, pm, inbound.clone()),
            listen::inbound::reject_over_limit,
        ));
    }
    let admin_addr = match shared.config.admin_listen {
        Some(addr) => {
            let l = listen::bind(addr).with_context(|| format!("binding admin listener {addr}"))?;
            let local = l.local_addr()?;
            tracing::info!(listener = "admin", addr = %local, "listening");
            tokio::spawn(crate::admin::serve(l, shared.clone()));
            Some(local)
        }
        None => None,
    };
    if let (Some(path), false) = (&shared.config.policy, shared.config.policy_watch.is_zero()) {
        tokio::spawn(watch_policy(
            shared.clone(),
            path.clone(),
            shared.config.policy_watch,
        ));
    }
    shared.set_ready();
    Ok(Running {
        shared,
        proxy_addrs,
        sni_addrs,
        inbound_addrs,
        admin_addr,
    })
}

impl Running {
    /// Re-reads the policy file; on failure the old policy stays in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        reload(&self.shared)
    }

    /// Drains: readiness off and listeners closed, open connections get
    /// `grace`, then whatever is left is cut.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.stop_accepting.cancel();
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace expired; closing remaining tunnels");
        } else {
            tracing::info!("every connection finished");
        }
        self.shared.stop_tunnels.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.tasks.wait()).await;
    }
}

/// `portcullis run`: start, then serve signals until a clean shutdown.
///
/// Signal handlers are installed before any listener is bound: once a
/// "listening" line is out, SIGHUP reloads and SIGTERM drains, never the
/// default action (terminate).
pub async fn run(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let policy = load_policy(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let format = config.log_format;
    let grace = config.shutdown_grace;
    let running = start(config, policy, AccessLog::stdout(format)).await?;
    let signal = loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy");
                let _ = running.reload();
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    tracing::info!(
        signal,
        grace_s = grace.as_secs(),
        "draining: readyz 503, listeners closed, open tunnels may finish"
    );
    let drain = running.shutdown(grace);
    tokio::select! {
        _ = drain => {}
        _ = term.recv() => tracing::warn!(signal = "SIGTERM", "second signal: exiting at once"),
        _ = int.recv() => tracing::warn!(signal = "SIGINT", "second signal: exiting at once"),
    }
    running.shared.stop_tunnels.cancel();
    // Let the access-log thread write what the cut tunnels queued.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracing::info!("stopped");
    Ok(())
}
