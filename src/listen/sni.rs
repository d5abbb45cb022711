//! The transparent SNI listener: reads the ClientHello (several records and
//! segments, bounded in size and time), routes by its SNI through the gate,
//! replays the bytes read, then tunnels. It dials what it resolved from the
//! SNI, never the client's original destination, which is only logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::AccessRecord;
use crate::config::{Mode, SniListen};
use crate::error::{Decision, GateError, Reason};
use crate::gate;
use crate::metrics::Listener;
use crate::state::Shared;
use crate::target::{normalize_host, Host, Target};
use crate::tls_hello::{parse_client_hello, ClientHello, HelloError, MAX_HELLO_BYTES};
use crate::tunnel::{self, TunnelParams};

/// Why no usable ClientHello arrived.
enum HelloFailure {
    /// Not TLS, malformed, or over the size cap.
    Bad,
    /// No complete ClientHello within `handshake_timeout_ms`.
    Timeout,
    /// The client closed (or reset) first.
    Closed,
}

/// Serves one transparently redirected connection.
pub async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    listen: SniListen,
) {
    let started = Instant::now();
    let original_dst = original_dst(&stream);
    let mut rec = AccessRecord {
        listener: Listener::Sni.as_str(),
        client: peer.to_string(),
        original_dst: original_dst.map(|a| a.to_string()),
        ..Default::default()
    };
    let port = match (listen.original_dst, original_dst) {
        (true, Some(o)) => o.port(),
        _ => listen.port,
    };
    rec.port = port;
    if !shared.client_allowed(peer.ip()) {
        return close(
            &shared,
            rec,
            GateError::ClientDenied.decision(),
            Reason::HttpRequestDenied,
            started,
        );
    }
    let (buf, hello) = match read_hello(&mut stream, &shared).await {
        Ok(x) => x,
        Err(HelloFailure::Closed) => {
            return close(
                &shared,
                rec,
                Decision::Error,
                Reason::HttpRequestError,
                started,
            )
        }
        Err(HelloFailure::Timeout) => {
            return close(
                &shared,
                rec,
                Decision::Error,
                Reason::HttpRequestError,
                started,
            )
        }
        Err(HelloFailure::Bad) => {
            return close(
                &shared,
                rec,
                Decision::Error,
                Reason::TlsProtocolError,
                started,
            )
        }
    };
    // rustls reports an IP-literal SNI as no SNI; both are refused.
    let host = match hello.sni.as_deref().map(normalize_host) {
        Some(Ok(Host::Name(n))) => n,
        _ => {
            return close(
                &shared,
                rec,
                Decision::Deny,
                Reason::HttpRequestDenied,
                started,
            )
        }
    };
    rec.host = host.clone();
    let target = Target {
        host: Host::Name(host.clone()),
        port,
    };
    let verdict = {
        let policy = shared.policy.load();
        gate::decide(&policy, shared.config.mode, &target)
    };
    let verdict = match verdict {
        Ok(v) => v,
        Err(e) => return close(&shared, rec, e.decision(), e.reason(), started),
    };
    rec.rule = verdict.rule_label().to_owned();
    let opened = match gate::connect(&shared, &target).await {
        Ok(o) => o,
        Err(e) => return close(&shared, rec, e.decision(), e.reason(), started),
    };
    rec.upstream = Some(opened.upstream.to_string());
    if let Some(o) = original_dst {
        if !opened.resolved.contains(&o.ip()) {
            tracing::info!(client = %peer, host = %host, original_dst = %o, upstream = %opened.upstream,
                "original destination is not among the SNI's addresses; dialling the resolved address");
        }
    }
    let params = TunnelParams {
        tls: verdict.tls,
        host,
        report_only: shared.config.mode == Mode::Report,
        hello_timeout: shared.config.handshake_timeout,
        idle_timeout: shared.config.idle_timeout,
    };
    let gauge = shared.metrics.active(Listener::Sni).clone();
    gauge.inc();
    let out = tunnel::run(&stream, &opened.stream, buf, &params, &shared.stop_tunnels).await;
    gauge.dec();
    super::record_tunnel(&shared, &verdict, &out, started);
    rec.bytes_up = out.bytes_up;
    rec.bytes_down = out.bytes_down;
    (rec.decision, rec.reason) = super::tunnel_verdict(&verdict, &out);
    drop(permit);
    super::finish(&shared, Listener::Sni, rec, started);
}

/// Over the connection limit: the SNI listener can only close.
pub async fn reject_over_limit(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    drop(stream);
    let rec = AccessRecord {
        listener: Listener::Sni.as_str(),
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

/// Logs and counts a refused connection; dropping the stream closes it.
fn close(
    shared: &Shared,
    mut rec: AccessRecord,
    decision: Decision,
    reason: Reason,
    started: Instant,
) {
    rec.decision = decision.as_str();
    rec.reason = reason.as_str();
    super::finish(shared, Listener::Sni, rec, started);
}

/// Reads until a complete ClientHello is buffered.
async fn read_hello(
    stream: &mut TcpStream,
    shared: &Shared,
) -> Result<(Vec<u8>, ClientHello), HelloFailure> {
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    let mut buf = Vec::with_capacity(2048);
    loop {
        if buf.len() >= MAX_HELLO_BYTES {
            return Err(HelloFailure::Bad);
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Err(HelloFailure::Timeout),
            Ok(Err(_)) => return Err(HelloFailure::Closed),
            Ok(Ok(())) => {}
        }
        match crate::tunnel::read_into_tail(stream, &mut buf, MAX_HELLO_BYTES) {
            Ok(0) => return Err(HelloFailure::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(HelloFailure::Closed),
        }
        match parse_client_hello(&buf) {
            Ok(hello) => return Ok((buf, hello)),
            Err(HelloError::Incomplete) => {}
            Err(HelloError::NotTls | HelloError::Malformed) => return Err(HelloFailure::Bad),
        }
    }
}

/// SO_ORIGINAL_DST, when the connection was redirected (NAT); `None` when
/// the socket has none or it is the listener's own address.
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let orig = orig.ok()?.as_socket()?;
    (orig != local).then_some(orig)
}
