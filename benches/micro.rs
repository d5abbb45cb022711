//! Micro-benchmarks: policy lookup over 4, 1,000 and 100,000 rules (the cost
//! must stay flat), authority parsing, and ClientHello extraction.
//!
//! Run: `cargo bench --bench micro`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis::policy::Policy;
use portcullis::target::parse_authority;
use std::hint::black_box;

fn policy_with(n: usize) -> Policy {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nhosts = [\"h{i}.example.com\", \"*.w{i}.example.net\"]\nports = [443, \"2001-2500\"]\n"
        ));
    }
    match Policy::from_toml_str(&text, "bench.toml") {
        Ok(p) => p,
        Err(e) => panic!("bench policy: {e}"),
    }
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for n in [4usize, 1_000, 100_000] {
        let policy = policy_with(n);
        let hit = parse_authority(&format!("h{}.example.com:2222", n / 2)).ok();
        let wild = parse_authority(&format!("a.b.w{}.example.net:443", n / 3)).ok();
        let miss = parse_authority("nothere.example.org:443").ok();
        g.bench_with_input(BenchmarkId::new("exact_hit", n), &n, |b, _| {
            b.iter(|| hit.as_ref().map(|t| policy.decide(black_box(t)).is_allow()))
        });
        g.bench_with_input(BenchmarkId::new("wildcard_hit", n), &n, |b, _| {
            b.iter(|| {
                wild.as_ref()
                    .map(|t| policy.decide(black_box(t)).is_allow())
            })
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                miss.as_ref()
                    .map(|t| policy.decide(black_box(t)).is_allow())
            })
        });
    }
    g.finish();
}

fn authority(c: &mut Criterion) {
    c.bench_function("parse_authority", |b| {
        b.iter(|| parse_authority(black_box("Connect.HelpDeskButtons.com.:2001")).is_ok())
    });
}

/// The first flight of a real rustls client: a ClientHello for `server`.
fn captured_client_hello(server: &str) -> Option<Vec<u8>> {
    use std::sync::Arc;
    use tokio_rustls::rustls::{self as r, pki_types::ServerName};
    let provider = Arc::new(r::crypto::ring::default_provider());
    let cfg = r::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(r::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(server.to_owned()).ok()?;
    let mut conn = r::ClientConnection::new(Arc::new(cfg), name).ok()?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).ok()?;
    }
    Some(out)
}

fn client_hello(c: &mut Criterion) {
    let Some(hello) = captured_client_hello("connect.helpdeskbuttons.com") else {
        eprintln!("could not build a ClientHello; skipping");
        return;
    };
    c.bench_function("parse_client_hello", |b| {
        b.iter(|| portcullis::tls_hello::parse_client_hello(black_box(&hello)).is_ok())
    });
}

criterion_group!(benches, decide, authority, client_hello);
criterion_main!(benches);
