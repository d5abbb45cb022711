//! Absolute-form `http://` forwarding on the explicit proxy listener. hyper
//! does the HTTP/1.1 framing both ways; every request goes through the gate
//! on its own upstream connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::{Request, Response, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::AccessRecord;
use crate::error::{Decision, GateError, Reason};
use crate::gate;
use crate::io_util::{Counted, Counters, Rewind};
use crate::metrics::Listener;
use crate::state::Shared;
use crate::target::parse_host_port_default;

type Body = BoxBody<Bytes, hyper::Error>;

/// Hop-by-hop fields never forwarded (RFC 9110 §7.6.1), plus proxy credentials.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Serves absolute-form requests on `stream`; `prefix` is the first head, already read.
pub async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    prefix: Vec<u8>,
    permit: OwnedSemaphorePermit,
) {
    let io = TokioIo::new(Rewind::new(prefix, stream));
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| handle(svc_shared.clone(), peer, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout)
        .max_buf_size(super::connect::MAX_HEAD_BYTES.max(8192))
        .serve_connection(io, service);
    tokio::select! {
        r = conn => if let Err(e) = r { tracing::debug!(client = %peer, error = %e, "http connection ended with error") },
        _ = shared.stop_tunnels.cancelled() => {}
    }
    drop(permit);
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let mut rec = AccessRecord {
        listener: Listener::Http.as_str(),
        client: peer.to_string(),
        ..Default::default()
    };
    match forward(&shared, &mut rec, req, started).await {
        Ok(resp) => Ok(resp),
        Err(e) => {
            rec.decision = e.decision().as_str();
            rec.reason = e.reason().as_str();
            super::finish(&shared, Listener::Http, rec, started);
            Ok(error_response(&e))
        }
    }
}

async fn forward(
    shared: &Arc<Shared>,
    rec: &mut AccessRecord,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<Body>, GateError> {
    let uri = req.uri().clone();
    let authority = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) if s.eq_ignore_ascii_case("http") => a.as_str().to_owned(),
        _ => {
            return Err(GateError::BadRequest(
                "only absolute http:// URIs can be forwarded".into(),
            ))
        }
    };
    let target = parse_host_port_default(&authority, 80)
        .map_err(|e| GateError::BadRequest(e.to_string()))?;
    rec.host = target.host.to_string();
    rec.port = target.port;
    let verdict = {
        let policy = shared.policy.load();
        gate::decide(&policy, shared.config.mode, &target)?
    };
    rec.rule = verdict.rule_label().to_owned();
    let opened = gate::connect(shared, &target).await?;
    rec.upstream = Some(opened.upstream.to_string());

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // RFC 9112 §3.2.2: the request target wins over a received Host field.
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(HOST, v);
    }
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("close"));
    parts.uri = uri.path_and_query().map_or_else(
        || Uri::from_static("/"),
        |pq| Uri::try_from(pq.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
    );
    let counters = Arc::new(Counters::default());
    let io = TokioIo::new(Counted::new(opened.stream, counters.clone()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(io)
        .await
        .map_err(|_| GateError::DestinationUnavailable(target.to_string()))?;
    let log_shared = shared.clone();
    let mut done = rec.clone();
    (done.decision, done.reason) = match verdict.reported {
        Some(r) => (Decision::Report.as_str(), r.as_str()),
        None => (Decision::Allow.as_str(), Reason::Ok.as_str()),
    };
    let stop = shared.stop_tunnels.clone();
    // `limits.idle_timeout_s` applies here as to tunnels: an upstream that
    // accepts and then sends nothing (no response head, or a stalled body)
    // while nothing is sent to it either would otherwise hold this request,
    // its client connection and its `max_connections` slot forever (found by
    // tests/faults.rs). The watchdog ends the upstream connection once no
    // byte moved either way for a whole idle period; `idled` tells the
    // waiting request why, so it answers 504.
    let idled = Arc::new(AtomicBool::new(false));
    let idle_watch = idle_watchdog(counters.clone(), shared.config.idle_timeout, idled.clone());
    shared.tasks.spawn(async move {
        let gauge = log_shared.metrics.active(Listener::Http).clone();
        gauge.inc();
        tokio::select! {
            _ = conn => {}
            _ = stop.cancelled() => {}
            _ = idle_watch => {}
        }
        gauge.dec();
        done.bytes_up = counters.written.load(Ordering::Relaxed);
        done.bytes_down = counters.read.load(Ordering::Relaxed);
        log_shared.metrics.record_tunnel(
            &done.rule,
            done.bytes_up,
            done.bytes_down,
            started.elapsed().as_secs_f64(),
        );
        super::finish(&log_shared, Listener::Http, done, started);
    });
    let resp = sender
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|_| {
            if idled.load(Ordering::Relaxed) {
                // No Proxy-Status type for "no response in time" exists in
                // error.rs yet; 504 connection_timeout is the closest.
                GateError::ConnectTimeout(target.to_string())
            } else {
                GateError::DestinationUnavailable(target.to_string())
            }
        })?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Resolves once `counters` have not moved for a whole `idle` period
/// (checked every `idle`, so after between one and two periods of silence),
/// setting `idled` first.
async fn idle_watchdog(counters: Arc<Counters>, idle: std::time::Duration, idled: Arc<AtomicBool>) {
    let moved = || counters.read.load(Ordering::Relaxed) + counters.written.load(Ordering::Relaxed);
    let mut last = moved();
    loop {
        tokio::time::sleep(idle).await;
        let now = moved();
        if now == last {
            idled.store(true, Ordering::Relaxed);
            return;
        }
        last = now;
    }
}

/// Removes hop-by-hop fields, including those the Connection field names.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The SPEC error response as a hyper response.
fn error_response(e: &GateError) -> Response<Body> {
    let body =
        format!("portcullis: {e}\n").replace(|c: char| !(' '..='~').contains(&c) && c != '\n', "?");
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() =
        hyper::StatusCode::from_u16(e.status()).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&e.proxy_status()) {
        h.insert("proxy-status", v);
    }
    h.insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}
