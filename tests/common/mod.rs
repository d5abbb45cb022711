//! Shared harness for the integration tests: an in-process DNS server whose
//! answers can change at runtime, upstream servers (echo, byte-counting sink,
//! banner, TLS, HTTP), the proxy started in-process with an access-log
//! collector, and a small CONNECT client. Every wait is bounded by [`WAIT`];
//! nothing sleeps to synchronise.
//!
//! Addresses: only loopback. Each upstream gets its own `127.x.y.z` address
//! from [`fresh_ip`] so that tests running in parallel never collide, even on
//! the fixed ports (443, 2001-2500) the seed policy names.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{LowerName, Name, RData, RecordSet, RecordType, RrKey};
use hickory_server::zone_handler::Catalog;
use hickory_server::Server;
use portcullis::access_log::{AccessLog, AccessRecord};
use portcullis::app::Running;
use portcullis::config::Config;
use portcullis::policy::Policy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// Upper bound for every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for: {what}"),
    }
}

// ---------------------------------------------------------------------------
// Loopback addresses
// ---------------------------------------------------------------------------

static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A loopback address no other test of this process uses. The second octet
/// depends on the process id, so concurrently running test binaries (other
/// suites) are unlikely to pick the same addresses either.
pub fn fresh_ip() -> Ipv4Addr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    let second = 16 + (std::process::id() % 200) as u8;
    Ipv4Addr::new(127, second, (n / 250) as u8, (n % 250) as u8 + 2)
}

/// Binds a TCP listener on a fresh loopback address and `port` (0 = any).
pub async fn bind_fresh(port: u16) -> TcpListener {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind((fresh_ip(), port)).await {
            Ok(l) => return l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => panic!("binding a loopback listener on port {port}: {e}"),
        }
    }
    panic!("no free loopback address for port {port}: {last:?}");
}

/// Binds one listener per port, all on the same fresh loopback address.
pub async fn bind_ports(ports: &[u16]) -> (Ipv4Addr, Vec<TcpListener>) {
    'ip: for _ in 0..100 {
        let ip = fresh_ip();
        let mut out = Vec::new();
        for &p in ports {
            match TcpListener::bind((ip, p)).await {
                Ok(l) => out.push(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue 'ip,
                Err(e) => panic!("binding {ip}:{p}: {e}"),
            }
        }
        return (ip, out);
    }
    panic!("no loopback address with ports {ports:?} free");
}

/// Binds `port` on `count` distinct fresh loopback addresses (for "same port,
/// several addresses" tests). `port` 0 picks one from the first bind.
pub async fn bind_same_port(count: usize, port: u16) -> Vec<TcpListener> {
    let first = bind_fresh(port).await;
    let port = first.local_addr().unwrap().port();
    let mut out = vec![first];
    let mut tries = 0;
    while out.len() < count {
        tries += 1;
        assert!(tries < 200, "no free loopback address for port {port}");
        match TcpListener::bind((fresh_ip(), port)).await {
            Ok(l) => out.push(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => panic!("binding port {port}: {e}"),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------

#[path = "../dns_zone/mod.rs"]
mod dns_zone;

use dns_zone::Zone;

/// An authoritative DNS server for the whole name space (root zone) on
/// 127.0.0.1, UDP and TCP on the same port. Unknown names are NXDOMAIN;
/// answers can be replaced while it runs ([`DnsServer::set`]).
pub struct DnsServer {
    /// `127.0.0.1:port` to put in `cfg.dns_nameservers`.
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    _server: Server<Catalog>,
}

impl DnsServer {
    /// Starts an empty server (every name NXDOMAIN).
    pub async fn start() -> DnsServer {
        let origin = Name::root();
        // Negative-answer TTL 1 s: nothing sticks between a test's steps.
        let zone = Arc::new(dns_zone::empty_zone(&origin, 1));
        let (addr, server) = dns_zone::serve(&origin, zone.clone(), None).await;
        DnsServer {
            addr,
            zone,
            _server: server,
        }
    }

    /// Replaces the A/AAAA answers for `name` (absolute or not; any case)
    /// with `ips`, all with `ttl` seconds. An empty `ips` removes the name
    /// (NXDOMAIN).
    pub async fn set(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        let name = Name::from_ascii(&fqdn).unwrap_or_else(|e| panic!("bad DNS name {fqdn:?}: {e}"));
        let lower = LowerName::new(&name);
        let mut v4 = RecordSet::with_ttl(name.clone(), RecordType::A, ttl);
        let mut v6 = RecordSet::with_ttl(name.clone(), RecordType::AAAA, ttl);
        for ip in ips {
            match ip {
                IpAddr::V4(a) => v4.add_rdata(RData::A(A(*a))),
                IpAddr::V6(a) => v6.add_rdata(RData::AAAA(AAAA(*a))),
            };
        }
        let mut records = self.zone.records_mut().await;
        records.remove(&RrKey::new(lower.clone(), RecordType::A));
        records.remove(&RrKey::new(lower.clone(), RecordType::AAAA));
        if !v4.is_empty() {
            records.insert(RrKey::new(lower.clone(), RecordType::A), Arc::new(v4));
        }
        if !v6.is_empty() {
            records.insert(RrKey::new(lower, RecordType::AAAA), Arc::new(v6));
        }
    }

    /// Convenience: one IPv4 answer with a long TTL.
    pub async fn set_v4(&self, name: &str, ip: Ipv4Addr) {
        self.set(name, &[IpAddr::V4(ip)], 300).await;
    }
}

/// A "DNS server" that receives queries and never answers (for dns_timeout).
pub struct SilentDns {
    /// Address to put in `cfg.dns_nameservers`.
    pub addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

impl SilentDns {
    /// Binds UDP and TCP on 127.0.0.1 and never reads from either.
    pub async fn start() -> SilentDns {
        let (udp, tcp) = dns_zone::udp_tcp_pair().await;
        SilentDns {
            addr: udp.local_addr().unwrap(),
            _udp: udp,
            _tcp: tcp,
        }
    }
}

// ---------------------------------------------------------------------------
// Upstream servers
// ---------------------------------------------------------------------------

/// A running upstream server; aborted when dropped.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn serve_each<F, Fut>(listener: TcpListener, per_conn: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                a = listener.accept() => match a {
                    Ok((s, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        conns.spawn(per_conn(s));
                    }
                    Err(_) => return,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Upstream {
        addr,
        accepted,
        task,
    }
}

/// Echoes every byte back; half-closes after the client's EOF.
pub fn echo(listener: TcpListener) -> Upstream {
    serve_each(listener, |mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
}

/// Writes `banner`, half-closes, then drains the client until EOF.
pub fn banner(listener: TcpListener, banner: &str) -> Upstream {
    let banner = banner.as_bytes().to_vec();
    serve_each(listener, move |mut s| {
        let banner = banner.clone();
        async move {
            let _ = s.write_all(&banner).await;
            let _ = s.shutdown().await;
            let mut sink = [0u8; 1024];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
}

/// Counts the bytes each connection delivers; reports the total when the
/// connection ends.
pub struct Sink {
    /// The server.
    pub upstream: Upstream,
    closed: tokio::sync::Mutex<mpsc::UnboundedReceiver<u64>>,
}

impl Sink {
    /// Starts a sink on `listener`.
    pub fn start(listener: TcpListener) -> Sink {
        let (tx, rx) = mpsc::unbounded_channel();
        let upstream = serve_each(listener, move |mut s| {
            let tx = tx.clone();
            async move {
                let mut total = 0u64;
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = tx.send(total);
            }
        });
        Sink {
            upstream,
            closed: tokio::sync::Mutex::new(rx),
        }
    }

    /// Bytes received on the next connection to close.
    pub async fn next_closed(&self) -> u64 {
        let mut rx = self.closed.lock().await;
        within("the sink's connection to close", rx.recv())
            .await
            .expect("sink stopped")
    }
}

/// A test CA and a server certificate for one name.
pub struct TestPki {
    /// The CA certificate, to trust in clients.
    pub ca: rustls::pki_types::CertificateDer<'static>,
    /// Server chain (leaf, CA).
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Leaf key (PKCS#8 DER).
    pub key: Vec<u8>,
}

impl TestPki {
    /// A fresh CA and a leaf certificate for `name`.
    pub fn new(name: &str) -> TestPki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        TestPki {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: leaf_key.serialize_der(),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Server config presenting the leaf.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        Arc::new(cfg)
    }

    /// Client config trusting only the test CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

/// TLS server: completes the handshake with `config`, then echoes the
/// decrypted bytes back until the client's close_notify/EOF.
pub fn tls_echo(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Upstream {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    serve_each(listener, move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(s).await else {
                return;
            };
            let (mut r, mut w) = tokio::io::split(tls);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
    })
}

/// A tiny HTTP/1.1 origin (hyper): answers every request with
/// `origin saw <METHOD> <target> host=<Host>`.
pub fn http_origin(listener: TcpListener) -> Upstream {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    serve_each(listener, |s| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let host = req
                .headers()
                .get("host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let body = format!("origin saw {} {} host={}", req.method(), req.uri(), host);
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .header("x-origin", "yes")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    })
}

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

/// The built-in default config with every listener on 127.0.0.1:0, `dns`
/// as the only nameserver and the 127/8 exception to `deny_cidrs`.
pub fn config(dns: SocketAddr) -> Config {
    let mut cfg = Config::load_from(None, Some(HashMap::new())).expect("built-in config");
    cfg.proxy_listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.dns_nameservers = vec![dns];
    cfg.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    cfg
}

/// A policy from TOML text.
pub fn policy(text: &str) -> Policy {
    Policy::from_toml_str(text, "test.toml")
        .unwrap_or_else(|e| panic!("test policy invalid: {e}\n{text}"))
}

/// A one-rule policy.
pub fn one_rule(name: &str, host: &str, port: u16, tls: &str) -> Policy {
    policy(&format!(
        "[[rule]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nports = [{port}]\ntls = \"{tls}\"\n"
    ))
}

/// A proxy running in this process.
pub struct Proxy {
    /// The handle from `app::start`.
    pub running: Running,
    /// The explicit-proxy listener.
    pub addr: SocketAddr,
    records: Mutex<std::sync::mpsc::Receiver<AccessRecord>>,
}

impl Proxy {
    /// Starts the proxy with `cfg` and `policy`.
    pub async fn start(cfg: Config, policy: Policy) -> Proxy {
        let (log, records) = AccessLog::collector();
        let running = portcullis::app::start(cfg, policy, log)
            .await
            .expect("proxy starts");
        let addr = running.proxy_addrs[0];
        Proxy {
            running,
            addr,
            records: Mutex::new(records),
        }
    }

    /// The next access-log record (waits at most [`WAIT`]). Needs the
    /// multi-thread runtime.
    pub fn next_record(&self) -> AccessRecord {
        let rx = self.records.lock().unwrap();
        tokio::task::block_in_place(|| rx.recv_timeout(WAIT))
            .unwrap_or_else(|e| panic!("no access-log record within {WAIT:?}: {e}"))
    }

    /// The next record whose `decision` is `decision`, skipping others.
    pub fn next_record_with(&self, decision: &str) -> AccessRecord {
        loop {
            let r = self.next_record();
            if r.decision == decision {
                return r;
            }
        }
    }

    /// True if no record is queued right now.
    pub fn no_pending_record(&self) -> bool {
        self.records.lock().unwrap().try_recv().is_err()
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        self.running.shared.metrics.render()
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }
}

/// Sum of the samples of `name` in `text` whose labels include all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else {
                continue;
            };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let ok = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if ok {
            sum += value
                .trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad sample: {line}"));
        }
    }
    sum
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A response head (and body, for non-200 answers).
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order (names as sent).
    pub headers: Vec<(String, String)>,
    /// Body (empty for a 200 CONNECT answer).
    pub body: Vec<u8>,
}

impl Response {
    /// First field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads a response head byte by byte (so no tunnel byte is consumed).
pub async fn read_head(s: &mut (impl AsyncRead + Unpin)) -> Response {
    let mut buf = Vec::new();
    within("a response head", async {
        let mut b = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut b).await.expect("reading the response head");
            assert!(
                n > 0,
                "connection closed inside the response head; got {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(b[0]);
            assert!(buf.len() < 64 * 1024, "response head too long");
        }
    })
    .await;
    let text = String::from_utf8(buf).expect("response head is UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    assert!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 status line: {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Reads a response with its body (Content-Length, chunked is not expected,
/// otherwise until EOF).
pub async fn read_response(s: &mut (impl AsyncRead + Unpin)) -> Response {
    let mut r = read_head(s).await;
    let len = r
        .header("content-length")
        .map(|v| v.parse::<usize>().expect("numeric Content-Length"));
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            within("the response body", s.read_exact(&mut body))
                .await
                .expect("reading the response body");
        }
        None => {
            assert!(
                !r.header("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked")),
                "chunked bodies not supported by the test client"
            );
            within("the response body (to EOF)", s.read_to_end(&mut body))
                .await
                .expect("reading the response body");
        }
    }
    r.body = body;
    r
}

/// Opens a TCP connection to the proxy.
pub async fn dial(proxy: SocketAddr) -> TcpStream {
    within("connecting to the proxy", TcpStream::connect(proxy))
        .await
        .expect("connect to the proxy")
}

/// Sends `raw` to the proxy and reads the answer: the head only for a 200,
/// head and body otherwise.
pub async fn send_raw(proxy: SocketAddr, raw: &[u8]) -> (TcpStream, Response) {
    let mut s = dial(proxy).await;
    within("sending the request", s.write_all(raw))
        .await
        .expect("write request");
    let mut r = read_head(&mut s).await;
    if r.status != 200 {
        let full = read_body_after(&mut s, &r).await;
        r.body = full;
    }
    (s, r)
}

async fn read_body_after(s: &mut TcpStream, r: &Response) -> Vec<u8> {
    let mut body = Vec::new();
    match r
        .header("content-length")
        .map(|v| v.parse::<usize>().expect("numeric Content-Length"))
    {
        Some(n) => {
            body.resize(n, 0);
            within("the error body", s.read_exact(&mut body))
                .await
                .expect("reading the error body");
        }
        None => {
            within("the error body (to EOF)", s.read_to_end(&mut body))
                .await
                .expect("reading the error body");
        }
    }
    body
}

/// `CONNECT authority` through the proxy.
pub async fn connect(proxy: SocketAddr, authority: &str) -> (TcpStream, Response) {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    send_raw(proxy, req.as_bytes()).await
}

/// `CONNECT` that must succeed; returns the tunnel.
pub async fn tunnel(proxy: SocketAddr, authority: &str) -> TcpStream {
    let (s, r) = connect(proxy, authority).await;
    assert_eq!(
        r.status,
        200,
        "CONNECT {authority} refused: {r:?} body={:?}",
        r.text()
    );
    s
}

/// Asserts the SPEC error-response shape: status, `Proxy-Status:
/// portcullis; error=<error>`, `text/plain`, a one-line body, `Connection: close`.
pub fn assert_error(r: &Response, status: u16, error: &str) {
    let ctx = format!("{r:?} body={:?}", r.text());
    assert_eq!(r.status, status, "status; {ctx}");
    let ps = r
        .header("proxy-status")
        .unwrap_or_else(|| panic!("no Proxy-Status; {ctx}"));
    let mut items = ps.split(';').map(str::trim);
    assert_eq!(
        items.next(),
        Some("portcullis"),
        "Proxy-Status names the proxy; {ctx}"
    );
    assert!(
        items.any(|p| p == format!("error={error}")),
        "Proxy-Status error={error}; {ctx}"
    );
    let ct = r
        .header("content-type")
        .unwrap_or_else(|| panic!("no Content-Type; {ctx}"));
    assert!(
        ct.to_ascii_lowercase().starts_with("text/plain"),
        "Content-Type text/plain; {ctx}"
    );
    let conn = r
        .header("connection")
        .unwrap_or_else(|| panic!("no Connection; {ctx}"));
    assert!(
        conn.eq_ignore_ascii_case("close"),
        "Connection: close; {ctx}"
    );
    let body =
        String::from_utf8(r.body.clone()).unwrap_or_else(|_| panic!("body is not UTF-8; {ctx}"));
    let trimmed = body.strip_suffix('\n').unwrap_or(&body);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    assert!(
        !trimmed.trim().is_empty(),
        "body says what was refused; {ctx}"
    );
    assert!(!trimmed.contains(['\n', '\r']), "body is one line; {ctx}");
}

/// Waits for the peer to close: read returns EOF (or a reset).
pub async fn expect_closed(s: &mut (impl AsyncRead + Unpin)) {
    within("the connection to close", async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Writes `data` and reads back exactly as many bytes.
pub async fn roundtrip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    within("an echo round trip", async {
        s.write_all(data).await.expect("write");
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await.expect("read echo");
        back
    })
    .await
}

/// Reads until EOF.
pub async fn read_all(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    within("reading to EOF", s.read_to_end(&mut out))
        .await
        .expect("read to EOF");
    out
}

/// A client stream that sends a CONNECT head in the same write as the first
/// bytes written to it, and strips the proxy's 200 answer from what is read.
/// Used to check that bytes right behind the head are not lost.
pub struct ConnectPrefixed {
    inner: TcpStream,
    head: Option<Vec<u8>>,
    pending: Vec<u8>,
    claimed: usize,
    /// Size of the first write, head included.
    pub first_write_len: Arc<AtomicU64>,
    answer: Vec<u8>,
    answer_done: bool,
    leftover: Vec<u8>,
}

impl ConnectPrefixed {
    /// Wraps `inner`; `authority` goes in the CONNECT head.
    pub fn new(inner: TcpStream, authority: &str) -> ConnectPrefixed {
        ConnectPrefixed {
            inner,
            head: Some(
                format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes(),
            ),
            pending: Vec::new(),
            claimed: 0,
            first_write_len: Arc::new(AtomicU64::new(0)),
            answer: Vec::new(),
            answer_done: false,
            leftover: Vec::new(),
        }
    }
}

impl AsyncWrite for ConnectPrefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(head) = this.head.take() {
            this.pending = head;
            this.pending.extend_from_slice(buf);
            this.claimed = buf.len();
            this.first_write_len
                .store(this.pending.len() as u64, Ordering::SeqCst);
        }
        while !this.pending.is_empty() {
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending) {
                Poll::Ready(Ok(n)) => {
                    this.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.claimed > 0 {
            let c = this.claimed;
            this.claimed = 0;
            return Poll::Ready(Ok(c));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for ConnectPrefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.answer_done {
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "proxy closed before answering: {:?}",
                                String::from_utf8_lossy(&this.answer)
                            ),
                        )));
                    }
                    this.answer.extend_from_slice(got);
                    if let Some(pos) = this.answer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&this.answer[..pos]).into_owned();
                        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                            return Poll::Ready(Err(io::Error::other(format!(
                                "CONNECT refused: {head}"
                            ))));
                        }
                        this.leftover = this.answer.split_off(pos + 4);
                        this.answer_done = true;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if !this.leftover.is_empty() {
            let n = this.leftover.len().min(buf.remaining());
            buf.put_slice(&this.leftover[..n]);
            this.leftover.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// A deterministic byte pattern of `len` bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Added for the adversarial, fault and resource suites (tests/adversarial.rs,
// tests/faults.rs, tests/resources.rs).
// ---------------------------------------------------------------------------

/// Raises this process's `RLIMIT_NOFILE` soft limit to at least `want`
/// (raising the hard limit too when allowed, e.g. as root). Returns the soft
/// limit in force afterwards; the caller decides what to do if it is lower.
/// Child processes inherit it.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want as libc::rlim_t {
            return lim.rlim_cur as u64;
        }
        if lim.rlim_max < want as libc::rlim_t {
            let raised = libc::rlimit {
                rlim_cur: want as libc::rlim_t,
                rlim_max: want as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        let soft = lim.rlim_max.min(want as libc::rlim_t);
        let raised = libc::rlimit {
            rlim_cur: soft,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            soft as u64
        } else {
            lim.rlim_cur as u64
        }
    }
}

/// Makes the next close of `s` send a RST instead of a FIN (SO_LINGER 0).
pub fn set_linger_zero(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// A ClientHello record from a real rustls client for `name` (SNI sent).
pub async fn client_hello_record(cfg: Arc<rustls::ClientConfig>, name: &str) -> Vec<u8> {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let hs = tokio::spawn(async move {
        let _ = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, client)
            .await;
    });
    let rec = within("a ClientHello from rustls", async {
        let mut head = [0u8; 5];
        server.read_exact(&mut head).await.unwrap();
        let len = u16::from_be_bytes([head[3], head[4]]) as usize;
        let mut rec = head.to_vec();
        rec.resize(5 + len, 0);
        server.read_exact(&mut rec[5..]).await.unwrap();
        rec
    })
    .await;
    hs.abort();
    assert_eq!(rec[0], 0x16, "a handshake record");
    rec
}

/// How a [`ScriptedDns`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DnsMode {
    /// Relays queries (UDP and TCP) to the inner [`DnsServer`].
    Forward = 0,
    /// Receives queries and never answers (UDP dropped, TCP held open).
    Silent = 1,
    /// UDP: an empty answer with the TC bit set; TCP: relayed to the inner
    /// server, so a resolver that falls back to TCP gets the real answer.
    Truncate = 2,
    /// Random bytes (random ID) on UDP and TCP.
    Garbage = 3,
    /// A header with the query's ID and QR set, then random bytes.
    GarbageSameId = 4,
}

/// A DNS front on 127.0.0.1 (UDP and TCP, same port) whose behaviour can be
/// switched while it runs; the real answers come from an inner [`DnsServer`].
pub struct ScriptedDns {
    /// Address to put in `cfg.dns_nameservers`.
    pub addr: SocketAddr,
    /// The server that holds the records ([`DnsServer::set`]).
    pub inner: DnsServer,
    mode: Arc<std::sync::atomic::AtomicU8>,
    /// UDP datagrams received.
    pub udp_queries: Arc<AtomicU64>,
    /// TCP connections accepted.
    pub tcp_connections: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ScriptedDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The end of the question section of a DNS message (header + one question).
fn dns_question_end(q: &[u8]) -> Option<usize> {
    let mut i = 12;
    loop {
        let len = *q.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            i += 2;
            break;
        }
        i += 1 + len;
    }
    (i + 4 <= q.len()).then_some(i + 4)
}

impl ScriptedDns {
    /// Starts in `mode`.
    pub async fn start(mode: DnsMode) -> ScriptedDns {
        let inner = DnsServer::start().await;
        let (udp, tcp) = dns_zone::udp_tcp_pair().await;
        let addr = udp.local_addr().unwrap();
        let udp = Arc::new(udp);
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(mode as u8));
        let udp_queries = Arc::new(AtomicU64::new(0));
        let tcp_connections = Arc::new(AtomicU64::new(0));
        let inner_addr = inner.addr;
        let seed = Arc::new(AtomicU32::new(1));

        let (m, n, s) = (mode.clone(), udp_queries.clone(), seed.clone());
        let udp_task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let (len, peer) = tokio::select! {
                    r = udp.recv_from(&mut buf) => match r {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    Some(_) = relays.join_next(), if !relays.is_empty() => continue,
                };
                n.fetch_add(1, Ordering::SeqCst);
                let q = buf[..len].to_vec();
                if q.len() < 12 {
                    continue;
                }
                match m.load(Ordering::SeqCst) {
                    0 => {
                        let front = udp.clone();
                        relays.spawn(async move {
                            let Ok(sock) = UdpSocket::bind("127.0.0.1:0").await else {
                                return;
                            };
                            if sock.send_to(&q, inner_addr).await.is_err() {
                                return;
                            }
                            let mut r = vec![0u8; 4096];
                            if let Ok(Ok(n)) = tokio::time::timeout(WAIT, sock.recv(&mut r)).await {
                                let _ = front.send_to(&r[..n], peer).await;
                            }
                        });
                    }
                    1 => {}
                    2 => {
                        let Some(end) = dns_question_end(&q) else {
                            continue;
                        };
                        let mut r = q[..end].to_vec();
                        // QR=1, keep opcode and RD, TC=1; RA=1, RCODE=0.
                        r[2] = 0x80 | (q[2] & 0x79) | 0x02;
                        r[3] = 0x80;
                        r[4..6].copy_from_slice(&[0, 1]);
                        r[6..12].copy_from_slice(&[0; 6]);
                        let _ = udp.send_to(&r, peer).await;
                    }
                    3 => {
                        let k = s.fetch_add(1, Ordering::SeqCst);
                        let g = pattern(12 + (k as usize * 37) % 500, k);
                        let _ = udp.send_to(&g, peer).await;
                    }
                    _ => {
                        let k = s.fetch_add(1, Ordering::SeqCst);
                        let mut g = pattern(12 + (k as usize * 37) % 500, k);
                        g[0] = q[0];
                        g[1] = q[1];
                        g[2] |= 0x80;
                        let _ = udp.send_to(&g, peer).await;
                    }
                }
            }
        });

        let (m, n, s) = (mode.clone(), tcp_connections.clone(), seed);
        let tcp_task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let mut c = tokio::select! {
                    a = tcp.accept() => match a {
                        Ok((c, _)) => c,
                        Err(_) => continue,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                n.fetch_add(1, Ordering::SeqCst);
                let mode = m.load(Ordering::SeqCst);
                let k = s.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    match mode {
                        0 | 2 => {
                            if let Ok(mut up) = TcpStream::connect(inner_addr).await {
                                let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                            }
                        }
                        1 => {
                            let mut sink = [0u8; 1024];
                            while let Ok(n) = c.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        _ => {
                            let _ = c.write_all(&pattern(600, k)).await;
                            let _ = c.shutdown().await;
                        }
                    }
                });
            }
        });
        ScriptedDns {
            addr,
            inner,
            mode,
            udp_queries,
            tcp_connections,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Switches how it answers from now on.
    pub fn set_mode(&self, mode: DnsMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// A scratch directory under the target dir, removed on drop.
pub struct ScratchDir(pub std::path::PathBuf);

impl ScratchDir {
    /// A fresh, empty directory tagged `tag`.
    pub fn new(tag: &str) -> ScratchDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        ScratchDir(p)
    }

    /// Writes `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config for the real binary: loopback listeners on port 0, `dns` as the
/// nameserver, `policy.toml` next to the config, JSON logs. `extra` is
/// appended inside `[limits]` (e.g. `"max_connections = 50\n"`), and
/// `allow_loopback` adds the 127/8 exception to `deny_cidrs`.
pub fn bin_config(dns: SocketAddr, allow_loopback: bool, limits: &str) -> String {
    let allow = if allow_loopback {
        "allow_cidrs = [\"127.0.0.0/8\"]\n"
    } else {
        ""
    };
    format!(
        "policy = \"policy.toml\"\n\
         [proxy]\nlisten = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 2000\n\
         [upstream]\n{allow}connect_timeout_ms = 2000\n\
         [limits]\n{limits}\
         [log]\nformat = \"json\"\nlevel = \"info\"\n"
    )
}

/// `portcullis run` as a child process (optionally behind a wrapper such as
/// `prlimit --nofile=64:64 --`, which execs it, so the pid is the proxy's).
/// Its stderr and stdout are collected line by line; killed on drop.
pub struct BinProxy {
    /// The child (the proxy itself).
    pub child: std::process::Child,
    /// Explicit proxy listener.
    pub proxy: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    _dir: ScratchDir,
}

fn collect_lines(
    r: impl io::Read + Send + 'static,
    tx: Option<mpsc::UnboundedSender<String>>,
) -> Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl BinProxy {
    /// Writes `config` and `policy` (as `policy.toml`) to a scratch dir and
    /// starts `[wrapper..] portcullis -c config run`; waits (bounded) for the
    /// proxy and admin "listening" lines.
    pub async fn spawn(tag: &str, config: &str, policy: &str, wrapper: &[&str]) -> BinProxy {
        Self::spawn_env(tag, config, policy, wrapper, &[]).await
    }

    /// [`BinProxy::spawn`] with extra environment variables for the child.
    pub async fn spawn_env(
        tag: &str,
        config: &str,
        policy: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> BinProxy {
        use std::process::{Command, Stdio};
        let dir = ScratchDir::new(tag);
        dir.write("policy.toml", policy);
        let cfg = dir.write("portcullis.toml", config);
        let bin = env!("CARGO_BIN_EXE_portcullis");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("PORTCULLIS") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.args(["-c", cfg.to_str().unwrap(), "run"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning portcullis");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stdout = collect_lines(child.stdout.take().unwrap(), None);
        let stderr = collect_lines(child.stderr.take().unwrap(), Some(tx));
        let (mut proxy, mut admin) = (None, None);
        let found = tokio::time::timeout(WAIT, async {
            while proxy.is_none() || admin.is_none() {
                let Some(line) = rx.recv().await else {
                    return false;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["message"] != "listening" {
                    continue;
                }
                let addr: Option<SocketAddr> = v["addr"].as_str().and_then(|a| a.parse().ok());
                match v["listener"].as_str() {
                    Some("proxy") => proxy = proxy.or(addr),
                    Some("admin") => admin = admin.or(addr),
                    _ => {}
                }
            }
            true
        })
        .await;
        let mut p = BinProxy {
            child,
            proxy: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            stderr,
            stdout,
            _dir: dir,
        };
        if found != Ok(true) {
            let status = p.child.try_wait().ok().flatten();
            panic!(
                "portcullis did not announce its listeners (exit status {status:?}):\n{}",
                p.stderr_lines().join("\n")
            );
        }
        p.proxy = proxy.unwrap();
        p.admin = admin.unwrap();
        p
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Diagnostic lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Access-log lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> u64 {
        proc_rss_kib(self.pid())
    }

    /// Open file descriptors (`/proc/<pid>/fd` entries).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// `GET /metrics` from the admin listener.
    pub async fn metrics(&self) -> String {
        let mut s = dial(self.admin).await;
        within("GET /metrics", async {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await.unwrap();
            let text = String::from_utf8_lossy(&raw).into_owned();
            assert!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
            text.split_once("\r\n\r\n").unwrap().1.to_owned()
        })
        .await
    }
}

impl Drop for BinProxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` of a process, in KiB.
pub fn proc_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/pid/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/pid/status")
}

/// Runs `per_conn` for every connection `listener` accepts (the public form
/// of the helper behind [`echo`], [`banner`] and [`Sink`]).
pub fn serve_each_pub<F, Fut>(listener: TcpListener, per_conn: F) -> Upstream
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_each(listener, per_conn)
}
