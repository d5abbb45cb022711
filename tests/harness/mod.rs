//! Support for tests that drive the real `portcullis` binary as a process
//! (signals, exit codes, the admin listener): temp dirs, a hickory DNS
//! server, an echo upstream, the binary under test, a tiny HTTP client, a
//! Prometheus text parser and `promtool`. Included by `tests/admin.rs` and
//! `tests/lifecycle.rs` as `mod harness;`.
#![allow(dead_code)]

#[path = "../dns_zone/mod.rs"]
mod dns_zone;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bound for any single wait in these tests.
pub const STEP: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `f` (every 20 ms) until it yields a value; panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory under the target dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` atomically (temp file + rename), so a reload never
    /// reads half a file.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let dest = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
        dest
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config for the tests: port-0 loopback listeners, the test DNS
/// server, loopback upstreams allowed.
pub fn base_config(policy: &Path, dns: SocketAddr, grace_s: u64, pac: &[&str]) -> String {
    let pac: Vec<String> = pac.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "policy = {policy:?}\n\
         [proxy]\nlisten = [\"127.0.0.1:0\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 2000\n\
         [upstream]\nallow_cidrs = [\"127.0.0.0/8\"]\nconnect_timeout_ms = 2000\n\
         [limits]\nshutdown_grace_s = {grace_s}\nhandshake_timeout_ms = 5000\n\
         [pac]\nproxy = [{}]\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n",
        pac.join(", ")
    )
}

/// An authoritative hickory-server for `test.` on 127.0.0.1 (UDP and,
/// when the port is free, TCP), on its own thread and runtime.
pub struct DnsServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl DnsServer {
    /// `records`: (name without trailing dot, IPv4) pairs under `test.`.
    pub fn start(records: &[(&str, [u8; 4])]) -> DnsServer {
        use hickory_server::proto::rr::Name;

        let records: Vec<(String, Ipv4Addr)> = records
            .iter()
            .map(|(n, ip)| (n.to_string(), Ipv4Addr::from(*ip)))
            .collect();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let origin = Name::from_ascii("test.").unwrap();
                let mut zone = dns_zone::empty_zone(&origin, 1);
                for (name, ip) in records {
                    dns_zone::add_a(&mut zone, &name, ip, 1);
                }
                let (addr, mut server) = dns_zone::serve(&origin, Arc::new(zone), None).await;
                addr_tx.send(addr).unwrap();
                let _ = stop_rx.await;
                let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown_gracefully())
                    .await;
            });
        });
        let addr = addr_rx
            .recv_timeout(STEP)
            .expect("the test DNS server did not start");
        DnsServer {
            addr,
            stop: Some(stop_tx),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A loopback echo upstream: copies every byte back, half-closes on EOF.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut w) = s else { continue };
            std::thread::spawn(move || {
                let Ok(mut r) = w.try_clone() else { return };
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Runs `cmd` to completion within `limit` (killed and panics otherwise).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let out = read_in_background(child.stdout.take().unwrap());
    let err = read_in_background(child.stderr.take().unwrap());
    let status = wait_child(&mut child, limit)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {limit:?}"));
    Output {
        status,
        stdout: out.recv_timeout(STEP).unwrap_or_default(),
        stderr: err.recv_timeout(STEP).unwrap_or_default(),
    }
}

fn read_in_background(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// Polls the child until it exits or `limit` passes (then `None`, still running).
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `portcullis` under test, with its stderr (diagnostics) and stdout
/// (access log) collected line by line. Killed on drop if still running.
pub struct Portcullis {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

fn collect_lines(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Portcullis {
    /// Starts the binary and waits (bounded) for its proxy and admin
    /// "listening" lines.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Portcullis {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("PORTCULLIS") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning portcullis");
        let stdout = collect_lines(child.stdout.take().unwrap());
        let stderr = collect_lines(child.stderr.take().unwrap());
        let mut p = Portcullis {
            child,
            proxy: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            stderr,
            stdout,
        };
        let (proxy, admin) = wait_for("the listening lines", STEP, || {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("portcullis exited early ({st}):\n{}", p.stderr_text());
            }
            let mut proxy = None;
            let mut admin = None;
            for line in p.stderr_lines() {
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
            proxy.zip(admin)
        });
        p.proxy = proxy;
        p.admin = admin;
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` ("HUP", "TERM", "INT") with kill(1).
    pub fn signal(&self, sig: &str) {
        let out = run_bounded(
            Command::new("kill").args([format!("-{sig}"), self.pid().to_string()]),
            STEP,
        );
        assert!(out.status.success(), "kill -{sig}: {out:?}");
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the process to exit by itself within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, limit)
    }

    /// GET /metrics (must be 200).
    pub fn metrics(&self) -> String {
        let r = http(self.admin, "GET", "/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

impl Drop for Portcullis {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = wait_child(&mut self.child, STEP);
        }
    }
}

/// An HTTP/1.1 response as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `Connection: close`; the body is everything up to EOF.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = find(&raw, b"\r\n\r\n").ok_or_else(|| {
        std::io::Error::other(format!(
            "no response head in {:?}",
            String::from_utf8_lossy(&raw)
        ))
    })?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = parse_status(lines.next().unwrap_or_default());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(line: &str) -> u16 {
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
}

/// Sends `CONNECT authority` and reads the response head. Returns the
/// status, the stream (a tunnel if 200) and the head text.
pub fn proxy_connect(proxy: SocketAddr, authority: &str) -> (u16, TcpStream, String) {
    let mut s = TcpStream::connect_timeout(&proxy, IO_TIMEOUT).expect("connect to proxy");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "response head too long");
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "reading CONNECT response: {other:?} after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let status = parse_status(head.lines().next().unwrap_or_default());
    (status, s, head)
}

/// Writes `data` into a tunnel to the echo upstream and reads it back.
pub fn echo_roundtrip(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("writing into the tunnel");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).expect("reading the echo");
    assert_eq!(back, data, "echo mismatch");
}

/// One sample of the text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: `# TYPE`s and samples.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The `# TYPE` family a sample name belongs to.
    pub fn family_of<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.types.contains_key(name) {
            return Some(name);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram") | Some("summary")
                ) {
                    return Some(base);
                }
            }
        }
        None
    }

    /// The value of the sample with exactly these labels.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

/// Parses Prometheus text format 0.0.4, panicking on anything invalid:
/// every sample line is `name{labels} value [timestamp]`, belongs to a
/// `# TYPE` family declared before it, label sets are unique, and
/// histogram buckets are cumulative with `+Inf` equal to `_count`.
pub fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition::default();
    let mut seen = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().unwrap_or_default();
                    let ty = parts.next().unwrap_or_default();
                    assert!(valid_name(name), "line {n}: bad TYPE name {line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                        "line {n}: bad TYPE {line:?}"
                    );
                    assert!(
                        e.types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "line {n}: second TYPE for {name}"
                    );
                }
                Some("HELP") => {
                    let name = parts.next().unwrap_or_default();
                    assert!(valid_name(name), "line {n}: bad HELP {line:?}");
                }
                _ => {}
            }
            continue;
        }
        let s = parse_sample(line).unwrap_or_else(|why| panic!("line {n}: {why}: {line:?}"));
        let family = e
            .family_of(&s.name)
            .unwrap_or_else(|| panic!("line {n}: {} has no preceding # TYPE", s.name))
            .to_owned();
        let ty = e.types[&family].clone();
        if ty == "counter" {
            assert!(s.value >= 0.0, "line {n}: negative counter");
        }
        if s.name.ends_with("_bucket") && ty == "histogram" {
            assert!(s.labels.contains_key("le"), "line {n}: bucket without le");
        }
        assert!(
            seen.insert(format!("{}{:?}", s.name, s.labels)),
            "line {n}: duplicate series"
        );
        e.samples.push(s);
    }
    check_histograms(&e);
    e
}

fn check_histograms(e: &Exposition) {
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in &e.samples {
        let Some(base) = s.name.strip_suffix("_bucket") else {
            continue;
        };
        if e.types.get(base).map(String::as_str) != Some("histogram") {
            continue;
        }
        let mut rest = s.labels.clone();
        let le = rest.remove("le").unwrap();
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        groups
            .entry(format!("{base}{rest:?}"))
            .or_default()
            .push((le, s.value));
    }
    for (key, mut buckets) in groups {
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{key}: buckets not cumulative"
        );
        let last = buckets.last().unwrap();
        assert!(last.0.is_infinite(), "{key}: no +Inf bucket");
        let (base, rest) = key.split_at(key.find('{').unwrap());
        let count = e
            .samples
            .iter()
            .find(|s| s.name == format!("{base}_count") && format!("{:?}", s.labels) == rest)
            .unwrap_or_else(|| panic!("{key}: no _count"));
        assert_eq!(count.value, last.1, "{key}: +Inf bucket != _count");
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            // label name
            let start = match chars.peek() {
                Some((_, '}')) => {
                    let (i, _) = chars.next().unwrap();
                    rest = &r[i + 1..];
                    break;
                }
                Some((i, _)) => *i,
                None => return Err("unterminated labels".into()),
            };
            let mut end = start;
            for (i, ch) in chars.by_ref() {
                if ch == '=' {
                    end = i;
                    break;
                }
            }
            let lname = &r[start..end];
            if end == start || !valid_name(lname) || lname.contains(':') {
                return Err(format!("bad label name {lname:?}"));
            }
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("bad escape".into()),
                    },
                    Some((_, ch)) => value.push(ch),
                    None => return Err("unterminated label value".into()),
                }
            }
            if labels.insert(lname.to_owned(), value).is_some() {
                return Err(format!("label {lname} repeated"));
            }
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    rest = &r[i + 1..];
                    break;
                }
                _ => return Err("expected , or }".into()),
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = fields.next().ok_or("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `promtool check metrics` on `text`, if promtool is installed (CI
/// installs Debian's `prometheus` package; there its absence fails).
pub fn promtool_check(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is not installed, and CI=true requires it (apt-get install prometheus)"
            );
            eprintln!("promtool not on PATH: skipping `promtool check metrics`");
            return;
        }
        Err(e) => panic!("running promtool: {e}"),
    };
    let out = read_in_background(child.stdout.take().unwrap());
    let err = read_in_background(child.stderr.take().unwrap());
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let status =
        wait_child(&mut child, STEP).expect("promtool check metrics did not finish in time");
    let out = String::from_utf8_lossy(&out.recv_timeout(STEP).unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.recv_timeout(STEP).unwrap_or_default()).into_owned();
    assert!(
        status.success(),
        "promtool check metrics failed ({status}):\n{out}{err}\n--- input ---\n{text}"
    );
}
