//! The authoritative DNS server every test and benchmark runs on loopback
//! (hickory-server 0.26): a zone with an SOA, A records added by name, and
//! UDP plus TCP served on one port. Included with `mod dns_zone;` (or a
//! `#[path]` to this file) by `tests/common`, `tests/harness`,
//! `tests/transparent.rs` and `benches/load.rs`.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// The zone type the servers hold.
pub type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// An empty zone at `origin`; `negative_ttl` is how long a resolver may
/// cache an NXDOMAIN from it.
pub fn empty_zone(origin: &Name, negative_ttl: u32) -> Zone {
    let mut zone = Zone::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        60,
        60,
        60,
        negative_ttl,
    );
    zone.upsert_mut(
        Record::from_rdata(origin.clone(), negative_ttl, RData::SOA(soa)),
        1,
    );
    zone
}

/// Adds `host` (no trailing dot) → `ip` with `ttl` seconds.
pub fn add_a(zone: &mut Zone, host: &str, ip: Ipv4Addr, ttl: u32) {
    let record = Record::from_rdata(name(&format!("{host}.")), ttl, RData::A(A(ip)));
    zone.upsert_mut(record, 1);
}

/// Serves `zone` (rooted at `origin`) on UDP and TCP at `bind`, or on a
/// free 127.0.0.1 port; returns the address and the running server.
pub async fn serve(
    origin: &Name,
    zone: Arc<Zone>,
    bind: Option<SocketAddr>,
) -> (SocketAddr, Server<Catalog>) {
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::new(origin), vec![zone as Arc<dyn ZoneHandler>]);
    let mut server = Server::new(catalog);
    let (udp, tcp) = match bind {
        Some(a) => (
            UdpSocket::bind(a).await.expect("bind DNS/UDP"),
            TcpListener::bind(a).await.expect("bind DNS/TCP"),
        ),
        None => udp_tcp_pair().await,
    };
    let addr = udp.local_addr().expect("DNS address");
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    (addr, server)
}

/// UDP and TCP sockets on the same free 127.0.0.1 port.
pub async fn udp_tcp_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let port = udp.local_addr().expect("UDP address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("could not bind UDP and TCP on the same loopback port");
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap_or_else(|e| panic!("bad DNS name {s:?}: {e}"))
}
