//! The access log: one record per connection, written when it ends, on
//! stdout, by a dedicated thread so the tunnel never waits on the terminal.

use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::LogFormat;

/// How long the writer sleeps when the queue is empty (the most a record waits).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Records queued before new ones are dropped (counted as a warning).
const QUEUE_DEPTH: usize = 65536;

/// One connection, as logged.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AccessRecord {
    /// RFC 3339 UTC time the connection ended.
    pub ts: String,
    /// `connect`, `http`, `sni` or `inbound`.
    pub listener: &'static str,
    /// Client ip:port.
    pub client: String,
    /// Destination host as normalised (or as sent, if it did not parse).
    pub host: String,
    /// Destination port (0 if unknown).
    pub port: u16,
    /// `allow`, `deny`, `error` or `report`.
    pub decision: &'static str,
    /// Rule name or `none`.
    pub rule: String,
    /// `ok` or the Proxy-Status error type.
    pub reason: &'static str,
    /// ip:port dialled, if any.
    pub upstream: Option<String>,
    /// Bytes client → upstream.
    pub bytes_up: u64,
    /// Bytes upstream → client.
    pub bytes_down: u64,
    /// Connection lifetime.
    pub duration_ms: u64,
    /// SO_ORIGINAL_DST (SNI listener only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_dst: Option<String>,
}

/// Handle to the access-log writer.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
}

impl AccessLog {
    /// Starts the writer thread on stdout.
    pub fn stdout(format: LogFormat) -> AccessLog {
        let (tx, rx) = sync_channel::<AccessRecord>(QUEUE_DEPTH);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                // Polls instead of blocking in recv(): a parked receiver makes
                // every connection's send pay a futex wake-up.
                loop {
                    match rx.try_recv() {
                        Ok(r) => {
                            let _ = write_record(&mut out, &r, format);
                        }
                        Err(TryRecvError::Empty) => {
                            let _ = out.flush();
                            std::thread::sleep(POLL_INTERVAL);
                        }
                        Err(TryRecvError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access-log thread");
        }
        AccessLog { tx }
    }

    /// A log whose records go to the returned receiver instead of stdout
    /// (for tests and embedding).
    pub fn collector() -> (AccessLog, std::sync::mpsc::Receiver<AccessRecord>) {
        let (tx, rx) = sync_channel::<AccessRecord>(QUEUE_DEPTH);
        (AccessLog { tx }, rx)
    }

    /// Queues a record (stamping its time); never blocks.
    pub fn write(&self, mut rec: AccessRecord) {
        rec.ts = rfc3339_now();
        if let Err(TrySendError::Full(_)) = self.tx.try_send(rec) {
            tracing::warn!("access log queue full; record dropped");
        }
    }
}

fn write_record(out: &mut impl Write, r: &AccessRecord, format: LogFormat) -> std::io::Result<()> {
    match format {
        LogFormat::Json => {
            serde_json::to_writer(&mut *out, r)?;
            out.write_all(b"\n")
        }
        LogFormat::Text => writeln!(
            out,
            "{} listener={} client={} host={} port={} decision={} rule={} reason={} upstream={} bytes_up={} bytes_down={} duration_ms={}{}",
            r.ts,
            r.listener,
            r.client,
            r.host.escape_debug(),
            r.port,
            r.decision,
            r.rule,
            r.reason,
            r.upstream.as_deref().unwrap_or("-"),
            r.bytes_up,
            r.bytes_down,
            r.duration_ms,
            r.original_dst.as_ref().map(|o| format!(" original_dst={o}")).unwrap_or_default()
        ),
    }
}

/// Current time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn json_record_has_spec_fields() {
        let mut out = Vec::new();
        write_record(
            &mut out,
            &AccessRecord {
                listener: "connect",
                decision: "allow",
                reason: "ok",
                ..Default::default()
            },
            LogFormat::Json,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for k in [
            "ts",
            "listener",
            "client",
            "host",
            "port",
            "decision",
            "rule",
            "reason",
            "upstream",
            "bytes_up",
            "bytes_down",
            "duration_ms",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }
}
