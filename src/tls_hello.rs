//! TLS ClientHello inspection over buffered bytes: the SNI, without
//! terminating TLS. "Need more bytes" is distinct from "not TLS".
//!
//! [`parse_client_hello`] is pure: the caller keeps reading from the socket
//! into one buffer (never more than [`MAX_HELLO_BYTES`]) and calls it again
//! after every read until it stops returning [`HelloError::Incomplete`]. The
//! buffered bytes are later replayed upstream unchanged; nothing here consumes
//! or rewrites them.
//!
//! The record framing is checked here first (cheaply, without copying), so an
//! obviously incomplete or over-sized hello is answered without running the
//! parser. The ClientHello itself is decoded by `rustls::server::Acceptor`,
//! which reassembles a hello spread over several TLS records.

use rustls::server::Acceptor;

/// Largest ClientHello we buffer: 16 KiB of handshake plus one record header.
pub const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;

/// TLS record header: type, version (2 bytes), length (2 bytes).
const RECORD_HEADER_LEN: usize = 5;
/// Handshake message header: type (1 byte), length (3 bytes).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Record content type `handshake`.
const CONTENT_HANDSHAKE: u8 = 0x16;

/// What a complete ClientHello told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The server_name (already lower-case ASCII as sent), if any host name was given.
    ///
    /// `None` when the extension is absent, and also when it holds an IP
    /// literal (rustls reports those as "no SNI"). Not yet normalised: compare
    /// it through `target::normalize_host`.
    pub sni: Option<String>,
}

/// Why the buffered bytes are not (yet) a usable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// A prefix of a plausible ClientHello: read more bytes.
    #[error("incomplete ClientHello")]
    Incomplete,
    /// The bytes are not a TLS handshake record.
    #[error("not TLS")]
    NotTls,
    /// TLS framing, but the ClientHello is malformed or over the size cap.
    #[error("malformed ClientHello")]
    Malformed,
}

/// Parses the ClientHello at the start of `buf`.
///
/// - Fewer than 5 bytes that agree with a TLS handshake record header
///   (`0x16 0x03 0x00..=0x04`), or a longer prefix of a well-framed hello →
///   [`HelloError::Incomplete`].
/// - First bytes that are not such a header (an HTTP request, SSLv2, ...) →
///   [`HelloError::NotTls`].
/// - A complete ClientHello → its SNI (see [`ClientHello::sni`]). Bytes after
///   the hello (e.g. a ChangeCipherSpec or early data) are ignored.
/// - Anything else with TLS framing → [`HelloError::Malformed`]: a decoding
///   error, a first handshake message that is not a ClientHello, a declared
///   handshake length that cannot fit in [`MAX_HELLO_BYTES`], or a buffer of
///   `MAX_HELLO_BYTES` or more that still holds no complete hello (so a caller
///   that stops reading at the cap never loops on `Incomplete`).
///
/// Only the first `MAX_HELLO_BYTES` bytes of `buf` are examined.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHello, HelloError> {
    check_record_prefix(buf)?;
    let data = &buf[..buf.len().min(MAX_HELLO_BYTES)];
    let incomplete = if buf.len() >= MAX_HELLO_BYTES {
        HelloError::Malformed
    } else {
        HelloError::Incomplete
    };
    match scan_records(data) {
        Scan::Incomplete => return Err(incomplete),
        Scan::TooBig => return Err(HelloError::Malformed),
        Scan::Ready => {}
    }

    let mut acceptor = Acceptor::default();
    let mut rd: &[u8] = data;
    loop {
        let before = rd.len();
        while !rd.is_empty() {
            // Ok(0) or an error ("message buffer full") means rustls takes no
            // more for now; see whether what it has is enough.
            match acceptor.read_tls(&mut rd) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok(ClientHello {
                    sni: accepted.client_hello().server_name().map(str::to_owned),
                });
            }
            Ok(None) => {
                if rd.is_empty() || rd.len() == before {
                    return Err(incomplete);
                }
            }
            Err(_) => return Err(HelloError::Malformed),
        }
    }
}

/// Checks the first (up to) three bytes against a TLS handshake record
/// header; fewer than five agreeing bytes are `Incomplete`.
fn check_record_prefix(buf: &[u8]) -> Result<(), HelloError> {
    if !record_prefix_ok(buf) {
        return Err(HelloError::NotTls);
    }
    if buf.len() < RECORD_HEADER_LEN {
        return Err(HelloError::Incomplete);
    }
    Ok(())
}

/// Do the bytes present (of the first three) agree with `0x16 0x03 0x00..=0x04`?
fn record_prefix_ok(buf: &[u8]) -> bool {
    let expect: [fn(u8) -> bool; 3] = [|b| b == CONTENT_HANDSHAKE, |b| b == 0x03, |b| b <= 0x04];
    buf.iter().zip(expect).all(|(&b, ok)| ok(b))
}

/// Result of the framing pre-scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Well-framed so far, but the handshake message is not complete yet.
    Incomplete,
    /// The declared ClientHello length cannot fit in `MAX_HELLO_BYTES`.
    TooBig,
    /// Complete, or something only the full parser can judge.
    Ready,
}

/// Walks the handshake records in `buf` (whose first record header is at
/// least 5 bytes and agrees with [`record_prefix_ok`]) to decide whether the
/// first handshake message can be complete yet. Any framing it does not
/// understand is `Ready`, leaving the verdict to rustls.
fn scan_records(buf: &[u8]) -> Scan {
    let mut pos = 0usize;
    let mut hs_header = [0u8; HANDSHAKE_HEADER_LEN];
    let mut hs_header_len = 0usize;
    let mut payload_seen = 0usize;
    while let Some(rest) = buf.get(pos..) {
        if rest.is_empty() {
            return Scan::Incomplete;
        }
        if rest.len() < RECORD_HEADER_LEN {
            return if record_prefix_ok(rest) {
                Scan::Incomplete
            } else {
                Scan::Ready
            };
        }
        if rest[0] != CONTENT_HANDSHAKE || rest[1] != 0x03 {
            return Scan::Ready;
        }
        let record_len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        // Empty or over-long (> 2^14 plaintext) records are for rustls to refuse.
        if record_len == 0 || record_len > 16 * 1024 {
            return Scan::Ready;
        }
        let body = &rest[RECORD_HEADER_LEN..];
        let avail = &body[..body.len().min(record_len)];
        for &b in avail {
            if hs_header_len == HANDSHAKE_HEADER_LEN {
                break;
            }
            hs_header[hs_header_len] = b;
            hs_header_len += 1;
        }
        let needed = (hs_header_len == HANDSHAKE_HEADER_LEN).then(|| {
            let len = u32::from_be_bytes([0, hs_header[1], hs_header[2], hs_header[3]]);
            HANDSHAKE_HEADER_LEN + len as usize
        });
        if let Some(needed) = needed {
            if RECORD_HEADER_LEN + needed > MAX_HELLO_BYTES {
                return Scan::TooBig;
            }
        }
        if avail.len() < record_len {
            // rustls only looks inside whole records.
            return Scan::Incomplete;
        }
        payload_seen += record_len;
        if let Some(needed) = needed {
            if payload_seen >= needed {
                return Scan::Ready;
            }
        }
        pos += RECORD_HEADER_LEN + record_len;
    }
    Scan::Ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use tokio_rustls::rustls::{self as r, pki_types::ServerName};

    /// The first flight of a real rustls client (ring provider).
    fn client_hello_with(server: &str, enable_sni: bool, alpn: Vec<Vec<u8>>) -> Vec<u8> {
        let provider = Arc::new(r::crypto::ring::default_provider());
        let mut cfg = r::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(r::RootCertStore::empty())
            .with_no_client_auth();
        cfg.enable_sni = enable_sni;
        cfg.alpn_protocols = alpn;
        let name = ServerName::try_from(server).unwrap().to_owned();
        let mut conn = r::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    fn client_hello(server: &str) -> Vec<u8> {
        client_hello_with(server, true, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    /// Re-frames the handshake payload of `hello` (one or more records) into
    /// records whose payloads have the given sizes (the last one takes the rest).
    fn reframe(hello: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut pos = 0;
        let mut version = [0x03, 0x01];
        while pos < hello.len() {
            assert_eq!(hello[pos], 0x16);
            version = [hello[pos + 1], hello[pos + 2]];
            let len = u16::from_be_bytes([hello[pos + 3], hello[pos + 4]]) as usize;
            payload.extend_from_slice(&hello[pos + 5..pos + 5 + len]);
            pos += 5 + len;
        }
        let mut out = Vec::new();
        let mut rest = &payload[..];
        let mut sizes = sizes.iter();
        while !rest.is_empty() {
            let n = sizes.next().copied().unwrap_or(rest.len()).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            out.push(0x16);
            out.extend_from_slice(&version);
            out.extend_from_slice(&(n as u16).to_be_bytes());
            out.extend_from_slice(chunk);
            rest = tail;
        }
        out
    }

    fn sni(s: &str) -> Result<ClientHello, HelloError> {
        Ok(ClientHello {
            sni: Some(s.to_owned()),
        })
    }

    #[test]
    fn extracts_sni() {
        let hello = client_hello("example.com");
        assert_eq!(parse_client_hello(&hello), sni("example.com"));
        let hello = client_hello("connect.helpdeskbuttons.com");
        assert_eq!(
            parse_client_hello(&hello),
            sni("connect.helpdeskbuttons.com")
        );
        let hello = client_hello("xn--bcher-kva.example");
        assert_eq!(parse_client_hello(&hello), sni("xn--bcher-kva.example"));
    }

    #[test]
    fn sni_is_lower_case() {
        let hello = client_hello("Example.COM");
        assert_eq!(parse_client_hello(&hello), sni("example.com"));
    }

    #[test]
    fn no_sni() {
        let hello = client_hello_with("example.com", false, vec![]);
        assert_eq!(parse_client_hello(&hello), Ok(ClientHello { sni: None }));
        // A client dialling an IP address sends no SNI at all.
        let hello = client_hello_with("192.0.2.1", true, vec![]);
        assert_eq!(parse_client_hello(&hello), Ok(ClientHello { sni: None }));
    }

    #[test]
    fn ip_literal_sni_is_none() {
        // Same length as "192.0.2.1": patch the name inside the extension.
        let mut hello = client_hello("abcdefghi");
        let at = hello
            .windows(9)
            .position(|w| w == b"abcdefghi")
            .expect("name in hello");
        hello[at..at + 9].copy_from_slice(b"192.0.2.1");
        assert_eq!(parse_client_hello(&hello), Ok(ClientHello { sni: None }));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        for hello in [
            client_hello("example.com"),
            client_hello_with("example.com", false, vec![]),
            reframe(&client_hello("example.com"), &[1, 2, 3, 50]),
        ] {
            for n in 0..hello.len() {
                assert_eq!(
                    parse_client_hello(&hello[..n]),
                    Err(HelloError::Incomplete),
                    "prefix of {n} of {} bytes",
                    hello.len()
                );
            }
            assert!(parse_client_hello(&hello).is_ok());
        }
    }

    #[test]
    fn two_records() {
        let hello = client_hello("example.com");
        let payload_len = hello.len() - 5;
        for first in [1, 2, 3, 4, 5, 40, payload_len / 2, payload_len - 1] {
            let split = reframe(&hello, &[first]);
            assert_eq!(split.len(), hello.len() + 5);
            assert_eq!(
                parse_client_hello(&split),
                sni("example.com"),
                "split {first}"
            );
        }
    }

    #[test]
    fn many_small_records() {
        let hello = client_hello("example.com");
        let split = reframe(&hello, &[7; 1000]);
        assert_eq!(parse_client_hello(&split), sni("example.com"));
        for n in 0..split.len() {
            assert_eq!(parse_client_hello(&split[..n]), Err(HelloError::Incomplete));
        }
    }

    #[test]
    fn trailing_bytes_after_hello_are_ignored() {
        let mut hello = client_hello("example.com");
        hello.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        hello.extend_from_slice(b"garbage that follows");
        assert_eq!(parse_client_hello(&hello), sni("example.com"));
    }

    fn big_alpn(total: usize) -> Vec<Vec<u8>> {
        (0..total / 200)
            .map(|i| {
                let mut p = format!("proto-{i}-").into_bytes();
                p.resize(199, b'x');
                p
            })
            .collect()
    }

    #[test]
    fn big_hello_like_post_quantum() {
        let hello = client_hello_with("example.com", true, big_alpn(2000));
        assert!(hello.len() > 2000 && hello.len() < 3000, "{}", hello.len());
        assert_eq!(parse_client_hello(&hello), sni("example.com"));
        // As it arrives over two TCP segments, and re-framed into two records.
        assert_eq!(
            parse_client_hello(&hello[..1400]),
            Err(HelloError::Incomplete)
        );
        let split = reframe(&hello, &[1400]);
        assert_eq!(parse_client_hello(&split), sni("example.com"));
        assert_eq!(
            parse_client_hello(&split[..1500]),
            Err(HelloError::Incomplete)
        );
    }

    #[test]
    fn very_big_hello_near_cap() {
        let hello = client_hello_with("example.com", true, big_alpn(15_000));
        assert!(hello.len() > 15_000 && hello.len() <= MAX_HELLO_BYTES);
        assert_eq!(parse_client_hello(&hello), sni("example.com"));
        let split = reframe(&hello, &[4000, 4000, 4000]);
        assert_eq!(parse_client_hello(&split), sni("example.com"));
    }

    #[test]
    fn not_tls() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"G",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            &[0x80, 0x2e, 0x01, 0x03, 0x01], // SSLv2-compatible hello
            &[0x17, 0x03, 0x03, 0x00, 0x10], // application data
            &[0x16, 0x02],
            &[0x16, 0x03, 0x05],
            &[0x16, 0x03, 0xff, 0x00, 0x10],
        ] {
            assert_eq!(
                parse_client_hello(input),
                Err(HelloError::NotTls),
                "{input:?}"
            );
        }
    }

    #[test]
    fn short_prefixes() {
        for input in [
            &[][..],
            &[0x16],
            &[0x16, 0x03],
            &[0x16, 0x03, 0x01],
            &[0x16, 0x03, 0x04, 0x00],
            &[0x16, 0x03, 0x00, 0x02, 0x00],
        ] {
            assert_eq!(
                parse_client_hello(input),
                Err(HelloError::Incomplete),
                "{input:?}"
            );
        }
    }

    #[test]
    fn huge_record_length_is_malformed() {
        let mut buf = vec![0x16, 0x03, 0x01, 0xff, 0xff];
        buf.resize(MAX_HELLO_BYTES + 100, 0x01);
        assert_eq!(parse_client_hello(&buf), Err(HelloError::Malformed));
        assert_eq!(
            parse_client_hello(&buf[..MAX_HELLO_BYTES]),
            Err(HelloError::Malformed)
        );
    }

    #[test]
    fn declared_handshake_over_cap_is_malformed() {
        // A record of 2^14 whose ClientHello claims 64 KiB - 1.
        let mut buf = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xff];
        assert_eq!(parse_client_hello(&buf), Err(HelloError::Malformed));
        buf.resize(3000, 0);
        assert_eq!(parse_client_hello(&buf), Err(HelloError::Malformed));
    }

    #[test]
    fn slow_fill_up_to_cap_becomes_malformed() {
        // A ClientHello that claims 16300 bytes, sent in 100-byte records:
        // with record headers it can never fit in the cap.
        let hs_len: u32 = 16_300;
        let mut payload = vec![0x01];
        payload.extend_from_slice(&hs_len.to_be_bytes()[1..]);
        payload.resize(4 + hs_len as usize, 0x00);
        let mut buf = Vec::new();
        for chunk in payload.chunks(100) {
            buf.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, chunk.len() as u8]);
            buf.extend_from_slice(chunk);
        }
        assert!(buf.len() > MAX_HELLO_BYTES);
        for n in (0..MAX_HELLO_BYTES).step_by(97) {
            assert_eq!(
                parse_client_hello(&buf[..n]),
                Err(HelloError::Incomplete),
                "{n}"
            );
        }
        assert_eq!(
            parse_client_hello(&buf[..MAX_HELLO_BYTES]),
            Err(HelloError::Malformed)
        );
        assert_eq!(parse_client_hello(&buf), Err(HelloError::Malformed));
    }

    #[test]
    fn wrong_handshake_type_is_malformed() {
        // A complete ServerHello-typed handshake message.
        let mut buf = vec![0x16, 0x03, 0x03, 0x00, 0x08, 0x02, 0x00, 0x00, 0x04];
        buf.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(parse_client_hello(&buf), Err(HelloError::Malformed));
        // An empty handshake record.
        let buf = [0x16, 0x03, 0x01, 0x00, 0x00, 0x16, 0x03, 0x01];
        assert_ne!(parse_client_hello(&buf), Ok(ClientHello { sni: None }));
    }

    #[test]
    fn interleaved_other_record_is_malformed() {
        let hello = client_hello("example.com");
        let split = reframe(&hello, &[40]);
        let second = 5 + 40;
        let mut buf = split[..second].to_vec();
        buf.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        buf.extend_from_slice(&split[second..]);
        assert_eq!(parse_client_hello(&buf), Err(HelloError::Malformed));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_client_hello(&b);
        }

        #[test]
        fn framed_garbage_never_panics(
            len in any::<u16>(),
            ver in 0u8..=4,
            body in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let mut b = vec![0x16, 0x03, ver];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&body);
            let r = parse_client_hello(&b);
            prop_assert_ne!(r, Err(HelloError::NotTls));
        }

        #[test]
        fn mutated_hello_never_panics(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut hello = client_hello("example.com");
            for (at, v) in flips {
                let i = at % hello.len();
                hello[i] = v;
            }
            let n = cut % (hello.len() + 1);
            let _ = parse_client_hello(&hello[..n]);
        }

        #[test]
        fn any_reframing_parses(sizes in proptest::collection::vec(1usize..300, 0..20)) {
            let hello = client_hello("example.com");
            let split = reframe(&hello, &sizes);
            prop_assert_eq!(parse_client_hello(&split), sni("example.com"));
        }
    }
}
