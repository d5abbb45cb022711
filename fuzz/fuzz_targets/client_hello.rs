//! The ClientHello reader: any bytes, never a panic; a complete answer is
//! stable when more bytes follow, and every prefix of a parsed hello is
//! "need more", never an error (the SNI listener relies on both).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::tls_hello::{parse_client_hello, HelloError, MAX_HELLO_BYTES};

fuzz_target!(|data: &[u8]| {
    let whole = parse_client_hello(data);
    if let Ok(hello) = &whole {
        // Whatever SNI came out must go through host normalisation safely.
        if let Some(sni) = &hello.sni {
            let _ = portcullis::target::normalize_host(sni);
        }
        // Bytes after a complete hello never change the answer.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x17\x03\x03\x00\x01x");
        if longer.len() < MAX_HELLO_BYTES {
            assert_eq!(parse_client_hello(&longer), whole);
        }
        // A prefix of the bytes that made a hello is "incomplete" or the same
        // hello (the hello may end before `data` does), never an error.
        let step = (data.len() / 64).max(1);
        for n in (0..data.len()).step_by(step) {
            let r = parse_client_hello(&data[..n]);
            assert!(
                r == Err(HelloError::Incomplete) || r == whole,
                "prefix {n} of a valid hello gave {r:?}"
            );
        }
    }
});
