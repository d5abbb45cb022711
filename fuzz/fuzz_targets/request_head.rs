//! The explicit proxy's request-head parser: never a panic; a complete head
//! never claims more bytes than it was given, and a prefix of a complete
//! head is either "read more" or an error — never a different head.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::listen::connect::parse_head;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_head(data) {
        assert!(head.len <= data.len());
        if let Ok(Some(again)) = parse_head(&data[..head.len]) {
            assert_eq!(again, head, "the head alone parses differently");
        }
    }
});
