//! The config loader (the `config` crate plus strict validation), from a
//! file, with an empty environment: any bytes load or are refused with a
//! message, never a panic.

#![no_main]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::config::Config;

/// One file per fuzzing process, rewritten for every input, under the
/// (git-ignored) `fuzz/target/`.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).expect("create fuzz/target");
        dir.join(format!("config-input-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let p = path();
    {
        let mut f = std::fs::File::create(p).expect("create the temp config file");
        f.write_all(data).expect("write the temp config file");
    }
    match Config::load_from(Some(p), Some(HashMap::new())) {
        Ok(_) => {}
        Err(e) => assert!(!e.problems.is_empty() && !e.to_string().is_empty()),
    }
});
