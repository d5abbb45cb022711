//! Inbound forwards: accept only the configured source CIDRs, resolve the
//! fixed `forward` at connect time, and copy bytes untouched (TLS passes
//! through end to end). Anything else is closed at once, nothing sent on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::AccessRecord;
use crate::config::Inbound;
use crate::error::{Decision, Reason};
use crate::gate::{self, AddressCheck, Verdict};
use crate::metrics::Listener;
use crate::policy::TlsMode;
use crate::state::{client_in, Shared};
use crate::target::parse_authority;
use crate::tunnel::{self, TunnelParams};

/// Serves one inbound connection.
pub async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    inbound: Arc<Inbound>,
) {
    let started = Instant::now();
    let mut rec = AccessRecord {
        listener: Listener::Inbound.as_str(),
        client: peer.to_string(),
        rule: inbound.name.clone(),
        ..Default::default()
    };
    let target = match parse_authority(&inbound.forward) {
        Ok(t) => t,
        Err(_) => {
            return close(
                &shared,
                rec,
                Decision::Error,
                Reason::HttpRequestError,
                started,
            )
        }
    };
    rec.host = target.host.to_string();
    rec.port = target.port;
    if !client_in(&inbound.sources, peer.ip()) {
        return close(
            &shared,
            rec,
            Decision::Deny,
            Reason::HttpRequestDenied,
            started,
        );
    }
    // The forward is the operator's own host (often on a private range), not
    // a client's choice, so `deny_cidrs` does not apply to it.
    let opened = match gate::connect_with(&shared, &target, AddressCheck::Trusted).await {
        Ok(o) => o,
        Err(e) => return close(&shared, rec, e.decision(), e.reason(), started),
    };
    rec.upstream = Some(opened.upstream.to_string());
    let verdict = Verdict {
        rule: Some(inbound.name.clone()),
        tls: TlsMode::Any,
        reported: None,
    };
    let params = TunnelParams {
        tls: TlsMode::Any,
        host: String::new(),
        report_only: false,
        hello_timeout: shared.config.handshake_timeout,
        idle_timeout: shared.config.idle_timeout,
    };
    let gauge = shared.metrics.active(Listener::Inbound).clone();
    gauge.inc();
    let out = tunnel::run(
        &stream,
        &opened.stream,
        Vec::new(),
        &params,
        &shared.stop_tunnels,
    )
    .await;
    gauge.dec();
    super::record_tunnel(&shared, &verdict, &out, started);
    rec.bytes_up = out.bytes_up;
    rec.bytes_down = out.bytes_down;
    (rec.decision, rec.reason) = super::tunnel_verdict(&verdict, &out);
    drop(permit);
    super::finish(&shared, Listener::Inbound, rec, started);
}

/// Over the connection limit: close.
pub async fn reject_over_limit(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    drop(stream);
    let rec = AccessRecord {
        listener: Listener::Inbound.as_str(),
        client: peer.to_string(),
        ..Default::default()
    };
    close(
        &shared,
        rec,
        Decision::Error,
        Reason::ConnectionLimitReached,
        Instant::now(),
    );
}

fn close(
    shared: &Shared,
    mut rec: AccessRecord,
    decision: Decision,
    reason: Reason,
    started: Instant,
) {
    rec.decision = decision.as_str();
    rec.reason = reason.as_str();
    super::finish(shared, Listener::Inbound, rec, started);
}
