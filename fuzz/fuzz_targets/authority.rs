//! The CONNECT authority / absolute-form host parser and host
//! normalisation, on lossy UTF-8: never a panic; a parsed name is
//! normalised (normalising it again changes nothing).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::target::{normalize_host, parse_authority, parse_host_port_default, Host};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(t) = parse_authority(&s) {
        assert_ne!(t.port, 0, "port 0 accepted from {s:?}");
        check_idempotent(&t.host);
    }
    if let Ok(t) = parse_host_port_default(&s, 80) {
        check_idempotent(&t.host);
    }
    if let Ok(h) = normalize_host(&s) {
        check_idempotent(&h);
    }
});

fn check_idempotent(h: &Host) {
    if let Host::Name(n) = h {
        assert_eq!(
            normalize_host(n).as_ref(),
            Ok(h),
            "normalising {n:?} again changed it"
        );
    }
}
