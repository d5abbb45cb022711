//! The byte pump: the rule's first-bytes TLS check on the client's side, then
//! both directions copied with half-close propagated, bytes counted, an idle
//! timeout, and no allocation, lock or log per chunk.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::net::Shutdown;
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::policy::TlsMode;
use crate::tls_hello::{parse_client_hello, HelloError, MAX_HELLO_BYTES};

/// Copy buffer per direction (portable path only).
const BUF_SIZE: usize = 16 * 1024;
/// Most bytes appended per read while a ClientHello or request head is buffered.
const READ_STEP: usize = 4096;

/// How a tunnel should run.
#[derive(Debug, Clone)]
pub struct TunnelParams {
    /// First-bytes check.
    pub tls: TlsMode,
    /// The destination host the SNI must equal (normalised).
    pub host: String,
    /// In report mode a failed check is recorded but the bytes pass.
    pub report_only: bool,
    /// Time allowed for a complete ClientHello once it has started.
    pub hello_timeout: Duration,
    /// No bytes either way for this long ends the tunnel.
    pub idle_timeout: Duration,
}

/// What happened in a tunnel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TunnelOutcome {
    /// Client → upstream bytes (after any replayed prefix).
    pub bytes_up: u64,
    /// Upstream → client bytes.
    pub bytes_down: u64,
    /// The TLS check failed (the reason text); in enforce mode nothing reached upstream.
    pub tls_failure: Option<&'static str>,
    /// How the tunnel ended, for diagnostics.
    pub end: TunnelEnd,
}

/// Why the tunnel ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed.
    #[default]
    Closed,
    /// An I/O error (reset) on either side.
    Error,
    /// The idle timeout fired.
    Idle,
    /// The proxy is shutting down.
    Shutdown,
    /// The TLS check refused the tunnel.
    TlsCheck,
}

/// Last activity, in milliseconds since the tunnel started.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Runs a tunnel between `client` and `upstream`. `prefix` holds client
/// bytes already read (after a CONNECT head, or a buffered ClientHello);
/// they go upstream first, subject to the check.
pub async fn run(
    client: &TcpStream,
    upstream: &TcpStream,
    prefix: Vec<u8>,
    params: &TunnelParams,
    stop: &CancellationToken,
) -> TunnelOutcome {
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let mut tls_failure = None;

    let upward = async {
        // Boxed: the inspection state is needed only at the start, so an
        // established tunnel does not carry it.
        let (first, failure) = Box::pin(inspect(client, prefix, params)).await?;
        if let Some(f) = failure {
            tls_failure = Some(f);
            if !params.report_only {
                return Err(io::Error::other("tls check failed"));
            }
        }
        if !first.is_empty() {
            write_all(upstream, &first).await?;
            up.fetch_add(first.len() as u64, Ordering::Relaxed);
            activity.touch();
        }
        pump(client, upstream, &up, &activity).await
    };
    let downward = pump(upstream, client, &down, &activity);
    let idle = async {
        loop {
            let due = activity.last() + params.idle_timeout;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    let end = tokio::select! {
        r = async { tokio::try_join!(upward, downward) } => match r {
            Ok(_) => TunnelEnd::Closed,
            Err(_) => TunnelEnd::Error,
        },
        _ = idle => TunnelEnd::Idle,
        _ = stop.cancelled() => TunnelEnd::Shutdown,
    };
    let end = if tls_failure.is_some() && !params.report_only {
        TunnelEnd::TlsCheck
    } else {
        end
    };
    TunnelOutcome {
        bytes_up: up.load(Ordering::Relaxed),
        bytes_down: down.load(Ordering::Relaxed),
        tls_failure,
        end,
    }
}

/// True unless `PORTCULLIS_TUNNEL_COPY=userspace` asks for the portable copy
/// (read once; used by benchmarks to measure what splice(2) buys).
fn zero_copy_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED
        .get_or_init(|| std::env::var("PORTCULLIS_TUNNEL_COPY").map_or(true, |v| v != "userspace"))
}

/// Copies `src` → `dst` until EOF, then half-closes `dst`: in the kernel
/// with splice(2) where it works, through a user-space buffer otherwise.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if zero_copy_enabled() {
        let delivered = |n: usize| {
            count.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
        };
        match crate::splice::pump(src, dst, delivered).await {
            Ok(()) => return Ok(()),
            Err(crate::splice::PumpError::Io(e)) => return Err(e),
            Err(crate::splice::PumpError::Unsupported) => {}
        }
    }
    copy_pump(src, dst, count, activity).await
}

/// The portable pump. Its buffer is allocated on the first readable event,
/// so an idle tunnel holds none, and reused for every chunk after.
async fn copy_pump(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    activity: &Activity,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        src.readable().await?;
        if buf.is_empty() {
            buf = vec![0u8; BUF_SIZE];
        }
        let n = match src.try_read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        write_all(dst, &buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Writes all of `data` to a shared socket reference.
async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends what the socket has ready to `buf` (at most up to `cap` bytes in
/// all) without a separate read buffer; `Ok(0)` is EOF. Never awaits, so the
/// caller's buffer is never left extended across a suspension.
pub fn read_into_tail(src: &TcpStream, buf: &mut Vec<u8>, cap: usize) -> io::Result<usize> {
    let len = buf.len();
    let want = cap.saturating_sub(len).min(READ_STEP);
    buf.resize(len + want, 0);
    let res = src.try_read(&mut buf[len..]);
    buf.truncate(len + *res.as_ref().unwrap_or(&0));
    res
}

/// Applies the rule's `tls` check to the first client bytes. Returns the
/// bytes read so far (to replay upstream) and the failure, if any.
async fn inspect(
    r: &TcpStream,
    mut buf: Vec<u8>,
    params: &TunnelParams,
) -> io::Result<(Vec<u8>, Option<&'static str>)> {
    if params.tls == TlsMode::Any {
        return Ok((buf, None));
    }
    // Under "optional" a server-speaks-first protocol may leave the client
    // silent for long: the deadline starts with the client's first byte.
    let mut deadline = if params.tls == TlsMode::Required || !buf.is_empty() {
        Some(Instant::now() + params.hello_timeout)
    } else {
        None
    };
    loop {
        match parse_client_hello(&buf) {
            Ok(hello) => {
                let failure = match hello.sni {
                    None => Some("ClientHello has no SNI"),
                    Some(sni) if !sni_matches(&sni, &params.host) => {
                        Some("SNI does not match the destination host")
                    }
                    Some(_) => None,
                };
                return Ok((buf, failure));
            }
            Err(HelloError::NotTls) if params.tls == TlsMode::Optional => return Ok((buf, None)),
            Err(HelloError::NotTls) => {
                return Ok((buf, Some("first bytes are not a TLS ClientHello")))
            }
            Err(HelloError::Malformed) => return Ok((buf, Some("malformed ClientHello"))),
            Err(HelloError::Incomplete) => {}
        }
        if buf.len() >= MAX_HELLO_BYTES {
            return Ok((buf, Some("ClientHello too large")));
        }
        let ready = r.readable();
        match deadline {
            Some(d) => match tokio::time::timeout_at(d, ready).await {
                Ok(res) => res?,
                Err(_) => return Ok((buf, Some("no complete ClientHello in time"))),
            },
            None => ready.await?,
        }
        let n = match read_into_tail(r, &mut buf, MAX_HELLO_BYTES) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok((
                    buf,
                    if params.tls == TlsMode::Required {
                        Some("no ClientHello before close")
                    } else {
                        None
                    },
                ));
            }
            return Ok((buf, Some("connection closed inside the ClientHello")));
        }
        deadline.get_or_insert_with(|| Instant::now() + params.hello_timeout);
    }
}

/// Compares an SNI with the destination host after the same normalisation.
fn sni_matches(sni: &str, host: &str) -> bool {
    match crate::target::normalize_host(sni) {
        Ok(crate::target::Host::Name(n)) => n == host,
        _ => false,
    }
}
