//! The transparent SNI listener, end to end.
//!
//! Two parts:
//!
//! - In-process tests: the proxy is started with `portcullis::app::start`
//!   next to an in-process DNS server and a TLS upstream on loopback. They
//!   cover routing by SNI (verified handshakes through the tunnel, a
//!   ClientHello written one byte at a time, split over two TLS records, or
//!   ~2 KB over two TCP segments) and every refusal (denied SNI or port, no
//!   SNI, IP-literal SNI, not TLS, NXDOMAIN, prohibited address, a truncated
//!   ClientHello followed by silence): closed with nothing reaching an
//!   upstream, counted and access-logged.
//! - `real_redirect_in_netns`: a real nftables `redirect` inside a network
//!   namespace this test creates, to the real binary with
//!   `original_dst = true`. The test re-executes its own binary inside the
//!   namespace (`ip netns exec NS <this test binary> --exact netns_inside
//!   --ignored`); that `#[ignore]`d helper runs the DNS server, the TLS
//!   upstream, the proxy binary and the clients, all inside the namespace,
//!   and prints a marker when every check passed. The same binary also has
//!   an explicit proxy listener there: a CONNECT to a name resolving into an
//!   `unreachable` route (TEST-NET-3, so connect() fails at once with
//!   EHOSTUNREACH and no packet is sent) gets `502` with
//!   `destination_unavailable`. Needs root, `ip` and `nft`:
//!   without them the test skips with a printed reason, except under
//!   `CI=true`, where it fails.
//!
//! Every wait is bounded. Traffic goes only to loopback, or to addresses
//! inside the namespace the test created.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

mod dns_zone;

use hickory_server::proto::rr::Name;
use hickory_server::zone_handler::Catalog;
use hickory_server::Server;
use portcullis::access_log::{AccessLog, AccessRecord};
use portcullis::app::Running;
use portcullis::config::{Config, SniListen};
use portcullis::policy::Policy;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Upper bound for every single wait.
const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for: {what}"),
    }
}

// ---------------------------------------------------------------------------
// DNS: an authoritative server for `test.` with fixed A records
// ---------------------------------------------------------------------------

struct Dns {
    addr: SocketAddr,
    _server: Server<Catalog>,
}

impl Dns {
    /// Serves `names` (A records under `test.`; anything else NXDOMAIN) on
    /// UDP and TCP at `bind`, or on a free 127.0.0.1 port.
    async fn start(bind: Option<SocketAddr>, names: &[(&str, Ipv4Addr)]) -> Dns {
        let origin = Name::from_ascii("test.").unwrap();
        let mut zone = dns_zone::empty_zone(&origin, 1);
        for (name, ip) in names {
            dns_zone::add_a(&mut zone, name, *ip, 60);
        }
        let (addr, server) = dns_zone::serve(&origin, Arc::new(zone), bind).await;
        Dns {
            addr,
            _server: server,
        }
    }
}

// ---------------------------------------------------------------------------
// TLS: a test CA, a server certificate, client configs
// ---------------------------------------------------------------------------

struct Pki {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl Pki {
    /// A fresh CA and a leaf certificate for `name`.
    fn new(name: &str) -> Pki {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "portcullis SNI test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: leaf_key.serialize_der(),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(self.key.clone().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .unwrap();
        Arc::new(cfg)
    }

    /// A client trusting only the test CA; `alpn` offered, SNI sent or not.
    fn client_config(&self, alpn: Vec<Vec<u8>>, sni: bool) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn;
        cfg.enable_sni = sni;
        Arc::new(cfg)
    }
}

/// ~`total` bytes of ALPN protocol names: makes a ClientHello as large as a
/// post-quantum one.
fn big_alpn(total: usize) -> Vec<Vec<u8>> {
    (0..total / 200)
        .map(|i| {
            let mut p = format!("proto-{i}-").into_bytes();
            p.resize(199, b'x');
            p
        })
        .collect()
}

/// Reads one TLS record (header and body).
async fn read_record(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut rec = vec![0u8; 5];
    r.read_exact(&mut rec).await?;
    let len = u16::from_be_bytes([rec[3], rec[4]]) as usize;
    rec.resize(5 + len, 0);
    r.read_exact(&mut rec[5..]).await?;
    Ok(rec)
}

/// The ClientHello record a rustls client with `cfg` sends for `name`.
async fn client_hello(cfg: Arc<rustls::ClientConfig>, name: &str) -> Vec<u8> {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let hs = tokio::spawn(async move {
        let _ = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, client)
            .await;
    });
    let rec = within("the client's ClientHello", read_record(&mut server))
        .await
        .unwrap();
    hs.abort();
    assert_eq!(rec[0], 0x16, "a handshake record");
    rec
}

/// Re-frames one handshake record into two, split after `first` payload bytes.
fn two_records(rec: &[u8], first: usize) -> Vec<u8> {
    let payload = &rec[5..];
    let mut out = Vec::new();
    for part in [&payload[..first], &payload[first..]] {
        out.extend_from_slice(&rec[..3]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// How the client's ClientHello reaches the proxy.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One write.
    Whole,
    /// One byte per write, with a pause between writes.
    OneByteAtATime,
    /// Re-framed as two TLS records, in one write.
    TwoRecords,
    /// Two writes (TCP segments) split after this many bytes, with a pause.
    TwoSegments(usize),
}

/// Copies the first record from `pump` to `tcp` as `shape` says, then
/// relays both ways until either side ends.
async fn pump_shaped(mut pump: DuplexStream, mut tcp: TcpStream, shape: Shape) {
    let Ok(hello) = read_record(&mut pump).await else {
        return;
    };
    let sent = match shape {
        Shape::Whole => tcp.write_all(&hello).await,
        Shape::OneByteAtATime => {
            let mut r = Ok(());
            for b in &hello {
                r = tcp.write_all(std::slice::from_ref(b)).await;
                if r.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            r
        }
        Shape::TwoRecords => {
            tcp.write_all(&two_records(&hello, (hello.len() - 5) / 2))
                .await
        }
        Shape::TwoSegments(at) => {
            let at = at.min(hello.len());
            let r = tcp.write_all(&hello[..at]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            match r {
                Ok(()) => tcp.write_all(&hello[at..]).await,
                e => e,
            }
        }
    };
    if sent.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut pump, &mut tcp).await;
    }
}

/// A verified TLS session to `name` through `addr`, the ClientHello shaped.
async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
    shape: Shape,
) -> io::Result<tokio_rustls::client::TlsStream<DuplexStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (client, pump) = tokio::io::duplex(1 << 16);
    tokio::spawn(pump_shaped(pump, tcp, shape));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, client)
        .await
}

/// Sends `msg` over `tls`, expects it echoed, then closes cleanly.
async fn echo_and_close(mut tls: tokio_rustls::client::TlsStream<DuplexStream>, msg: &[u8]) {
    within("the echo through the tunnel", async {
        tls.write_all(msg).await.expect("write through the tunnel");
        tls.flush().await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tls.read_exact(&mut back).await.expect("read the echo");
        assert_eq!(back, msg, "echoed through the tunnel");
        tls.shutdown().await.expect("close_notify");
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "nothing after the echo: {rest:?}");
    })
    .await
}

// ---------------------------------------------------------------------------
// The TLS upstream: echoes, counts connections and raw bytes received
// ---------------------------------------------------------------------------

/// A TCP stream that counts the bytes read from it.
struct Counting {
    inner: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.read
                .fetch_add((buf.filled().len() - before) as u64, Ordering::SeqCst);
        }
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

struct Upstream {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    /// Raw bytes received, over all connections.
    bytes_in: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// A TLS server with `cfg` on `listener`: echoes the decrypted bytes.
    fn tls_echo(listener: TcpListener, cfg: Arc<rustls::ServerConfig>) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let (acc, bin) = (accepted.clone(), bytes_in.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let s = Counting {
                    inner: s,
                    read: bin.clone(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Upstream {
            addr,
            accepted,
            bytes_in,
            task,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::SeqCst)
    }
}

/// Sum of the samples of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some(x) => x,
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
        if all {
            sum += value.trim().parse::<f64>().unwrap();
        }
    }
    sum
}

// ---------------------------------------------------------------------------
// In-process fixture
// ---------------------------------------------------------------------------

/// Port the second SNI listener uses: not in the policy.
const UNLISTED_PORT: u16 = 1;

/// A host name as long as the IP literal `127.0.0.1`, which replaces it in
/// the captured ClientHello.
const IP_NAME: &str = "abcdefghi";

struct Fixture {
    running: Running,
    /// SNI listener whose destination port is the upstream's (allowed).
    sni: SocketAddr,
    /// SNI listener whose destination port is [`UNLISTED_PORT`].
    sni_unlisted_port: SocketAddr,
    records: Mutex<mpsc::Receiver<AccessRecord>>,
    upstream: Upstream,
    pki: Pki,
    _dns: Dns,
}

impl Fixture {
    /// DNS: `allowed.test`, `denied.test` → the upstream (127.0.0.1);
    /// `private.test` → 10.1.2.3 (prohibited); `unresolvable.test` absent.
    /// Policy: `allowed.test`, `private.test`, `unresolvable.test` on the
    /// upstream's port, tls required.
    async fn start(handshake_timeout: Option<Duration>) -> Fixture {
        let pki = Pki::new("allowed.test");
        let upstream = Upstream::tls_echo(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            pki.server_config(),
        );
        let port = upstream.addr.port();
        let dns = Dns::start(
            None,
            &[
                ("allowed.test", Ipv4Addr::LOCALHOST),
                ("denied.test", Ipv4Addr::LOCALHOST),
                ("private.test", Ipv4Addr::new(10, 1, 2, 3)),
            ],
        )
        .await;
        let policy = Policy::from_toml_str(
            &format!(
                "[[rule]]\nname = \"allowed\"\nhosts = [\"allowed.test\", \"private.test\", \"unresolvable.test\"]\n\
                 ports = [{port}]\ntls = \"required\"\n"
            ),
            "sni-test.toml",
        )
        .expect("test policy");
        let mut cfg = Config::load_from(None, Some(HashMap::new())).expect("built-in config");
        cfg.proxy_listen = vec![];
        cfg.admin_listen = None;
        cfg.sni_listen = vec![
            SniListen {
                addr: "127.0.0.1:0".parse().unwrap(),
                port,
                original_dst: false,
            },
            SniListen {
                addr: "127.0.0.1:0".parse().unwrap(),
                port: UNLISTED_PORT,
                original_dst: false,
            },
        ];
        cfg.dns_nameservers = vec![dns.addr];
        cfg.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        if let Some(t) = handshake_timeout {
            cfg.handshake_timeout = t;
        }
        let (log, records) = AccessLog::collector();
        let running = portcullis::app::start(cfg, policy, log)
            .await
            .expect("proxy starts");
        Fixture {
            sni: running.sni_addrs[0],
            sni_unlisted_port: running.sni_addrs[1],
            running,
            records: Mutex::new(records),
            upstream,
            pki,
            _dns: dns,
        }
    }

    /// The next access-log record (waits at most [`WAIT`]).
    fn next_record(&self) -> AccessRecord {
        let rx = self.records.lock().unwrap();
        tokio::task::block_in_place(|| rx.recv_timeout(WAIT))
            .unwrap_or_else(|e| panic!("no access-log record within {WAIT:?}: {e}"))
    }

    /// `portcullis_connections_total{listener="sni", ...labels}`.
    fn connections(&self, labels: &[(&str, &str)]) -> f64 {
        let mut all = vec![("listener", "sni")];
        all.extend_from_slice(labels);
        metric(
            &self.running.shared.metrics.render(),
            "portcullis_connections_total",
            &all,
        )
    }

    fn client(&self, alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
        self.pki.client_config(alpn, true)
    }

    /// A verified TLS session to allowed.test through the SNI listener,
    /// shaped as `shape`, echoes, and is logged and counted as allowed.
    async fn expect_tunnel(&self, shape: Shape, alpn: Vec<Vec<u8>>) -> AccessRecord {
        let before = self.connections(&[("decision", "allow")]);
        let tls = within(
            "the TLS handshake through the SNI listener",
            tls_connect(self.sni, self.client(alpn), "allowed.test", shape),
        )
        .await
        .unwrap_or_else(|e| panic!("handshake through the SNI listener ({shape:?}): {e}"));
        let (_, session) = tls.get_ref();
        assert!(session.protocol_version().is_some(), "handshake completed");
        echo_and_close(tls, format!("hello via SNI, {shape:?}").as_bytes()).await;
        let rec = self.next_record();
        assert_eq!(rec.listener, "sni");
        assert_eq!(rec.host, "allowed.test");
        assert_eq!(rec.port, self.upstream.addr.port());
        assert_eq!((rec.decision, rec.reason), ("allow", "ok"), "{rec:?}");
        assert_eq!(rec.rule, "allowed");
        assert_eq!(
            rec.upstream.as_deref(),
            Some(&*self.upstream.addr.to_string())
        );
        assert!(rec.bytes_up > 0 && rec.bytes_down > 0, "{rec:?}");
        assert_eq!(
            rec.original_dst, None,
            "a direct connection has no original destination"
        );
        assert_eq!(
            self.connections(&[("decision", "allow"), ("rule", "allowed"), ("reason", "ok")]),
            before + 1.0
        );
        rec
    }

    /// Writes `bytes` to `addr` and expects the proxy to close without
    /// answering and without dialling; returns the access-log record.
    async fn expect_refused(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        decision: &str,
        reason: &str,
    ) -> AccessRecord {
        let (acc, bin) = (self.upstream.accepted(), self.upstream.bytes_in());
        let before = self.connections(&[("decision", decision), ("reason", reason)]);
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The proxy may close before it has read everything: a failed write is fine.
        let _ = s.write_all(bytes).await;
        let answer = read_until_closed(&mut s).await;
        assert!(answer.is_empty(), "the proxy answered {answer:?}");
        let rec = self.next_record();
        assert_eq!(rec.listener, "sni");
        assert_eq!((rec.decision, rec.reason), (decision, reason), "{rec:?}");
        assert_eq!(rec.upstream, None, "{rec:?}");
        assert_eq!((rec.bytes_up, rec.bytes_down), (0, 0), "{rec:?}");
        assert_eq!(
            (self.upstream.accepted(), self.upstream.bytes_in()),
            (acc, bin),
            "nothing reached the upstream"
        );
        assert_eq!(
            self.connections(&[("decision", decision), ("reason", reason)]),
            before + 1.0,
            "counted in portcullis_connections_total"
        );
        rec
    }
}

/// Reads until EOF or a reset; returns what arrived.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    within("the proxy to close the connection", async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// In-process tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_sni_completes_a_verified_handshake_end_to_end() {
    let fx = Fixture::start(None).await;
    fx.expect_tunnel(Shape::Whole, vec![]).await;
    assert_eq!(fx.upstream.accepted(), 1);
    // A second connection works the same.
    fx.expect_tunnel(Shape::Whole, vec![b"http/1.1".to_vec()])
        .await;
    assert_eq!(fx.upstream.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_written_one_byte_at_a_time() {
    let fx = Fixture::start(None).await;
    fx.expect_tunnel(Shape::OneByteAtATime, vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_split_over_two_tls_records() {
    let fx = Fixture::start(None).await;
    fx.expect_tunnel(Shape::TwoRecords, vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_client_hello_over_two_tcp_segments() {
    let fx = Fixture::start(None).await;
    let hello = client_hello(fx.client(big_alpn(2000)), "allowed.test").await;
    assert!(
        (2000..4000).contains(&hello.len()),
        "a post-quantum sized ClientHello: {} bytes",
        hello.len()
    );
    fx.expect_tunnel(Shape::TwoSegments(1400), big_alpn(2000))
        .await;
    // And the same size re-framed as two records.
    fx.expect_tunnel(Shape::TwoRecords, big_alpn(2000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_sni_or_port_is_closed_before_any_upstream() {
    let fx = Fixture::start(None).await;
    let hello = client_hello(fx.client(vec![]), "denied.test").await;
    let rec = fx
        .expect_refused(fx.sni, &hello, "deny", "http_request_denied")
        .await;
    assert_eq!(rec.host, "denied.test");
    assert_eq!(rec.rule, "none");
    // An allowed name on a port the policy does not list.
    let hello = client_hello(fx.client(vec![]), "allowed.test").await;
    let rec = fx
        .expect_refused(fx.sni_unlisted_port, &hello, "deny", "http_request_denied")
        .await;
    assert_eq!(
        (rec.host.as_str(), rec.port),
        ("allowed.test", UNLISTED_PORT)
    );
    // A real client sees the handshake fail.
    let r = within(
        "a refused handshake",
        tls_connect(fx.sni, fx.client(vec![]), "denied.test", Shape::Whole),
    )
    .await;
    assert!(r.is_err(), "handshake to a denied name must fail");
    let rec = fx.next_record();
    assert_eq!((rec.decision, rec.host.as_str()), ("deny", "denied.test"));
    assert_eq!(fx.upstream.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_is_closed() {
    let fx = Fixture::start(None).await;
    let hello = client_hello(fx.pki.client_config(vec![], false), "allowed.test").await;
    let rec = fx
        .expect_refused(fx.sni, &hello, "deny", "http_request_denied")
        .await;
    assert_eq!(rec.host, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literal_sni_is_closed() {
    let fx = Fixture::start(None).await;
    let mut hello = client_hello(fx.client(vec![]), IP_NAME).await;
    let at = hello
        .windows(IP_NAME.len())
        .position(|w| w == IP_NAME.as_bytes())
        .expect("name in the hello");
    // The upstream's own address, as SNI: must not be dialled.
    hello[at..at + IP_NAME.len()].copy_from_slice(b"127.0.0.1");
    fx.expect_refused(fx.sni, &hello, "deny", "http_request_denied")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_tls_is_closed() {
    let fx = Fixture::start(None).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6\r\n",
        &[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15], // SSLv2-style hello
    ] {
        fx.expect_refused(fx.sni, garbage, "error", "tls_protocol_error")
            .await;
    }
    // TLS framing, then a handshake that is not a ClientHello.
    let mut bad = vec![0x16, 0x03, 0x01, 0x00, 0x08, 0x02, 0x00, 0x00, 0x04];
    bad.extend_from_slice(&[0; 4]);
    fx.expect_refused(fx.sni, &bad, "error", "tls_protocol_error")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_client_hello_then_silence_is_cut_at_the_handshake_timeout() {
    let timeout = Duration::from_millis(500);
    let fx = Fixture::start(Some(timeout)).await;
    let hello = client_hello(fx.client(vec![]), "allowed.test").await;
    let started = Instant::now();
    let rec = fx
        .expect_refused(
            fx.sni,
            &hello[..hello.len() / 2],
            "error",
            "http_request_error",
        )
        .await;
    let took = started.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(50),
        "closed after {took:?}, before the handshake timeout"
    );
    assert_eq!(rec.host, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failure_and_prohibited_address_are_closed() {
    let fx = Fixture::start(None).await;
    let hello = client_hello(fx.client(vec![]), "unresolvable.test").await;
    let rec = fx
        .expect_refused(fx.sni, &hello, "error", "dns_error")
        .await;
    assert_eq!(
        (rec.host.as_str(), rec.rule.as_str()),
        ("unresolvable.test", "allowed")
    );
    let hello = client_hello(fx.client(vec![]), "private.test").await;
    let rec = fx
        .expect_refused(fx.sni, &hello, "deny", "destination_ip_prohibited")
        .await;
    assert_eq!(rec.host, "private.test");
}

// ---------------------------------------------------------------------------
// Real redirect: nftables in a network namespace, the real binary
// ---------------------------------------------------------------------------

/// Set in the re-executed test binary running inside the namespace; holds
/// the namespace's name.
const INSIDE_ENV: &str = "PORTCULLIS_TEST_NETNS_INSIDE";
/// Printed by the inside part when every check passed.
const INSIDE_OK: &str = "NETNS-INSIDE-OK";
/// The SNI listener inside the namespace.
const NS_SNI_PORT: u16 = 15001;
/// The made-up destinations (TEST-NET-2) the client dials.
const NS_DEST_NET: &str = "198.51.100.0/24";
/// Where the upstream listens inside the namespace (and what DNS answers).
const NS_UPSTREAM: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// The namespace's DNS server.
const NS_DNS: &str = "127.0.0.1:5353";
/// The explicit proxy listener inside the namespace.
const NS_PROXY_PORT: u16 = 15002;
/// A prefix (TEST-NET-3) with an `unreachable` route inside the namespace:
/// connect() to it fails with EHOSTUNREACH without sending anything.
const NS_UNREACHABLE_NET: &str = "203.0.113.0/24";
/// What DNS answers for `unreach.test`, inside [`NS_UNREACHABLE_NET`].
const NS_UNREACHABLE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// What a bounded command run produced.
struct Ran {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `prog args` with stdin closed; kills it (by its id) after `limit`.
fn run_bounded(
    prog: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    limit: Duration,
) -> io::Result<Ran> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let get = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok(Ran {
        status,
        stdout: get(out),
        stderr: get(err),
    })
}

/// Reads a pipe to its end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// A named network namespace this process created; on drop, the processes
/// left in it are killed (by id) and it is deleted.
struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with `lo` up, a route for the made-up
    /// destinations, an `unreachable` route for [`NS_UNREACHABLE_NET`], and
    /// an nftables OUTPUT redirect of the made-up destinations' ports 443
    /// and 8443 to the SNI listener.
    fn create(dir: &Path) -> Result<Netns, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pc-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        ns.exec(
            "ip",
            &["route", "add", NS_DEST_NET, "dev", "lo", "src", "127.0.0.1"],
        )?;
        ns.exec("ip", &["route", "add", "unreachable", NS_UNREACHABLE_NET])?;
        let rules = dir.join("redirect.nft");
        std::fs::write(
            &rules,
            format!(
                "table ip portcullis_test {{\n\
                 \tchain out {{\n\
                 \t\ttype nat hook output priority -100; policy accept;\n\
                 \t\tip daddr {NS_DEST_NET} tcp dport {{ 443, 8443 }} redirect to :{NS_SNI_PORT}\n\
                 \t}}\n\
                 }}\n"
            ),
        )
        .map_err(|e| format!("writing {}: {e}", rules.display()))?;
        ns.exec("nft", &["-f", rules.to_str().unwrap()])?;
        Ok(ns)
    }

    /// Runs `prog args` inside the namespace.
    fn exec(&self, prog: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, prog];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(r) = run_bounded(
            "ip",
            &["netns", "pids", &self.name],
            &[],
            Duration::from_secs(5),
        ) {
            for pid in r.stdout.split_whitespace() {
                let _ = run_bounded("kill", &["-KILL", pid], &[], Duration::from_secs(5));
            }
        }
        match run_bounded(
            "ip",
            &["netns", "del", &self.name],
            &[],
            Duration::from_secs(10),
        ) {
            Ok(r) if r.ok() => {}
            Ok(r) => eprintln!("ip netns del {} failed: {}", self.name, r.stderr.trim()),
            Err(e) => eprintln!("ip netns del {} failed: {e}", self.name),
        }
    }
}

/// `ip args`, as a `Result` with a readable error.
fn ip(args: &[&str]) -> Result<(), String> {
    let what = format!("ip {}", args.join(" "));
    match run_bounded("ip", args, &[], Duration::from_secs(20)) {
        Ok(r) if r.ok() => Ok(()),
        Ok(r) => Err(format!(
            "`{what}` failed ({:?}): {}",
            r.status,
            r.stderr.trim()
        )),
        Err(e) => Err(format!("`{what}` could not run: {e}")),
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Client on a made-up address, nftables redirect to the SNI listener
/// (`original_dst = true`), the real binary: an allowed SNI reaches the
/// upstream the proxy resolved; a denied SNI, or a port the policy does not
/// list, does not.
#[test]
fn real_redirect_in_netns() {
    if std::env::var_os(INSIDE_ENV).is_some() {
        return;
    }
    let dir = TempDir::new("netns");
    let ns = match Netns::create(&dir.0) {
        Ok(ns) => ns,
        Err(e) if in_ci() => panic!(
            "CI=true but the network-namespace test cannot set up its namespace \
             (needs root, iproute2 and nftables): {e}"
        ),
        Err(e) => {
            eprintln!("SKIPPED real_redirect_in_netns: cannot set up a network namespace: {e}");
            return;
        }
    };
    let exe = std::env::current_exe().expect("the test binary's path");
    let exe = exe.to_str().expect("a UTF-8 path");
    let args = [
        "netns",
        "exec",
        &ns.name,
        exe,
        "--exact",
        "netns_inside",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ];
    let ran = run_bounded(
        "ip",
        &args,
        &[(INSIDE_ENV, &ns.name)],
        Duration::from_secs(120),
    )
    .expect("running the inside part");
    drop(ns);
    println!(
        "--- inside the namespace: stdout ---\n{}\n--- stderr ---\n{}",
        ran.stdout, ran.stderr
    );
    assert!(
        ran.status.is_some(),
        "the inside part did not finish within 120 s"
    );
    assert!(
        ran.ok() && ran.stdout.contains(INSIDE_OK),
        "the inside part failed ({:?}):\n{}\n{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
}

/// The proxy binary, killed (by its id) on drop unless it exited.
struct ProxyProcess {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

impl ProxyProcess {
    fn spawn(config: &Path) -> ProxyProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.arg("-c")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PORTCULLIS__") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("starting the portcullis binary");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        ProxyProcess {
            child,
            stdout,
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Waits for a diagnostic line (stderr) satisfying `pred`; a line
    /// already read while waiting for another counts too.
    fn await_stderr(&mut self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
        let seen = |line: &String| serde_json::from_str(line).is_ok_and(|v| pred(&v));
        if self.stderr_seen.iter().any(seen) {
            return;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("proxy stderr: {line}");
                    let hit = serde_json::from_str(&line).is_ok_and(|v| pred(&v));
                    self.stderr_seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(e) => panic!(
                    "no {what} from the proxy ({e}); exit: {:?}; stderr so far:\n{}",
                    self.child.try_wait(),
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// The next access-log line (stdout), parsed.
    fn next_record(&mut self) -> serde_json::Value {
        let line = self
            .stdout
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no access-log line within {WAIT:?}: {e}"));
        eprintln!("proxy stdout: {line}");
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("access log is not JSON ({e}): {line}"))
    }

    /// SIGTERM, then expect a clean exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let r = run_bounded("kill", &["-TERM", &pid], &[], WAIT).expect("kill -TERM");
        assert!(r.ok(), "kill -TERM {pid}: {}", r.stderr);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not exit within {WAIT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of a pipe, on a channel.
fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The part of [`real_redirect_in_netns`] that runs inside the namespace.
/// Does nothing unless started by it.
#[test]
#[ignore = "run by real_redirect_in_netns inside the namespace it creates"]
fn netns_inside() {
    let Ok(ns) = std::env::var(INSIDE_ENV) else {
        return;
    };
    // Fixed ports are bound below: make sure this really is the test's namespace.
    let here = run_bounded("ip", &["netns", "identify"], &[], WAIT).expect("ip netns identify");
    assert_eq!(
        here.stdout.trim(),
        ns,
        "not inside the test namespace; refusing to go on"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pki = Pki::new("allowed.test");
    let (upstream, _dns) = rt.block_on(async {
        let upstream = Upstream::tls_echo(
            TcpListener::bind((NS_UPSTREAM, 443))
                .await
                .expect("bind the upstream"),
            pki.server_config(),
        );
        let dns = Dns::start(
            Some(NS_DNS.parse().unwrap()),
            &[
                ("allowed.test", NS_UPSTREAM),
                ("denied.test", NS_UPSTREAM),
                ("unreach.test", NS_UNREACHABLE),
            ],
        )
        .await;
        (upstream, dns)
    });

    let dir = TempDir::new("netns-inside");
    std::fs::write(
        dir.0.join("policy.toml"),
        "[[rule]]\nname = \"allowed\"\nhosts = [\"allowed.test\"]\nports = [443]\ntls = \"required\"\n\
         [[rule]]\nname = \"unreach\"\nhosts = [\"unreach.test\"]\nports = [443]\ntls = \"any\"\n",
    )
    .unwrap();
    let config = dir.0.join("portcullis.toml");
    std::fs::write(
        &config,
        format!(
            "policy = \"policy.toml\"\n\
             [proxy]\nlisten = [\"127.0.0.1:{NS_PROXY_PORT}\"]\n\
             [admin]\nlisten = \"\"\n\
             [sni]\nlisten = [{{ addr = \"127.0.0.1:{NS_SNI_PORT}\", original_dst = true }}]\n\
             [dns]\nnameservers = [\"{NS_DNS}\"]\n\
             [upstream]\nallow_cidrs = [\"127.0.0.0/8\"]\n\
             [limits]\nshutdown_grace_s = 2\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n"
        ),
    )
    .unwrap();
    let mut proxy = ProxyProcess::spawn(&config);
    proxy.await_stderr("`listening` line for the SNI listener", |v| {
        v["message"] == "listening" && v["listener"] == "sni"
    });
    proxy.await_stderr("`listening` line for the explicit proxy listener", |v| {
        v["message"] == "listening" && v["listener"] == "proxy"
    });

    let client = pki.client_config(vec![], true);
    let to = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);

    // Allowed SNI to a made-up address: redirected, routed by SNI to the
    // address the proxy resolved, verified handshake, echo.
    rt.block_on(async {
        let tls = within(
            "the handshake through the redirect",
            tls_connect(
                to("198.51.100.7", 443),
                client.clone(),
                "allowed.test",
                Shape::Whole,
            ),
        )
        .await
        .expect("TLS handshake through the nftables redirect");
        echo_and_close(tls, b"hello through the redirect").await;
    });
    let rec = proxy.next_record();
    assert_eq!(rec["listener"], "sni", "{rec}");
    assert_eq!(rec["host"], "allowed.test", "{rec}");
    assert_eq!(rec["port"], 443, "{rec}");
    assert_eq!(rec["decision"], "allow", "{rec}");
    assert_eq!(rec["reason"], "ok", "{rec}");
    assert_eq!(rec["rule"], "allowed", "{rec}");
    assert_eq!(rec["original_dst"], "198.51.100.7:443", "{rec}");
    assert_eq!(rec["upstream"], "127.0.0.5:443", "{rec}");
    assert_eq!(upstream.accepted(), 1);
    let bytes_after_allowed = upstream.bytes_in();
    assert!(bytes_after_allowed > 0);

    // Denied SNI: closed, nothing reaches the upstream.
    rt.block_on(async {
        let r = within(
            "the refused handshake through the redirect",
            tls_connect(
                to("198.51.100.7", 443),
                client.clone(),
                "denied.test",
                Shape::Whole,
            ),
        )
        .await;
        assert!(r.is_err(), "a denied SNI must not complete a handshake");
    });
    let rec = proxy.next_record();
    assert_eq!(rec["host"], "denied.test", "{rec}");
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["reason"], "http_request_denied", "{rec}");
    assert_eq!(rec["original_dst"], "198.51.100.7:443", "{rec}");
    assert!(rec["upstream"].is_null(), "{rec}");

    // Allowed name, but the original destination port (from
    // SO_ORIGINAL_DST) is not in the policy.
    rt.block_on(async {
        let r = within(
            "the refused handshake to port 8443",
            tls_connect(
                to("198.51.100.9", 8443),
                client.clone(),
                "allowed.test",
                Shape::Whole,
            ),
        )
        .await;
        assert!(r.is_err(), "port 8443 is not allowed");
    });
    let rec = proxy.next_record();
    assert_eq!(rec["host"], "allowed.test", "{rec}");
    assert_eq!(rec["port"], 8443, "{rec}");
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert_eq!(rec["original_dst"], "198.51.100.9:8443", "{rec}");
    assert!(rec["upstream"].is_null(), "{rec}");

    assert_eq!(
        upstream.accepted(),
        1,
        "refused connections never reach the upstream"
    );
    assert_eq!(upstream.bytes_in(), bytes_after_allowed);

    // Explicit proxy: an allowed CONNECT whose only address is behind an
    // `unreachable` route. connect() fails at once (EHOSTUNREACH), nothing
    // leaves the namespace: 502 with `destination_unavailable`.
    let response = rt.block_on(within("the CONNECT to an unreachable upstream", async {
        let mut c = TcpStream::connect(("127.0.0.1", NS_PROXY_PORT))
            .await
            .expect("connect to the explicit proxy listener");
        c.write_all(b"CONNECT unreach.test:443 HTTP/1.1\r\nHost: unreach.test:443\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        c.read_to_end(&mut response)
            .await
            .expect("read the error response to its end");
        String::from_utf8(response).expect("a UTF-8 response")
    }));
    let (head, _body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head: {response:?}"));
    let mut head_lines = head.split("\r\n");
    let status_line = head_lines.next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 502 "),
        "status: {response:?}"
    );
    let headers: HashMap<String, String> = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    assert_eq!(
        headers.get("proxy-status").map(String::as_str),
        Some("portcullis; error=destination_unavailable"),
        "{response:?}"
    );
    assert_eq!(
        headers.get("connection").map(String::as_str),
        Some("close"),
        "{response:?}"
    );
    let rec = proxy.next_record();
    assert_eq!(rec["listener"], "connect", "{rec}");
    assert_eq!(rec["host"], "unreach.test", "{rec}");
    assert_eq!(rec["port"], 443, "{rec}");
    assert_eq!(rec["decision"], "error", "{rec}");
    assert_eq!(rec["reason"], "destination_unavailable", "{rec}");
    assert_eq!(rec["rule"], "unreach", "{rec}");
    assert_eq!(upstream.accepted(), 1, "nothing reached the upstream");

    let status = proxy.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    drop(upstream);
    println!("{INSIDE_OK}");
}
