//! End-to-end load benchmark (issue 6): the same loopback traffic (a) without
//! a proxy, (b) through portcullis (the release binary, a temp config, a
//! realistic policy and an in-process DNS server) and (c) through Squid when
//! it is installed, each figure as the median of several repetitions with its
//! spread, and as a ratio to direct.
//!
//! ```text
//! cargo bench --bench load                              # full run, a few minutes
//! PORTCULLIS_BENCH_QUICK=1 cargo bench --bench load     # about a minute
//! ```
//!
//! Other knobs: `PORTCULLIS_BENCH_REPS=N` (repetitions), `PORTCULLIS_BENCH_SQUID=0`
//! (skip Squid). The proxy inherits the environment, so e.g.
//! `PORTCULLIS_TUNNEL_COPY=userspace` measures the portable copy loop.
//!
//! Figures, per repetition (each repetition starts fresh proxy processes;
//! direct, portcullis and Squid take turns so that a burst of outside load
//! hits them alike):
//! - resident memory per idle tunnel: `VmRSS` of the proxy before and after
//!   opening N tunnels that have echoed one byte and then stay idle;
//! - 1-byte ping-pong: median round trip over one tunnel;
//! - bulk throughput over 1 and over 16 tunnels: the client sends a length
//!   header and that many bytes to a sink that acknowledges with one byte;
//!   from the first byte written to the last acknowledgement;
//! - new tunnels per second: 32 workers, each repeatedly connect, `CONNECT`,
//!   read the `200`, echo one byte, close, for a fixed time;
//! - proxy CPU (utime + stime of the proxy process from `/proc/<pid>/stat`)
//!   over the two bulk phases per GB, and over the tunnel-rate phase per tunnel.
//!
//! The results table is printed and written to `target/bench-load.md`.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../tests/dns_zone/mod.rs"]
mod dns_zone;

use hickory_server::proto::rr::Name;
use hickory_server::zone_handler::Catalog;
use hickory_server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The policy host every benchmark tunnel asks for.
const HOST: &str = "bench.test";
/// Squid configuration; `@NAME@` placeholders are filled in.
const SQUID_TEMPLATE: &str = include_str!("squid.conf.template");
/// The seed policy, used as part of the "realistic" bench policy.
const SEED_POLICY: &str = include_str!("../policy/helpdeskbuttons.toml");
/// Synthetic rules added to the bench policy besides the seed rules.
const FILLER_RULES: usize = 200;
/// Concurrent workers in the tunnel-rate phase.
const RATE_WORKERS: usize = 32;
/// Tunnels in the multi-tunnel bulk phase.
const BULK_TUNNELS: usize = 16;
/// Write size of the bulk client.
const CHUNK: usize = 256 * 1024;
/// Bound on any single connect / CONNECT / echo exchange.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any one phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(90);

static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Child processes alive right now, killed by the hard time cap.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Settings {
    quick: bool,
    reps: usize,
    bulk1_bytes: u64,
    bulk16_bytes: u64,
    rate_time: Duration,
    pings: usize,
    idle_tunnels: usize,
    /// Start no new repetition that would likely end after this.
    budget: Duration,
    /// Kill everything and exit at this point.
    hard_cap: Duration,
    squid_wanted: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = env_flag("PORTCULLIS_BENCH_QUICK");
        let mut s = if quick {
            Settings {
                quick,
                reps: 3,
                bulk1_bytes: 512 << 20,
                bulk16_bytes: 512 << 20,
                rate_time: Duration::from_secs(1),
                pings: 1_000,
                idle_tunnels: 1_000,
                budget: Duration::from_secs(100),
                hard_cap: Duration::from_secs(240),
                squid_wanted: true,
            }
        } else {
            Settings {
                quick,
                reps: 7,
                bulk1_bytes: 2 << 30,
                bulk16_bytes: 2 << 30,
                rate_time: Duration::from_secs(3),
                pings: 5_000,
                idle_tunnels: 2_000,
                budget: Duration::from_secs(420),
                hard_cap: Duration::from_secs(580),
                squid_wanted: true,
            }
        };
        if let Some(n) = std::env::var("PORTCULLIS_BENCH_REPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            s.reps = n.clamp(1, 20);
        }
        if std::env::var("PORTCULLIS_BENCH_SQUID").is_ok_and(|v| v == "0") {
            s.squid_wanted = false;
        }
        s
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------
// Figures and results
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Direct,
    Portcullis,
    Squid,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Portcullis => "portcullis",
            Kind::Squid => "squid",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fig {
    Bulk1,
    Bulk16,
    Rate,
    PingPong,
    CpuPerGb,
    CpuPerTunnel,
    RssPerTunnel,
}

const FIGS: [Fig; 7] = [
    Fig::Bulk1,
    Fig::Bulk16,
    Fig::Rate,
    Fig::PingPong,
    Fig::CpuPerGb,
    Fig::CpuPerTunnel,
    Fig::RssPerTunnel,
];

impl Fig {
    fn idx(self) -> usize {
        self as usize
    }

    fn label(self) -> &'static str {
        match self {
            Fig::Bulk1 => "bulk throughput, 1 tunnel (MB/s; ratio = share of direct)",
            Fig::Bulk16 => "bulk throughput, 16 tunnels (MB/s total; ratio = share of direct)",
            Fig::Rate => "new tunnels per second, 32 concurrent (ratio = share of direct)",
            Fig::PingPong => "1-byte ping-pong round trip, median (µs; ratio = multiple of direct)",
            Fig::CpuPerGb => "proxy CPU per GB tunnelled (s)",
            Fig::CpuPerTunnel => "proxy CPU per tunnel set up (µs)",
            Fig::RssPerTunnel => "resident memory per idle open tunnel (KiB)",
        }
    }

    /// Figures compared with direct (the others are proxy-only absolutes).
    fn relative(self) -> bool {
        matches!(self, Fig::Bulk1 | Fig::Bulk16 | Fig::Rate | Fig::PingPong)
    }

    fn decimals(self) -> usize {
        match self {
            Fig::Bulk1 | Fig::Bulk16 | Fig::Rate | Fig::CpuPerTunnel => 0,
            Fig::PingPong | Fig::RssPerTunnel => 1,
            Fig::CpuPerGb => 3,
        }
    }

    fn target_text(self) -> &'static str {
        match self {
            Fig::Bulk1 => "≥ 0.85",
            Fig::Bulk16 => "≥ 0.80",
            Fig::Rate => "≥ 0.60",
            Fig::PingPong => "≤ 1.5×",
            Fig::CpuPerGb => "≤ 0.25 s",
            Fig::CpuPerTunnel => "≤ 100 µs",
            Fig::RssPerTunnel => "≤ 8 KiB",
        }
    }

    /// Whether portcullis meets the target, given its median ratio (relative
    /// figures) or median value (absolute figures).
    fn met(self, v: f64) -> bool {
        match self {
            Fig::Bulk1 => v >= 0.85,
            Fig::Bulk16 => v >= 0.80,
            Fig::Rate => v >= 0.60,
            Fig::PingPong => v <= 1.5,
            Fig::CpuPerGb => v <= 0.25,
            Fig::CpuPerTunnel => v <= 100.0,
            Fig::RssPerTunnel => v <= 8.0,
        }
    }
}

/// One repetition's figures for one kind (`None` = not measured or failed).
type Rep = [Option<f64>; 7];

#[derive(Default)]
struct Samples {
    values: [Vec<f64>; 7],
    /// Per-repetition ratio to direct of the same repetition.
    ratios: [Vec<f64>; 7],
}

impl Samples {
    fn add(&mut self, rep: &Rep, direct: Option<&Rep>) {
        for f in FIGS {
            if let Some(v) = rep[f.idx()] {
                self.values[f.idx()].push(v);
                if let Some(d) = direct.and_then(|d| d[f.idx()]) {
                    if f.relative() && d > 0.0 {
                        self.ratios[f.idx()].push(v / d);
                    }
                }
            }
        }
    }
}

/// Median, min and max.
fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

fn cell(v: &[f64], decimals: usize, suffix: &str) -> String {
    match summary(v) {
        None => "—".to_owned(),
        Some((med, _, _)) if v.len() == 1 => format!("{med:.decimals$}{suffix}"),
        Some((med, lo, hi)) => {
            format!("{med:.decimals$}{suffix} ({lo:.decimals$}–{hi:.decimals$})")
        }
    }
}

// ---------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/pid/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/pid/stat")))
    };
    Ok(field(14)? + field(15)?)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/pid/status"))
}

/// The soft open-files limit, raised to the hard limit first.
fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: r.rlim_max.min(1 << 20),
                rlim_max: r.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &wanted);
        }
    }
    // Report what /proc says is in force.
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines().next().map(|l| l.trim().to_owned())
}

// ---------------------------------------------------------------------------
// In-process servers: DNS, echo, sink
// ---------------------------------------------------------------------------

/// An authoritative DNS server for the root zone: `bench.test` A 127.0.0.1.
async fn start_dns() -> (SocketAddr, Server<Catalog>) {
    let origin = Name::root();
    let mut zone = dns_zone::empty_zone(&origin, 60);
    dns_zone::add_a(&mut zone, HOST, Ipv4Addr::LOCALHOST, 300);
    dns_zone::serve(&origin, Arc::new(zone), None).await
}

/// Echoes every byte back until EOF.
async fn start_echo() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Reads an 8-byte big-endian length, then that many bytes (discarded),
/// answers one byte, and waits for EOF.
async fn start_sink() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut head = [0u8; 8];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(head);
                let mut buf = vec![0u8; CHUNK];
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    match s.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left -= n as u64,
                    }
                }
                if s.write_all(&[1]).await.is_err() {
                    return;
                }
                let _ = tokio::time::timeout(OP_TIMEOUT, s.read(&mut buf[..1])).await;
            });
        }
    });
    Ok(port)
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// How to reach the echo and sink servers: directly or through a proxy.
struct Route {
    via: Option<SocketAddr>,
    echo_port: u16,
    sink_port: u16,
    echo_req: Vec<u8>,
    sink_req: Vec<u8>,
}

#[derive(Clone, Copy)]
enum Dest {
    Echo,
    Sink,
}

impl Route {
    fn new(via: Option<SocketAddr>, echo_port: u16, sink_port: u16) -> Route {
        let req = |p: u16| format!("CONNECT {HOST}:{p} HTTP/1.1\r\nHost: {HOST}:{p}\r\n\r\n");
        Route {
            via,
            echo_port,
            sink_port,
            echo_req: req(echo_port).into_bytes(),
            sink_req: req(sink_port).into_bytes(),
        }
    }

    /// A connection to `dest`: a TCP connection, or a tunnel whose `200`
    /// has been read.
    async fn open(&self, dest: Dest) -> io::Result<TcpStream> {
        let (port, req) = match dest {
            Dest::Echo => (self.echo_port, &self.echo_req),
            Dest::Sink => (self.sink_port, &self.sink_req),
        };
        let Some(proxy) = self.via else {
            let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
            s.set_nodelay(true)?;
            return Ok(s);
        };
        let mut s = TcpStream::connect(proxy).await?;
        s.set_nodelay(true)?;
        s.write_all(req).await?;
        let status = read_response_head(&mut s).await?;
        if status != 200 {
            return Err(io::Error::other(format!("CONNECT answered {status}")));
        }
        Ok(s)
    }
}

/// Reads a response head up to its blank line (and no further) and returns
/// the status code.
async fn read_response_head(s: &mut TcpStream) -> io::Result<u16> {
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "proxy closed before the end of its response head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if end + 4 != head.len() {
                return Err(io::Error::other("bytes after the response head"));
            }
            let line = String::from_utf8_lossy(&head[..end]);
            return line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| io::Error::other(format!("bad status line in {line:?}")));
        }
        if head.len() > 8192 {
            return Err(io::Error::other("response head over 8 KiB"));
        }
    }
}

async fn echo_one(s: &mut TcpStream) -> io::Result<()> {
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b[0] != b'x' {
        return Err(io::Error::other("echo returned a different byte"));
    }
    Ok(())
}

/// One tunnel-rate cycle: open, echo one byte, close.
async fn cycle(route: &Route) -> io::Result<()> {
    let mut s = route.open(Dest::Echo).await?;
    echo_one(&mut s).await
}

async fn bounded<T>(
    what: &str,
    limit: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out after {limit:?}")),
    }
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

/// A few sequential tunnels, to start lazy state (DNS cache, pools) and to
/// check the path works at all.
async fn warm_up(route: &Route) -> Result<(), String> {
    for _ in 0..20 {
        bounded("warm-up tunnel", OP_TIMEOUT, cycle(route)).await?;
    }
    Ok(())
}

/// KiB of proxy RSS per idle open tunnel.
async fn idle_memory(route: &Arc<Route>, pid: u32, n: usize) -> Result<f64, String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib(pid).map_err(|e| format!("reading RSS: {e}"))?;
    let sem = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let route = route.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(io::Error::other)?;
            let open = async {
                let mut s = route.open(Dest::Echo).await?;
                echo_one(&mut s).await?;
                Ok::<_, io::Error>(s)
            };
            tokio::time::timeout(OP_TIMEOUT, open)
                .await
                .map_err(|_| io::Error::other("timed out opening an idle tunnel"))?
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut first_err = None;
    let mut errors = 0usize;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => {
                errors += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                errors += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(e) = first_err {
        return Err(format!("{errors} of {n} idle tunnels failed, first: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid).map_err(|e| format!("reading RSS: {e}"))?;
    drop(held);
    // Let the proxy tear them down before the next phase.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((after as f64 - before as f64) / n as f64)
}

/// Median 1-byte round trip in µs. The tunnel is opened with tokio, then
/// driven from a plain blocking thread: where the runtime happens to place
/// the client task (on the echo server's worker or not) would otherwise
/// change the figure from run to run.
async fn ping_pong(route: &Route, n: usize) -> Result<f64, String> {
    let s = bounded("ping-pong tunnel", OP_TIMEOUT, route.open(Dest::Echo)).await?;
    let s = s
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
        .and_then(|s| s.set_read_timeout(Some(OP_TIMEOUT)).map(|()| s))
        .map_err(|e| format!("ping-pong socket: {e}"))?;
    let run = tokio::task::spawn_blocking(move || -> io::Result<Vec<f64>> {
        use std::io::{Read, Write};
        let mut s = s;
        let deadline = Instant::now() + PHASE_TIMEOUT;
        let mut b = [0u8; 1];
        let mut rtts = Vec::with_capacity(n);
        for i in 0..n + 200 {
            if Instant::now() > deadline {
                return Err(io::Error::other("timed out"));
            }
            let t = Instant::now();
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
            // The first 200 are warm-up.
            if i >= 200 {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(rtts)
    });
    let rtts = match run.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("ping-pong: {e}")),
        Err(e) => return Err(format!("ping-pong: {e}")),
    };
    summary(&rtts)
        .map(|(m, _, _)| m)
        .ok_or_else(|| "no round trips".to_owned())
}

/// Bulk transfer over `tunnels` tunnels: (MB/s, proxy CPU ticks, bytes).
async fn bulk(
    route: &Route,
    pid: Option<u32>,
    tunnels: usize,
    total: u64,
) -> Result<(f64, Option<u64>, u64), String> {
    let per = total / tunnels as u64;
    let mut streams = Vec::with_capacity(tunnels);
    for _ in 0..tunnels {
        streams.push(bounded("opening a bulk tunnel", OP_TIMEOUT, route.open(Dest::Sink)).await?);
    }
    let cpu0 = match pid {
        Some(p) => Some(cpu_ticks(p).map_err(|e| format!("reading CPU: {e}"))?),
        None => None,
    };
    let start = Instant::now();
    let mut set = JoinSet::new();
    for mut s in streams {
        set.spawn(async move {
            s.write_all(&per.to_be_bytes()).await?;
            let mut left = per;
            while left > 0 {
                let n = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
                s.write_all(&ZEROS[..n]).await?;
                left -= n as u64;
            }
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).await?;
            Ok::<_, io::Error>(())
        });
    }
    let joined = tokio::time::timeout(PHASE_TIMEOUT, async {
        let mut first_err = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert_with(|| e.to_string());
                }
                Err(e) => {
                    first_err.get_or_insert_with(|| e.to_string());
                }
            }
        }
        first_err
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (pid, cpu0) {
        (Some(p), Some(c0)) => Some(
            cpu_ticks(p)
                .map_err(|e| format!("reading CPU: {e}"))?
                .saturating_sub(c0),
        ),
        _ => None,
    };
    match joined {
        Err(_) => {
            return Err(format!(
                "bulk over {tunnels}: timed out after {PHASE_TIMEOUT:?}"
            ))
        }
        Ok(Some(e)) => return Err(format!("bulk over {tunnels}: {e}")),
        Ok(None) => {}
    }
    let bytes = per * tunnels as u64;
    Ok((bytes as f64 / elapsed / 1e6, cpu, bytes))
}

/// Tunnel rate: (tunnels per second, tunnels, proxy CPU ticks, failures).
async fn tunnel_rate(
    route: &Arc<Route>,
    pid: Option<u32>,
    time: Duration,
) -> Result<(f64, u64, Option<u64>, Option<String>), String> {
    let cpu0 = match pid {
        Some(p) => Some(cpu_ticks(p).map_err(|e| format!("reading CPU: {e}"))?),
        None => None,
    };
    let start = Instant::now();
    let deadline = start + time;
    let mut set = JoinSet::new();
    for _ in 0..RATE_WORKERS {
        let route = route.clone();
        set.spawn(async move {
            let (mut ok, mut errors, mut first_err) = (0u64, 0u64, None::<String>);
            // Bounded in count as well as in time.
            while Instant::now() < deadline && ok < 10_000_000 {
                match tokio::time::timeout(OP_TIMEOUT, cycle(&route)).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(e)) => {
                        errors += 1;
                        first_err.get_or_insert_with(|| e.to_string());
                    }
                    Err(_) => {
                        errors += 1;
                        first_err.get_or_insert_with(|| "cycle timed out".to_owned());
                    }
                }
                if errors > 0 && errors % 50 == 0 {
                    // Something is wrong (e.g. port exhaustion): back off.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if errors > 1000 {
                    break;
                }
            }
            (ok, errors, first_err)
        });
    }
    let (mut ok, mut errors, mut first_err) = (0u64, 0u64, None);
    let joined = tokio::time::timeout(time + OP_TIMEOUT + Duration::from_secs(5), async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok((o, e, f)) => {
                    ok += o;
                    errors += e;
                    if first_err.is_none() {
                        first_err = f;
                    }
                }
                Err(e) => {
                    errors += 1;
                    first_err.get_or_insert_with(|| e.to_string());
                }
            }
        }
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = match (pid, cpu0) {
        (Some(p), Some(c0)) => Some(
            cpu_ticks(p)
                .map_err(|e| format!("reading CPU: {e}"))?
                .saturating_sub(c0),
        ),
        _ => None,
    };
    if joined.is_err() {
        return Err("tunnel rate: workers did not finish in time".to_owned());
    }
    let failed = (errors > 0).then(|| {
        format!(
            "{errors} failed tunnel cycles (of {}), first: {}",
            ok + errors,
            first_err.as_deref().unwrap_or("?")
        )
    });
    if ok == 0 {
        return Err(format!(
            "tunnel rate: no tunnel completed; {}",
            failed.unwrap_or_default()
        ));
    }
    Ok((ok as f64 / elapsed, ok, cpu, failed))
}

// ---------------------------------------------------------------------------
// Proxy processes
// ---------------------------------------------------------------------------

struct ProxyProc {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
}

impl ProxyProc {
    fn register(child: &Child) {
        if let Ok(mut c) = CHILDREN.lock() {
            c.push(child.id());
        }
    }

    /// SIGTERM, up to 3 s to exit, then SIGKILL.
    async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling a child we spawned and have not yet reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(3);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= until => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        if let Ok(mut c) = CHILDREN.lock() {
            c.retain(|&p| p != self.pid);
        }
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything the proxies are configured from.
struct Env {
    dir: PathBuf,
    dns: SocketAddr,
    echo_port: u16,
    sink_port: u16,
    fd_limit: u64,
    squid: Option<PathBuf>,
}

fn policy_text(echo_port: u16, sink_port: u16) -> String {
    let mut p = String::new();
    p.push_str(SEED_POLICY);
    p.push('\n');
    for i in 0..FILLER_RULES {
        let tls = match i % 3 {
            0 => "required",
            1 => "optional",
            _ => "any",
        };
        let _ = write!(
            p,
            "[[rule]]\nname = \"saas-{i}\"\ndescription = \"filler rule {i}\"\n\
             hosts = [\"api{i}.vendor{i}.example.com\", \"*.cdn{i}.example.net\"]\n\
             ports = [443, {}]\ntls = \"{tls}\"\n\n",
            8000 + i
        );
    }
    let _ = write!(
        p,
        "[[rule]]\nname = \"bench\"\ndescription = \"load benchmark target\"\n\
         hosts = [\"{HOST}\"]\nports = [{echo_port}, {sink_port}]\ntls = \"any\"\n"
    );
    p
}

async fn start_portcullis(env: &Env, rep: usize) -> Result<ProxyProc, String> {
    let dir = env.dir.join(format!("portcullis-{rep}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(
        dir.join("policy.toml"),
        policy_text(env.echo_port, env.sink_port),
    )
    .map_err(|e| format!("writing the policy: {e}"))?;
    let config = format!(
        "policy = \"policy.toml\"\n\
         mode = \"enforce\"\n\n\
         [proxy]\nlisten = [\"127.0.0.1:0\"]\n\n\
         [admin]\nlisten = \"\"\n\n\
         [dns]\nnameservers = [\"{dns}\"]\n\n\
         [upstream]\nallow_cidrs = [\"127.0.0.0/8\"]\n\n\
         [limits]\nmax_connections = 100000\nshutdown_grace_s = 1\n\n\
         [log]\nformat = \"json\"\n\
         # warn, except the \"listening\" lines the benchmark reads.\n\
         level = \"warn,portcullis::app=info\"\n",
        dns = env.dns
    );
    let config_path = dir.join("portcullis.toml");
    std::fs::write(&config_path, config).map_err(|e| format!("writing the config: {e}"))?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("-c")
        .arg(&config_path)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PORTCULLIS__") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting portcullis: {e}"))?;
    ProxyProc::register(&child);
    let pid = child.id();
    let stderr = child.stderr.take();
    let mut proc_ = ProxyProc {
        child: Some(child),
        pid,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    if let Some(stderr) = stderr {
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let v: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                let listening = v.as_ref().and_then(|v| {
                    if v["message"] == "listening" && v["listener"] == "proxy" {
                        v["addr"]
                            .as_str()
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                    } else {
                        None
                    }
                });
                match (listening, tx.take()) {
                    (Some(addr), Some(tx)) => {
                        let _ = tx.send(addr);
                    }
                    (_, t) => {
                        tx = t;
                        // Pass on warnings and errors (and anything not JSON);
                        // the info lines are the ones the benchmark asked for.
                        let level = v.as_ref().and_then(|v| v["level"].as_str());
                        if !matches!(level, Some("INFO" | "DEBUG" | "TRACE")) {
                            eprintln!("    [portcullis] {line}");
                        }
                    }
                }
            }
        });
    }
    match tokio::time::timeout(Duration::from_secs(15), rx).await {
        Ok(Ok(addr)) => {
            proc_.addr = addr;
            Ok(proc_)
        }
        Ok(Err(_)) => {
            let status = proc_
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            Err(format!(
                "portcullis exited without a \"listening\" line (status {status:?})"
            ))
        }
        Err(_) => Err("portcullis printed no \"listening\" line within 15 s".to_owned()),
    }
}

fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n      ")
}

async fn start_squid(env: &Env, squid: &Path, rep: usize) -> Result<ProxyProc, String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.dir.join(format!("squid-{rep}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Squid started as root drops to its own user: it must be able to write here.
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
    std::fs::write(dir.join("hosts"), format!("127.0.0.1 {HOST}\n"))
        .map_err(|e| format!("writing the hosts file: {e}"))?;
    let port = free_port().map_err(|e| format!("picking a port: {e}"))?;
    let conf = SQUID_TEMPLATE
        .replace("@HTTP_PORT@", &port.to_string())
        .replace("@PORTS@", &format!("{} {}", env.echo_port, env.sink_port))
        .replace("@MAX_FDS@", &env.fd_limit.min(65_536).to_string())
        .replace("@DIR@", &dir.to_string_lossy());
    let conf_path = dir.join("squid.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("writing squid.conf: {e}"))?;
    let err_path = dir.join("stderr.log");
    let err_file =
        std::fs::File::create(&err_path).map_err(|e| format!("creating {err_path:?}: {e}"))?;
    let child = Command::new(squid)
        .arg("-N")
        .arg("-f")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err_file))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", squid.display()))?;
    ProxyProc::register(&child);
    let pid = child.id();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut proc_ = ProxyProc {
        child: Some(child),
        pid,
        addr,
    };
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let exited = proc_
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            return Err(format!(
                "squid exited ({status}); stderr:\n      {}\n    cache.log:\n      {}",
                tail(&err_path, 8),
                tail(&dir.join("cache.log"), 8)
            ));
        }
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(proc_);
        }
        if Instant::now() >= until {
            return Err(format!(
                "squid did not listen on {addr} within 20 s; cache.log:\n      {}",
                tail(&dir.join("cache.log"), 8)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// One repetition for one kind
// ---------------------------------------------------------------------------

/// One repetition's figures for one kind, and notes on anything that failed.
async fn run_kind(
    kind: Kind,
    env: &Env,
    s: &Settings,
    rep: usize,
) -> Result<(Rep, Vec<String>), String> {
    let proxy = match kind {
        Kind::Direct => None,
        Kind::Portcullis => Some(start_portcullis(env, rep).await?),
        Kind::Squid => {
            let squid = env.squid.as_deref().ok_or("squid not found")?;
            Some(start_squid(env, squid, rep).await?)
        }
    };
    let pid = proxy.as_ref().map(|p| p.pid);
    let route = Arc::new(Route::new(
        proxy.as_ref().map(|p| p.addr),
        env.echo_port,
        env.sink_port,
    ));
    let result = phases(kind, &route, pid, s).await;
    if let Some(p) = proxy {
        p.stop().await;
    }
    result
}

async fn phases(
    kind: Kind,
    route: &Arc<Route>,
    pid: Option<u32>,
    s: &Settings,
) -> Result<(Rep, Vec<String>), String> {
    let mut rep: Rep = [None; 7];
    let tck = clk_tck();
    let notes = std::cell::RefCell::new(Vec::new());
    let report = |what: &str, r: &Result<String, String>| match r {
        Ok(v) => eprintln!("    {:<10} {what:<22} {v}", kind.name()),
        Err(e) => {
            eprintln!("    {:<10} {what:<22} FAILED: {e}", kind.name());
            notes.borrow_mut().push(format!("{what} failed: {e}"));
        }
    };
    warm_up(route).await?;

    // Memory first, while the process is fresh.
    if let Some(pid) = pid {
        let r = match tokio::time::timeout(PHASE_TIMEOUT, idle_memory(route, pid, s.idle_tunnels))
            .await
        {
            Ok(r) => r,
            Err(_) => Err("idle tunnels: timed out".to_owned()),
        };
        rep[Fig::RssPerTunnel.idx()] = r.as_ref().ok().copied();
        report(
            "memory/idle tunnel",
            &r.map(|v| format!("{v:.1} KiB ({} tunnels)", s.idle_tunnels)),
        );
    }

    let r = ping_pong(route, s.pings).await;
    rep[Fig::PingPong.idx()] = r.as_ref().ok().copied();
    report("ping-pong", &r.map(|v| format!("{v:.1} µs median")));

    let b1 = bulk(route, pid, 1, s.bulk1_bytes).await;
    rep[Fig::Bulk1.idx()] = b1.as_ref().ok().map(|b| b.0);
    report(
        "bulk, 1 tunnel",
        &b1.as_ref()
            .map(|b| format!("{:.0} MB/s", b.0))
            .map_err(Clone::clone),
    );

    let b16 = bulk(route, pid, BULK_TUNNELS, s.bulk16_bytes).await;
    rep[Fig::Bulk16.idx()] = b16.as_ref().ok().map(|b| b.0);
    report(
        "bulk, 16 tunnels",
        &b16.as_ref()
            .map(|b| format!("{:.0} MB/s", b.0))
            .map_err(Clone::clone),
    );

    if let (Ok((_, Some(c1), n1)), Ok((_, Some(c16), n16))) = (&b1, &b16) {
        let secs = (c1 + c16) as f64 / tck;
        let per_gb = secs / ((n1 + n16) as f64 / 1e9);
        rep[Fig::CpuPerGb.idx()] = Some(per_gb);
        report(
            "CPU per GB",
            &Ok(format!("{per_gb:.3} s ({secs:.2} s CPU)")),
        );
    }

    let r = tunnel_rate(route, pid, s.rate_time).await;
    if let Ok((rate, n, cpu, failed)) = &r {
        rep[Fig::Rate.idx()] = Some(*rate);
        if let Some(f) = failed {
            eprintln!("    {:<10} warning: {f}", kind.name());
            notes.borrow_mut().push(format!("tunnel rate: {f}"));
        }
        if let Some(c) = cpu {
            let us = *c as f64 / tck / *n as f64 * 1e6;
            rep[Fig::CpuPerTunnel.idx()] = Some(us);
            report(
                "CPU per tunnel",
                &Ok(format!("{us:.0} µs ({:.2} s CPU)", *c as f64 / tck)),
            );
        }
    }
    report(
        "tunnels/s",
        &r.map(|(rate, n, _, _)| format!("{rate:.0}/s ({n} tunnels)")),
    );
    Ok((rep, notes.into_inner()))
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn table(results: &[(Kind, Samples)], squid_note: &str) -> String {
    let get = |k: Kind| results.iter().find(|(kk, _)| *kk == k).map(|(_, s)| s);
    let mut t = String::new();
    t.push_str(
        "| figure | direct | portcullis | ratio | squid | ratio | target (portcullis) |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for f in FIGS {
        let d = f.decimals();
        let col = |k: Kind| -> String {
            match get(k) {
                None if k == Kind::Squid => squid_note.to_owned(),
                None => "—".to_owned(),
                Some(s) => cell(&s.values[f.idx()], d, ""),
            }
        };
        let ratio = |k: Kind| -> String {
            if !f.relative() {
                return "—".to_owned();
            }
            let suffix = if f == Fig::PingPong { "×" } else { "" };
            get(k).map_or_else(|| "—".to_owned(), |s| cell(&s.ratios[f.idx()], 2, suffix))
        };
        let direct = if f.relative() {
            col(Kind::Direct)
        } else {
            "—".to_owned()
        };
        let verdict = get(Kind::Portcullis)
            .and_then(|s| {
                let v = if f.relative() {
                    &s.ratios[f.idx()]
                } else {
                    &s.values[f.idx()]
                };
                summary(v).map(|(m, _, _)| if f.met(m) { "met" } else { "**missed**" })
            })
            .unwrap_or("not measured");
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} {} |",
            f.label(),
            direct,
            col(Kind::Portcullis),
            ratio(Kind::Portcullis),
            col(Kind::Squid),
            ratio(Kind::Squid),
            f.target_text(),
            verdict
        );
    }
    t
}

fn find_squid() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|d: PathBuf| d.join("squid"))
        .find(|p| p.is_file())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass
    // nothing of the sort and must not start a multi-minute run.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") && std::env::var_os("PORTCULLIS_BENCH_FORCE").is_none()
    {
        eprintln!("load benchmark: run it with `cargo bench --bench load`; skipping");
        return;
    }
    let settings = Settings::from_env();
    let started = Instant::now();
    let cap = settings.hard_cap;
    std::thread::spawn(move || {
        std::thread::sleep(cap);
        eprintln!(
            "load benchmark: hard time cap of {cap:?} reached; killing the proxies and exiting"
        );
        if let Ok(c) = CHILDREN.lock() {
            for &pid in c.iter() {
                // SAFETY: these are children this process spawned.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        std::process::exit(3);
    });

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load benchmark: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(settings, started));
    // Don't wait for the servers' tasks.
    rt.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

async fn run(s: Settings, started: Instant) -> i32 {
    let fd_limit = raise_fd_limit();
    if fd_limit < 10_000 {
        eprintln!(
            "warning: open-files limit is {fd_limit} (< 10000); raise it (ulimit -n) for the idle-tunnel phase"
        );
    }
    let mut s = s;
    // The bench process holds both ends of each idle tunnel.
    let fd_room = usize::try_from(fd_limit.saturating_sub(300) / 2).unwrap_or(usize::MAX);
    if s.idle_tunnels > fd_room {
        eprintln!("warning: only {fd_room} idle tunnels fit the open-files limit");
        s.idle_tunnels = fd_room.max(10);
    }

    let (dns_addr, _dns) = start_dns().await;
    let (echo_port, sink_port) = match (start_echo().await, start_sink().await) {
        (Ok(e), Ok(k)) => (e, k),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("load benchmark: binding the echo/sink servers: {e}");
            return 1;
        }
    };
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("load benchmark: {}: {e}", dir.display());
        return 1;
    }
    let squid = if s.squid_wanted { find_squid() } else { None };
    let squid_version = squid
        .as_ref()
        .and_then(|p| command_line(&p.to_string_lossy(), &["-v"]));
    let env = Env {
        dir: dir.clone(),
        dns: dns_addr,
        echo_port,
        sink_port,
        fd_limit,
        squid: squid.clone(),
    };

    let loadavg_start = read_trimmed("/proc/loadavg");
    eprintln!(
        "load benchmark ({}): {} repetitions; bulk {} MiB over 1 tunnel and {} MiB over {BULK_TUNNELS}; \
         {:?} of tunnel setup with {RATE_WORKERS} workers; {} ping-pongs; {} idle tunnels; \
         open-files limit {fd_limit}; load average {loadavg_start}",
        if s.quick { "quick" } else { "full" },
        s.reps,
        s.bulk1_bytes >> 20,
        s.bulk16_bytes >> 20,
        s.rate_time,
        s.pings,
        s.idle_tunnels,
    );
    let mut squid_note = match (&squid, s.squid_wanted) {
        (_, false) => "skipped (PORTCULLIS_BENCH_SQUID=0)".to_owned(),
        (None, true) => "not installed".to_owned(),
        (Some(_), true) => String::new(),
    };
    let mut kinds = vec![Kind::Direct, Kind::Portcullis];
    if squid.is_some() {
        kinds.push(Kind::Squid);
    }
    let mut results: Vec<(Kind, Samples)> =
        kinds.iter().map(|&k| (k, Samples::default())).collect();
    let mut failures: Vec<String> = Vec::new();
    let mut reps_done = 0;
    let mut longest_rep = Duration::ZERO;
    for rep in 0..s.reps {
        if rep > 0 && started.elapsed() + longest_rep > s.budget {
            failures.push(format!(
                "stopped after {rep} repetitions to stay within the time budget"
            ));
            break;
        }
        let rep_start = Instant::now();
        eprintln!("repetition {}/{}", rep + 1, s.reps);
        // Take turns: each repetition starts with a different kind, so that
        // slow drift in outside load does not always favour the same one.
        let mut order = kinds.clone();
        order.rotate_left(rep % kinds.len());
        let mut done: Vec<(Kind, Rep)> = Vec::new();
        for kind in order {
            if kind == Kind::Squid && !squid_note.is_empty() {
                continue;
            }
            match run_kind(kind, &env, &s, rep).await {
                Ok((r, notes)) => {
                    for n in notes {
                        failures.push(format!("repetition {}: {}: {n}", rep + 1, kind.name()));
                    }
                    done.push((kind, r));
                }
                Err(e) => {
                    eprintln!("    {}: FAILED: {e}", kind.name());
                    failures.push(format!("repetition {}: {}: {e}", rep + 1, kind.name()));
                    if kind == Kind::Squid && rep == 0 {
                        squid_note = "failed to start (see notes)".to_owned();
                    }
                }
            }
        }
        let direct = done
            .iter()
            .find(|(k, _)| *k == Kind::Direct)
            .map(|(_, r)| *r);
        for (kind, r) in &done {
            let d = if *kind == Kind::Direct {
                None
            } else {
                direct.as_ref()
            };
            if let Some((_, samples)) = results.iter_mut().find(|(k, _)| k == kind) {
                samples.add(r, d);
            }
        }
        reps_done += 1;
        longest_rep = longest_rep.max(rep_start.elapsed());
    }
    if !squid_note.is_empty() {
        results.retain(|(k, _)| *k != Kind::Squid);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let loadavg_end = read_trimmed("/proc/loadavg");
    let commit =
        command_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".to_owned());
    let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    let date =
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".to_owned());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let copy_mode =
        std::env::var("PORTCULLIS_TUNNEL_COPY").unwrap_or_else(|_| "default".to_owned());

    let mut md = String::new();
    let _ = writeln!(md, "# portcullis load benchmark\n");
    let _ = writeln!(
        md,
        "- command: `{}cargo bench --bench load`",
        if s.quick {
            "PORTCULLIS_BENCH_QUICK=1 "
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- date: {date}; commit: {commit}{}",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- machine: {cores} cores ({cpu_model}), Linux {}; load average at start {loadavg_start}, at end {loadavg_end}",
        read_trimmed("/proc/sys/kernel/osrelease")
    );
    let _ = writeln!(
        md,
        "- squid: {}{}; portcullis tunnel copy: {copy_mode}",
        squid_version.as_deref().unwrap_or("not run"),
        if squid_note.starts_with("failed") {
            " (failed to start)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- {reps_done} repetition(s) (fresh proxy processes each); cells are median (min–max); ratios are paired per repetition. \
         Bulk: {} MiB over 1 tunnel, {} MiB over {BULK_TUNNELS}; tunnel rate: {RATE_WORKERS} workers for {:?}; \
         ping-pong: median of {} round trips; memory: {} idle tunnels; proxy CPU = utime + stime from /proc.",
        s.bulk1_bytes >> 20,
        s.bulk16_bytes >> 20,
        s.rate_time,
        s.pings,
        s.idle_tunnels
    );
    let _ = writeln!(
        md,
        "- load generator, echo/sink servers and proxy share the same cores; numbers from a shared machine are noisy.\n"
    );
    md.push_str(&table(
        &results,
        if squid_note.is_empty() {
            "—"
        } else {
            &squid_note
        },
    ));
    md.push_str("\nEvery repetition (in run order):\n\n");
    for (kind, samples) in &results {
        for f in FIGS {
            let v = &samples.values[f.idx()];
            if v.is_empty() {
                continue;
            }
            let d = f.decimals();
            let list: Vec<String> = v.iter().map(|x| format!("{x:.d$}")).collect();
            let _ = writeln!(md, "- {} — {}: {}", kind.name(), f.label(), list.join(", "));
        }
    }
    if !failures.is_empty() {
        md.push_str("\nNotes:\n\n");
        for f in &failures {
            let _ = writeln!(
                md,
                "- {}",
                f.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }

    println!("\n{md}");
    let out = target_dir().join("bench-load.md");
    let written = out
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&out, &md));
    match written {
        Ok(()) => eprintln!("written to {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
    eprintln!("total time {:.0} s", started.elapsed().as_secs_f64());
    let portcullis_ok = results
        .iter()
        .any(|(k, s)| *k == Kind::Portcullis && !s.values[Fig::Bulk1.idx()].is_empty());
    if portcullis_ok {
        0
    } else {
        1
    }
}
