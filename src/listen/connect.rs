//! The explicit proxy listener: reads a request head (bounded in size and
//! time), answers CONNECT after dialling, and hands absolute-form `http://`
//! requests to [`super::http`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::AccessRecord;
use crate::error::{Decision, GateError, Reason};
use crate::gate;
use crate::metrics::Listener;
use crate::state::Shared;
use crate::target::{parse_authority, Host};
use crate::tunnel::{self, TunnelEnd, TunnelParams};

/// Largest request head accepted (SPEC: over 8 KiB → 431).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header fields accepted in a head.
const MAX_HEADERS: usize = 100;
/// How long an error response lingers to let the client read it.
const LINGER: Duration = Duration::from_millis(500);

const CONNECT_OK: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// A complete request head and any bytes read after it.
struct Head {
    buf: Vec<u8>,
    len: usize,
    method: String,
    target: String,
}

/// Serves one explicit-proxy connection.
pub async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let mut rec = AccessRecord {
        listener: Listener::Connect.as_str(),
        client: peer.to_string(),
        ..Default::default()
    };
    let head = match read_head(&mut stream, shared.config.handshake_timeout).await {
        Ok(Some(h)) => h,
        Ok(None) => return, // closed before sending anything: nothing to answer or log
        Err(e) => return refuse(&shared, stream, Listener::Connect, rec, e, started).await,
    };
    if head.method != "CONNECT" {
        if head.target.len() > 7 && head.target[..7].eq_ignore_ascii_case("http://") {
            if !shared.client_allowed(peer.ip()) {
                rec.listener = Listener::Http.as_str();
                rec.host = head.target.clone();
                return refuse(
                    &shared,
                    stream,
                    Listener::Http,
                    rec,
                    GateError::ClientDenied,
                    started,
                )
                .await;
            }
            let prefix = head.buf;
            return super::http::serve(shared, stream, peer, prefix, permit).await;
        }
        let e = GateError::BadRequest(format!(
            "{} {} is not a proxy request (use CONNECT host:port or an absolute http:// URI)",
            head.method,
            head.target.chars().take(64).collect::<String>()
        ));
        return refuse(&shared, stream, Listener::Connect, rec, e, started).await;
    }
    let target = match parse_authority(&head.target) {
        Ok(t) => t,
        Err(e) => {
            rec.host = head.target.chars().take(256).collect();
            return refuse(
                &shared,
                stream,
                Listener::Connect,
                rec,
                GateError::BadRequest(e.to_string()),
                started,
            )
            .await;
        }
    };
    rec.host = target.host.to_string();
    rec.port = target.port;
    if !shared.client_allowed(peer.ip()) {
        return refuse(
            &shared,
            stream,
            Listener::Connect,
            rec,
            GateError::ClientDenied,
            started,
        )
        .await;
    }
    let policy = shared.policy.load_full();
    let verdict = match gate::decide(&policy, shared.config.mode, &target) {
        Ok(v) => v,
        Err(e) => return refuse(&shared, stream, Listener::Connect, rec, e, started).await,
    };
    drop(policy);
    rec.rule = verdict.rule_label().to_owned();
    let opened = match gate::connect(&shared, &target).await {
        Ok(o) => o,
        Err(e) => return refuse(&shared, stream, Listener::Connect, rec, e, started).await,
    };
    rec.upstream = Some(opened.upstream.to_string());
    if stream.write_all(CONNECT_OK).await.is_err() {
        rec.decision = Decision::Error.as_str();
        rec.reason = Reason::Ok.as_str();
        return super::finish(&shared, Listener::Connect, rec, started);
    }
    let host = match &target.host {
        Host::Name(n) => n.clone(),
        Host::Ip(_) => String::new(),
    };
    let params = TunnelParams {
        tls: verdict.tls,
        host,
        report_only: shared.config.mode == crate::config::Mode::Report,
        hello_timeout: shared.config.handshake_timeout,
        idle_timeout: shared.config.idle_timeout,
    };
    // Keep only the bytes behind the head; the head's buffer is freed
    // rather than held for the tunnel's lifetime.
    let prefix = head.buf[head.len..].to_vec();
    drop(head);
    let gauge = shared.metrics.active(Listener::Connect).clone();
    gauge.inc();
    let out = tunnel::run(
        &stream,
        &opened.stream,
        prefix,
        &params,
        &shared.stop_tunnels,
    )
    .await;
    gauge.dec();
    super::record_tunnel(&shared, &verdict, &out, started);
    rec.bytes_up = out.bytes_up;
    rec.bytes_down = out.bytes_down;
    (rec.decision, rec.reason) = super::tunnel_verdict(&verdict, &out);
    if out.end == TunnelEnd::TlsCheck {
        tracing::debug!(client = %peer, host = %rec.host, "tls check closed the tunnel");
    }
    drop(permit);
    super::finish(&shared, Listener::Connect, rec, started);
}

/// Answers an over-limit client with 503 and closes.
pub async fn reject_over_limit(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let rec = AccessRecord {
        listener: Listener::Connect.as_str(),
        client: peer.to_string(),
        ..Default::default()
    };
    refuse(
        &shared,
        stream,
        Listener::Connect,
        rec,
        GateError::LimitReached,
        Instant::now(),
    )
    .await;
}

/// Sends the error response for `e`, logs and counts it, and closes gently.
pub(super) async fn refuse(
    shared: &Shared,
    mut stream: TcpStream,
    listener: Listener,
    mut rec: AccessRecord,
    e: GateError,
    started: Instant,
) {
    rec.decision = e.decision().as_str();
    rec.reason = e.reason().as_str();
    if rec.rule.is_empty() {
        rec.rule = "none".to_owned();
    }
    super::finish(shared, listener, rec, started);
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(&e.http_response()).await?;
        stream.shutdown().await?;
        // Read what the client still sends so the close is a FIN, not a RST
        // that could destroy the response before the client reads it.
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// A complete request head, as parsed from the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedHead {
    /// Bytes the head takes (client bytes after it belong to the tunnel).
    pub len: usize,
    /// Request method.
    pub method: String,
    /// Request target as sent.
    pub target: String,
}

/// Parses the request head at the start of `buf` (pure; bounded by
/// [`MAX_HEAD_BYTES`]). `Ok(None)`: a valid prefix, read more.
pub fn parse_head(buf: &[u8]) -> Result<Option<ParsedHead>, GateError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let method = req.method.unwrap_or_default().to_owned();
            let target = req.path.unwrap_or_default().to_owned();
            if method != "CONNECT" {
                if let Some(why) = framing_error(req.headers, req.version.unwrap_or(1)) {
                    return Err(GateError::BadRequest(why.into()));
                }
            }
            Ok(Some(ParsedHead {
                len,
                method,
                target,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            Err(GateError::HeadTooLarge(MAX_HEAD_BYTES))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(GateError::HeadTooLarge(MAX_HEAD_BYTES)),
        Err(e) => Err(GateError::BadRequest(format!(
            "malformed request head: {e}"
        ))),
    }
}

/// Reads one request head. `Ok(None)`: the client closed without sending.
async fn read_head(stream: &mut TcpStream, timeout: Duration) -> Result<Option<Head>, GateError> {
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Err(_) => return Err(GateError::HeadTimeout),
            Ok(Err(_)) => return Ok(None),
            Ok(Ok(())) => {}
        }
        let n = match crate::tunnel::read_into_tail(stream, &mut buf, MAX_HEAD_BYTES) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(GateError::BadRequest(
                "connection closed inside the request head".into(),
            ));
        }
        if let Some(head) = parse_head(&buf)? {
            return Ok(Some(Head {
                buf,
                len: head.len,
                method: head.method,
                target: head.target,
            }));
        }
    }
}

/// Message framing that must not be forwarded (RFC 9112 §6.1-6.3): a
/// Content-Length that is not one decimal number (`5x`, `+5`, or `5, 6` /
/// two fields that disagree), Transfer-Encoding in HTTP/1.0, or a
/// Transfer-Encoding whose final coding is not `chunked`.
///
/// hyper refuses the same requests, but with a bare `400` lacking the
/// `Proxy-Status` field every error response must carry; checking the first
/// head here gives the SPEC's answer (found by tests/adversarial.rs). Both
/// Content-Length and chunked Transfer-Encoding is left to hyper, which frames
/// by Transfer-Encoding alone, drops Content-Length and closes afterwards.
fn framing_error(headers: &[httparse::Header<'_>], minor_version: u8) -> Option<&'static str> {
    let mut length: Option<&[u8]> = None;
    let mut codings: Vec<&[u8]> = Vec::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            for v in h.value.split(|&b| b == b',') {
                let v = v.trim_ascii();
                if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                    return Some("invalid Content-Length");
                }
                if length.is_some_and(|l| l != v) {
                    return Some("conflicting Content-Length values");
                }
                length = Some(v);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(
                h.value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty()),
            );
        }
    }
    if codings.is_empty() {
        return None;
    }
    if minor_version == 0 {
        return Some("Transfer-Encoding in an HTTP/1.0 request");
    }
    match codings.last() {
        Some(c) if c.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some("Transfer-Encoding whose final coding is not chunked"),
    }
}
