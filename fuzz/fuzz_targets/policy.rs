//! Policy files: any text loads or is refused with a message, never a
//! panic; a loaded policy answers decisions for a few targets.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::policy::Policy;
use portcullis::target::parse_authority;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::from_toml_str(text, "fuzz.toml") {
        Ok(p) => {
            for a in [
                "connect.helpdeskbuttons.com:443",
                "a.example.com:2001",
                "127.0.0.1:443",
                "[::1]:443",
                "xn--bcher-kva.example:65535",
            ] {
                let t = parse_authority(a).unwrap();
                let _ = p.decide(&t);
            }
            let _ = p.len();
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error says what is wrong");
        }
    }
});
