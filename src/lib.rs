//! portcullis: an egress-filtering forward proxy appliance.
//!
//! **Listeners learn a destination, the gate decides and dials, the tunnel
//! copies.**
//!
//! ```text
//!  client ─► listen/ (accept loop: limit, spawn)         app.rs: lifecycle, signals, reload, drain
//!             └─ connect.rs  CONNECT head / absolute-form (http.rs, via hyper)
//!                       │  Target { host, port }  (target.rs: parsing + normalisation)
//!                       ▼
//!  gate.rs:  policy.decide(target) ─► dns.resolve(host) ─► addrs.permits(ip) ─► dial (RFC 8305)
//!                       │ refusal: GateError ─► error.rs (status, Proxy-Status token, metric reason)
//!                       ▼
//!  tunnel.rs: the rule's first-bytes TLS check (tls_hello.rs), then copy both ways
//!                       ▼
//!  access_log.rs + metrics.rs (one record per connection, written at the end)
//!
//!  admin.rs: /metrics /healthz /readyz /proxy.pac /wpad.dat (pac.rs renders from the policy)
//! ```

pub mod access_log;
pub mod addrs;
pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dial;
pub mod dns;
pub mod error;
pub mod firewall;
pub mod gate;
pub mod io_util;
pub mod listen;
pub mod metrics;
pub mod pac;
pub mod policy;
#[cfg(target_os = "linux")]
pub mod splice;
pub mod state;
pub mod target;
pub mod tls_hello;
pub mod tunnel;
