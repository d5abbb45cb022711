//! The one error type of the connection pipeline. A [`GateError`] knows its
//! HTTP status, its RFC 9209 `Proxy-Status` error type and its metric reason;
//! nothing else in the crate decides these.

use std::fmt;

/// Why a connection was refused or failed before its tunnel opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// host:port is not in the policy (incl. IP literals).
    #[error("destination {0} is not allowed by policy")]
    Denied(String),
    /// The client's source address is not in `clients.allow`.
    #[error("client address is not allowed to use this proxy")]
    ClientDenied,
    /// Every resolved address is in `upstream.deny_cidrs`.
    #[error("every address of {0} is in a prohibited range")]
    IpProhibited(String),
    /// NXDOMAIN, no addresses, or another DNS failure with a response code.
    #[error("DNS lookup for {host} failed ({rcode})")]
    Dns {
        /// Name looked up.
        host: String,
        /// DNS response code (`NXDOMAIN`, `NOERROR` for no addresses, `SERVFAIL`, ...).
        rcode: String,
    },
    /// The DNS lookup did not finish within `dns.timeout_ms`.
    #[error("DNS lookup for {0} timed out")]
    DnsTimeout(String),
    /// Every attempted address refused the connection.
    #[error("upstream {0} refused the connection")]
    ConnectionRefused(String),
    /// The upstream could not be reached (unreachable network/host, reset).
    #[error("upstream {0} is unreachable")]
    DestinationUnavailable(String),
    /// No address connected within `upstream.connect_timeout_ms`.
    #[error("connecting to upstream {0} timed out")]
    ConnectTimeout(String),
    /// Malformed request head, bad authority, missing port.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Request head over the 8 KiB limit.
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    /// Request head not complete within `limits.handshake_timeout_ms`.
    #[error("request head not received in time")]
    HeadTimeout,
    /// `limits.max_connections` reached.
    #[error("connection limit reached")]
    LimitReached,
    /// The proxy ran out of a local resource (descriptors, ports) dialling.
    #[error("the proxy could not open a connection to {0}: local resources exhausted")]
    Internal(String),
    /// The rule's `tls` check failed on the first client bytes.
    #[error("TLS check failed: {0}")]
    TlsCheck(&'static str),
}

/// The bounded vocabulary for the `reason` metric label and the access log:
/// `ok` or an RFC 9209 error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed and connected.
    Ok,
    /// `http_request_denied`
    HttpRequestDenied,
    /// `destination_ip_prohibited`
    DestinationIpProhibited,
    /// `dns_error`
    DnsError,
    /// `dns_timeout`
    DnsTimeout,
    /// `connection_refused`
    ConnectionRefused,
    /// `destination_unavailable`
    DestinationUnavailable,
    /// `connection_timeout`
    ConnectionTimeout,
    /// `http_request_error`
    HttpRequestError,
    /// `connection_limit_reached`
    ConnectionLimitReached,
    /// `tls_protocol_error`
    TlsProtocolError,
    /// `proxy_internal_error`
    ProxyInternalError,
}

impl Reason {
    /// The label / RFC 9209 token.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::HttpRequestDenied => "http_request_denied",
            Reason::DestinationIpProhibited => "destination_ip_prohibited",
            Reason::DnsError => "dns_error",
            Reason::DnsTimeout => "dns_timeout",
            Reason::ConnectionRefused => "connection_refused",
            Reason::DestinationUnavailable => "destination_unavailable",
            Reason::ConnectionTimeout => "connection_timeout",
            Reason::HttpRequestError => "http_request_error",
            Reason::ConnectionLimitReached => "connection_limit_reached",
            Reason::TlsProtocolError => "tls_protocol_error",
            Reason::ProxyInternalError => "proxy_internal_error",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GateError {
    /// HTTP status code for the explicit proxy's answer (SPEC table).
    pub fn status(&self) -> u16 {
        match self {
            GateError::Denied(_) | GateError::ClientDenied | GateError::IpProhibited(_) => 403,
            GateError::Dns { .. }
            | GateError::ConnectionRefused(_)
            | GateError::DestinationUnavailable(_)
            | GateError::TlsCheck(_) => 502,
            GateError::DnsTimeout(_) | GateError::ConnectTimeout(_) => 504,
            GateError::BadRequest(_) => 400,
            GateError::HeadTooLarge(_) => 431,
            GateError::HeadTimeout => 408,
            GateError::LimitReached => 503,
            GateError::Internal(_) => 500,
        }
    }

    /// The metric / RFC 9209 error type.
    pub fn reason(&self) -> Reason {
        match self {
            GateError::Denied(_) | GateError::ClientDenied => Reason::HttpRequestDenied,
            GateError::IpProhibited(_) => Reason::DestinationIpProhibited,
            GateError::Dns { .. } => Reason::DnsError,
            GateError::DnsTimeout(_) => Reason::DnsTimeout,
            GateError::ConnectionRefused(_) => Reason::ConnectionRefused,
            GateError::DestinationUnavailable(_) => Reason::DestinationUnavailable,
            GateError::ConnectTimeout(_) => Reason::ConnectionTimeout,
            GateError::BadRequest(_) | GateError::HeadTooLarge(_) | GateError::HeadTimeout => {
                Reason::HttpRequestError
            }
            GateError::LimitReached => Reason::ConnectionLimitReached,
            GateError::TlsCheck(_) => Reason::TlsProtocolError,
            GateError::Internal(_) => Reason::ProxyInternalError,
        }
    }

    /// `decision` label: policy refusals are `deny`, failures along the way `error`.
    pub fn decision(&self) -> Decision {
        match self {
            GateError::Denied(_)
            | GateError::ClientDenied
            | GateError::IpProhibited(_)
            | GateError::TlsCheck(_) => Decision::Deny,
            _ => Decision::Error,
        }
    }

    /// The `Proxy-Status` field value (RFC 9209), e.g.
    /// `portcullis; error=dns_error; rcode="NXDOMAIN"`.
    pub fn proxy_status(&self) -> String {
        let mut v = format!("portcullis; error={}", self.reason().as_str());
        if let GateError::Dns { rcode, .. } = self {
            v.push_str("; rcode=\"");
            v.push_str(&sf_escape(rcode));
            v.push('"');
        }
        v
    }

    /// The full HTTP/1.1 error response: status line, `Proxy-Status`,
    /// one-line `text/plain` body, `Connection: close`.
    pub fn http_response(&self) -> Vec<u8> {
        let body = format!("portcullis: {}\n", sanitize_line(&self.to_string()));
        format!(
            "HTTP/1.1 {} {}\r\nProxy-Status: {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.status(),
            reason_phrase(self.status()),
            self.proxy_status(),
            body.len(),
            body
        )
        .into_bytes()
    }
}

/// The `decision` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed by policy.
    Allow,
    /// Refused by policy, client ACL, address check or tls check.
    Deny,
    /// Failed (bad request, DNS, upstream, limits).
    Error,
    /// Let through by `mode = "report"` although enforce would have denied it.
    Report,
}

impl Decision {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
            Decision::Report => "report",
        }
    }
}

/// Standard reason phrase for the status codes this proxy sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        500 => "Internal Server Error",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Escapes a value for an RFC 8941 sf-string (printable ASCII only).
fn sf_escape(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c))
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            _ => vec![c],
        })
        .collect()
}

/// Keeps a body on one line of printable ASCII whatever the error text holds.
fn sanitize_line(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_tokens_follow_the_spec_table() {
        let table: Vec<(GateError, u16, &str)> = vec![
            (GateError::Denied("a:1".into()), 403, "http_request_denied"),
            (GateError::ClientDenied, 403, "http_request_denied"),
            (
                GateError::IpProhibited("a".into()),
                403,
                "destination_ip_prohibited",
            ),
            (
                GateError::Dns {
                    host: "a".into(),
                    rcode: "NXDOMAIN".into(),
                },
                502,
                "dns_error",
            ),
            (GateError::DnsTimeout("a".into()), 504, "dns_timeout"),
            (
                GateError::ConnectionRefused("a".into()),
                502,
                "connection_refused",
            ),
            (
                GateError::DestinationUnavailable("a".into()),
                502,
                "destination_unavailable",
            ),
            (
                GateError::ConnectTimeout("a".into()),
                504,
                "connection_timeout",
            ),
            (GateError::BadRequest("x".into()), 400, "http_request_error"),
            (GateError::HeadTooLarge(8192), 431, "http_request_error"),
            (GateError::HeadTimeout, 408, "http_request_error"),
            (GateError::LimitReached, 503, "connection_limit_reached"),
            (GateError::Internal("a".into()), 500, "proxy_internal_error"),
        ];
        for (e, status, token) in table {
            assert_eq!(e.status(), status, "{e:?}");
            assert_eq!(e.reason().as_str(), token, "{e:?}");
            let resp = String::from_utf8(e.http_response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
            assert!(resp.contains(&format!("Proxy-Status: portcullis; error={token}")));
            assert!(resp.contains("Connection: close\r\n"));
            assert!(resp.contains("Content-Type: text/plain"));
            let body = resp.split("\r\n\r\n").nth(1).unwrap();
            assert_eq!(body.lines().count(), 1);
        }
    }

    #[test]
    fn dns_error_carries_rcode_parameter() {
        let e = GateError::Dns {
            host: "x".into(),
            rcode: "NXDOMAIN".into(),
        };
        assert_eq!(
            e.proxy_status(),
            "portcullis; error=dns_error; rcode=\"NXDOMAIN\""
        );
    }

    #[test]
    fn body_stays_on_one_line_with_hostile_text() {
        let e = GateError::BadRequest("a\r\nInjected: yes".into());
        let resp = String::from_utf8(e.http_response()).unwrap();
        assert!(!resp.contains("\r\nInjected"));
    }
}
