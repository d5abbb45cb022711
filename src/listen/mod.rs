//! Listeners: the accept loop (limit, spawn, back off on errors; no
//! per-connection I/O) and one module per way of learning a destination.

pub mod connect;
pub mod http;
pub mod inbound;
pub mod sni;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::state::Shared;

/// Longest pause after repeated accept errors (e.g. EMFILE).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts until drain starts. Each connection gets a `max_connections`
/// permit and runs `serve`; over the limit, `reject` answers (bounded), or
/// the connection is closed.
pub async fn accept_loop<S, SF, R, RF>(
    listener: TcpListener,
    shared: Arc<Shared>,
    serve: S,
    reject: R,
) where
    S: Fn(Arc<Shared>, TcpStream, SocketAddr, OwnedSemaphorePermit) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(Arc<Shared>, TcpStream, SocketAddr) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accepting.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                match shared.connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        shared
                            .tasks
                            .spawn(serve(shared.clone(), stream, peer, permit));
                    }
                    Err(_) => {
                        if let Ok(r) = shared.rejecting.clone().try_acquire_owned() {
                            let fut = reject(shared.clone(), stream, peer);
                            shared.tasks.spawn(async move {
                                fut.await;
                                drop(r);
                            });
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = shared.stop_accepting.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

use std::time::Instant;

use crate::access_log::AccessRecord;
use crate::error::{Decision, Reason};
use crate::gate::Verdict;
use crate::metrics::Listener;
use crate::tunnel::TunnelOutcome;

/// Writes the access-log record and counts the connection.
pub(crate) fn finish(shared: &Shared, listener: Listener, mut rec: AccessRecord, started: Instant) {
    if rec.rule.is_empty() {
        rec.rule = "none".to_owned();
    }
    rec.duration_ms = started.elapsed().as_millis() as u64;
    shared
        .metrics
        .count_connection(listener, rec.decision, &rec.rule, rec.reason);
    shared.access_log.write(rec);
}

/// Counts a finished tunnel's bytes and duration under its rule.
pub(crate) fn record_tunnel(
    shared: &Shared,
    verdict: &Verdict,
    out: &TunnelOutcome,
    started: Instant,
) {
    shared.metrics.record_tunnel(
        verdict.rule_label(),
        out.bytes_up,
        out.bytes_down,
        started.elapsed().as_secs_f64(),
    );
}

/// The final `decision` and `reason` of a connection whose tunnel opened.
pub(crate) fn tunnel_verdict(
    verdict: &Verdict,
    out: &TunnelOutcome,
) -> (&'static str, &'static str) {
    match (out.tls_failure, verdict.reported) {
        (Some(_), _) if out.end == crate::tunnel::TunnelEnd::TlsCheck => {
            (Decision::Deny.as_str(), Reason::TlsProtocolError.as_str())
        }
        (Some(_), _) => (Decision::Report.as_str(), Reason::TlsProtocolError.as_str()),
        (None, Some(r)) => (Decision::Report.as_str(), r.as_str()),
        (None, None) => (Decision::Allow.as_str(), Reason::Ok.as_str()),
    }
}

/// Accept backlog for every listener.
const BACKLOG: i32 = 1024;

/// Binds a listening socket. An IPv6 address is bound IPv6-only (like
/// nginx), so `0.0.0.0:p` and `[::]:p` can both be configured.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn ipv4_and_ipv6_wildcards_bind_the_same_port() {
        let v4 = super::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        let v6 = super::bind(format!("[::]:{port}").parse().unwrap());
        // Hosts without IPv6 cannot bind [::] at all; that is not what this checks.
        if let Err(e) = &v6 {
            assert_ne!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        }
    }
}

#[cfg(test)]
mod future_size {
    //! An open tunnel's memory is mostly its task's future: these bounds keep
    //! a stray stack buffer from creeping back into it (it once held 11 KiB).

    #[tokio::test]
    async fn an_established_tunnel_keeps_a_small_future() {
        let mut cfg = crate::config::Config::load_from(None, Some(Default::default())).unwrap();
        cfg.proxy_listen = vec![];
        cfg.admin_listen = None;
        let (log, _rx) = crate::access_log::AccessLog::collector();
        let running = crate::app::start(cfg, crate::policy::Policy::builtin(), log)
            .await
            .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(a).await.unwrap();
        let (accepted, peer) = l.accept().await.unwrap();
        let permit = running
            .shared
            .connections
            .clone()
            .try_acquire_owned()
            .unwrap();
        let serve = super::connect::serve(running.shared.clone(), accepted, peer, permit);
        let params = crate::tunnel::TunnelParams {
            tls: crate::policy::TlsMode::Required,
            host: String::new(),
            report_only: false,
            hello_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let tunnel = crate::tunnel::run(&client, &client, Vec::new(), &params, &stop);
        assert!(
            std::mem::size_of_val(&tunnel) < 4096,
            "{}",
            std::mem::size_of_val(&tunnel)
        );
        assert!(
            std::mem::size_of_val(&serve) < 8192,
            "{}",
            std::mem::size_of_val(&serve)
        );
    }
}
