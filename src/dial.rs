//! Dialling an upstream over several addresses, RFC 8305 style: families
//! interleaved (IPv6 first), a new attempt every 250 ms while earlier ones are
//! still pending (at once when one fails), the first connected wins, all
//! bounded by `upstream.connect_timeout_ms`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// RFC 8305 §5 "Connection Attempt Delay" (recommended value).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why no address connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// Every attempt was actively refused (RST).
    #[error("connection refused")]
    Refused,
    /// At least one attempt failed otherwise (unreachable, reset, ...).
    #[error("destination unavailable")]
    Unreachable,
    /// The connect timeout expired first.
    #[error("connect timeout")]
    Timeout,
    /// The proxy itself ran out of a resource (descriptors, ports, memory):
    /// not the destination's fault.
    #[error("local resource exhausted")]
    Local,
}

/// Sorts a failed attempt's error into the answer it would give alone.
pub fn classify(e: &io::Error) -> DialError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        return DialError::Refused;
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL) => {
            DialError::Local
        }
        _ => DialError::Unreachable,
    }
}

impl DialError {
    /// The `outcome` label of `portcullis_upstream_connect_duration_seconds`.
    pub fn outcome(self) -> &'static str {
        match self {
            DialError::Refused => "refused",
            DialError::Timeout => "timeout",
            DialError::Unreachable | DialError::Local => "error",
        }
    }
}

/// Orders addresses for racing: IPv6 and IPv4 interleaved, IPv6 first,
/// keeping the resolver's order within each family.
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs.iter().partition(|a| a.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

/// Connects to the first of `addrs` (already permitted and ordered) that answers.
pub async fn dial(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    if let [addr] = addrs {
        // One address: nothing to race, so no task to spawn.
        return match tokio::time::timeout(timeout, TcpStream::connect(*addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok((stream, *addr))
            }
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(DialError::Timeout),
        };
    }
    let deadline = Instant::now() + timeout;
    let mut attempts: JoinSet<(SocketAddr, io::Result<TcpStream>)> = JoinSet::new();
    let mut next = 0;
    let mut next_at = Instant::now();
    // The answer if every attempt fails: refused only if all were refused;
    // a local resource failure outranks what the destinations said.
    let mut worst = DialError::Refused;
    loop {
        if next < addrs.len() && (attempts.is_empty() || Instant::now() >= next_at) {
            let addr = addrs[next];
            next += 1;
            next_at = Instant::now() + CONNECTION_ATTEMPT_DELAY;
            attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
        }
        if attempts.is_empty() {
            return Err(worst);
        }
        let more = next < addrs.len();
        tokio::select! {
            joined = attempts.join_next() => match joined {
                Some(Ok((addr, Ok(stream)))) => {
                    // Dropping the JoinSet aborts the attempts still pending.
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr));
                }
                Some(Ok((addr, Err(e)))) => {
                    tracing::debug!(%addr, error = %e, "upstream attempt failed");
                    worst = match (worst, classify(&e)) {
                        (DialError::Local, _) | (_, DialError::Local) => DialError::Local,
                        (_, DialError::Refused) => worst,
                        _ => DialError::Unreachable,
                    };
                    // A fast failure starts the next attempt at once (RFC 8305 §5).
                    next_at = Instant::now();
                }
                Some(Err(_)) | None => {
                    if worst == DialError::Refused {
                        worst = DialError::Unreachable;
                    }
                }
            },
            _ = sleep_until(next_at), if more => {}
            _ = sleep_until(deadline) => return Err(DialError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_resource_errors_are_not_blamed_on_the_destination() {
        let e = |code| io::Error::from_raw_os_error(code);
        assert_eq!(classify(&e(libc::ECONNREFUSED)), DialError::Refused);
        assert_eq!(classify(&e(libc::EHOSTUNREACH)), DialError::Unreachable);
        assert_eq!(classify(&e(libc::ENETUNREACH)), DialError::Unreachable);
        for code in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EADDRNOTAVAIL,
            libc::ENOBUFS,
        ] {
            assert_eq!(classify(&e(code)), DialError::Local, "{code}");
        }
    }

    #[test]
    fn interleaves_families_ipv6_first() {
        let a: Vec<SocketAddr> = ["1.1.1.1:1", "2.2.2.2:1", "[::1]:1", "3.3.3.3:1", "[::2]:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let got: Vec<String> = interleave(&a).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            got,
            ["[::1]:1", "1.1.1.1:1", "[::2]:1", "2.2.2.2:1", "3.3.3.3:1"]
        );
    }

    #[tokio::test]
    async fn refused_first_address_falls_through_to_second() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let (_s, used) = dial(&[dead_addr, live_addr], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(used, live_addr);
    }

    #[tokio::test]
    async fn all_refused_is_refused() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        assert_eq!(
            dial(&[dead_addr], Duration::from_secs(5))
                .await
                .unwrap_err(),
            DialError::Refused
        );
    }
}
