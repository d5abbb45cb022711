//! Configuration: the TOML file plus `PORTCULLIS__SECTION__KEY` environment
//! overrides (loaded with the `config` crate), checked strictly: unknown keys
//! are errors and every problem is reported at once, with its line where the
//! file has one.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Default explicit-proxy listener.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:3128";
/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9128";
/// Default DNS lookup timeout.
pub const DEFAULT_DNS_TIMEOUT_MS: u64 = 2000;
/// Default cap on how long a DNS answer is reused.
pub const DEFAULT_DNS_MAX_TTL_S: u64 = 300;
/// Default upstream connect timeout (all attempts together).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5000;
/// Default concurrent connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20000;
/// Default time to receive a full CONNECT head or ClientHello.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10000;
/// Default tunnel idle timeout.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 900;
/// Default drain time on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_S: u64 = 30;
/// Default SNI listener destination port.
pub const DEFAULT_SNI_PORT: u16 = 443;
/// Longest duration any key accepts (100 years): far beyond any useful
/// timeout, far below what overflows `Instant + Duration`.
pub const MAX_DURATION_S: u64 = 100 * 365 * 24 * 3600;
/// Largest `limits.max_connections` (what a tokio semaphore can hold).
pub const MAX_MAX_CONNECTIONS: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The `deny_cidrs = ["default"]` set: loopback, RFC 1918, CGNAT, link-local
/// (incl. 169.254.169.254), ULA, multicast, unspecified and other
/// non-global ranges.
pub const DEFAULT_DENY_CIDRS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// `mode`: enforce the policy or only report what it would deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse what the policy denies.
    Enforce,
    /// Let through host:port and tls-check denials, logged and counted as `report`.
    Report,
}

/// `pac.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacMode {
    /// Policy hosts via the proxy, everything else DIRECT.
    Allowlist,
    /// Everything via the proxy.
    All,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable key=value lines.
    Text,
}

/// One `[sni] listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniListen {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Destination port used for policy and dialling.
    pub port: u16,
    /// Take the port from SO_ORIGINAL_DST when the socket has one.
    pub original_dst: bool,
}

/// One `[[inbound]]` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Name used in logs and as the metric `rule` label.
    pub name: String,
    /// Address to bind.
    pub listen: SocketAddr,
    /// `host:port` to forward to, resolved at connect time.
    pub forward: String,
    /// Source CIDRs allowed to connect.
    pub sources: Vec<IpNet>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file, if one was given.
    pub file: Option<PathBuf>,
    /// Policy file (resolved relative to the config file); `None` = built-in seed policy.
    pub policy: Option<PathBuf>,
    /// Re-read the policy file when it changes, checking this often
    /// (`policy_watch_s`; zero = only on SIGHUP). For mounted ConfigMaps.
    pub policy_watch: Duration,
    /// Enforce or report.
    pub mode: Mode,
    /// Explicit proxy listeners.
    pub proxy_listen: Vec<SocketAddr>,
    /// Transparent SNI listeners.
    pub sni_listen: Vec<SniListen>,
    /// Admin listener (`None` if set to an empty string).
    pub admin_listen: Option<SocketAddr>,
    /// DNS servers; empty = system resolv.conf.
    pub dns_nameservers: Vec<SocketAddr>,
    /// DNS lookup timeout.
    pub dns_timeout: Duration,
    /// Cap on how long an answer is reused.
    pub dns_max_ttl: Duration,
    /// Upstream connect timeout over all attempts.
    pub connect_timeout: Duration,
    /// Prohibited upstream ranges.
    pub deny_cidrs: Vec<IpNet>,
    /// Exceptions to `deny_cidrs`.
    pub allow_cidrs: Vec<IpNet>,
    /// Source CIDRs that may use the proxy listeners.
    pub clients_allow: Vec<IpNet>,
    /// Concurrent connection limit.
    pub max_connections: usize,
    /// Time to receive a request head or ClientHello.
    pub handshake_timeout: Duration,
    /// Tunnel idle timeout.
    pub idle_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// What PAC clients are told, in failover order.
    pub pac_proxy: Vec<String>,
    /// PAC mode.
    pub pac_mode: PacMode,
    /// Access-log format.
    pub log_format: LogFormat,
    /// Diagnostic log level (tracing filter directive).
    pub log_level: String,
    /// Inbound forwards.
    pub inbound: Vec<Inbound>,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// File it was found in (`<built-in>` / `<environment>` otherwise).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order found.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Keys each section may hold; anything else is an error.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "policy",
            "policy_watch_s",
            "mode",
            "proxy",
            "sni",
            "admin",
            "dns",
            "upstream",
            "clients",
            "limits",
            "pac",
            "log",
            "inbound",
        ],
    ),
    ("proxy", &["listen"]),
    ("sni", &["listen"]),
    ("sni.listen", &["addr", "port", "original_dst"]),
    ("admin", &["listen"]),
    ("dns", &["nameservers", "timeout_ms", "max_ttl_s"]),
    (
        "upstream",
        &["connect_timeout_ms", "deny_cidrs", "allow_cidrs"],
    ),
    ("clients", &["allow"]),
    (
        "limits",
        &[
            "max_connections",
            "handshake_timeout_ms",
            "idle_timeout_s",
            "shutdown_grace_s",
        ],
    ),
    ("pac", &["proxy", "mode"]),
    ("log", &["format", "level"]),
    ("inbound", &["name", "listen", "forward", "sources"]),
];

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "proxy.listen",
    "dns.nameservers",
    "upstream.deny_cidrs",
    "upstream.allow_cidrs",
    "clients.allow",
    "pac.proxy",
];

impl Config {
    /// The built-in default: loopback listeners, built-in policy, system resolver.
    pub fn builtin() -> Result<Config, ConfigError> {
        Self::load_from(None, None)
    }

    /// Loads `file` (or the built-in default) with overrides from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, None)
    }

    /// Loads `file` (or the built-in default) with overrides from `env`
    /// (`None` = the process environment). Tests pass their own map.
    pub fn load_from(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let file_name = file.map_or_else(|| "<built-in>".to_owned(), |p| p.display().to_string());
        let text = match file {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => t,
                Err(e) => {
                    return Err(ConfigError {
                        problems: vec![ConfigProblem {
                            file: file_name,
                            line: None,
                            message: format!("cannot read config file: {e}"),
                        }],
                    })
                }
            },
            None => String::new(),
        };
        let mut env_source = config::Environment::with_prefix("PORTCULLIS")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(env);
        for k in LIST_KEYS {
            env_source = env_source.with_list_parse_key(k);
        }
        let built = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(env_source)
            .build();
        let mut v = Validator {
            file: file_name,
            text: &text,
            problems: Vec::new(),
        };
        let tree: serde_json::Value = match built.and_then(|c| c.try_deserialize()) {
            Ok(t) => t,
            Err(e) => {
                v.problems.push(ConfigProblem {
                    file: v.file.clone(),
                    line: None,
                    message: e.to_string(),
                });
                return Err(ConfigError {
                    problems: v.problems,
                });
            }
        };
        v.check_keys("", &tree);
        let cfg = v.build(&tree, file);
        if v.problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError {
                problems: v.problems,
            })
        }
    }
}

/// Collects problems while turning the raw tree into a [`Config`].
struct Validator<'a> {
    file: String,
    text: &'a str,
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn problem(&mut self, section: &str, key: &str, message: String) {
        let line = line_of(self.text, section, key);
        self.problems.push(ConfigProblem {
            file: self.file.clone(),
            line,
            message,
        });
    }

    fn check_keys(&mut self, section: &str, value: &serde_json::Value) {
        let Some(allowed) = SCHEMA.iter().find(|(s, _)| *s == section).map(|(_, k)| *k) else {
            return;
        };
        let serde_json::Value::Object(map) = value else {
            return;
        };
        for (k, child) in map {
            if !allowed.contains(&k.as_str()) {
                let what = if section.is_empty() {
                    k.clone()
                } else {
                    format!("{section}.{k}")
                };
                self.problem(section, k, format!("unknown key `{what}`"));
                continue;
            }
            let path = if section.is_empty() {
                k.clone()
            } else {
                format!("{section}.{k}")
            };
            match child {
                serde_json::Value::Array(items) => {
                    for item in items {
                        self.check_keys(&path, item);
                    }
                }
                other => self.check_keys(&path, other),
            }
        }
    }

    /// Reads `section.key` as `T`, recording a problem and returning `default` on failure.
    fn get<T: DeserializeOwned>(
        &mut self,
        tree: &serde_json::Value,
        section: &str,
        key: &str,
        default: T,
    ) -> T {
        let node = if section.is_empty() {
            Some(tree)
        } else {
            tree.get(section)
        };
        let Some(raw) = node.and_then(|n| n.get(key)) else {
            return default;
        };
        match T::deserialize(raw) {
            Ok(v) => v,
            Err(e) => {
                let name = if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                };
                self.problem(section, key, format!("invalid value for `{name}`: {e}"));
                default
            }
        }
    }

    fn build(&mut self, tree: &serde_json::Value, file: Option<&Path>) -> Config {
        let policy: Option<String> = self.get(tree, "", "policy", None);
        let policy = policy.map(|p| match file.and_then(Path::parent) {
            Some(dir) if Path::new(&p).is_relative() => dir.join(p),
            _ => PathBuf::from(p),
        });
        let policy_watch = self.bounded_secs(tree, "", "policy_watch_s", 0);
        let mode = match self.get(tree, "", "mode", "enforce".to_owned()).as_str() {
            "enforce" => Mode::Enforce,
            "report" => Mode::Report,
            other => {
                self.problem(
                    "",
                    "mode",
                    format!("`mode` must be \"enforce\" or \"report\", not {other:?}"),
                );
                Mode::Enforce
            }
        };
        let listen: Vec<String> = self.get(
            tree,
            "proxy",
            "listen",
            vec![DEFAULT_PROXY_LISTEN.to_owned()],
        );
        let proxy_listen = self.addrs("proxy", "listen", &listen);
        let sni_listen = self.sni(tree);
        let admin: String = self.get(tree, "admin", "listen", DEFAULT_ADMIN_LISTEN.to_owned());
        let admin_listen = if admin.is_empty() {
            None
        } else {
            self.addrs("admin", "listen", &[admin]).pop()
        };
        let ns: Vec<String> = self.get(tree, "dns", "nameservers", Vec::new());
        let dns_nameservers = self.addrs("dns", "nameservers", &ns);
        let dns_timeout = self.millis(tree, "dns", "timeout_ms", DEFAULT_DNS_TIMEOUT_MS);
        let dns_max_ttl = self.bounded_secs(tree, "dns", "max_ttl_s", DEFAULT_DNS_MAX_TTL_S);
        let connect_timeout = self.millis(
            tree,
            "upstream",
            "connect_timeout_ms",
            DEFAULT_CONNECT_TIMEOUT_MS,
        );
        let deny: Vec<String> =
            self.get(tree, "upstream", "deny_cidrs", vec!["default".to_owned()]);
        let deny_cidrs = self.cidrs("upstream", "deny_cidrs", &deny);
        let allow: Vec<String> = self.get(tree, "upstream", "allow_cidrs", Vec::new());
        let allow_cidrs = self.cidrs("upstream", "allow_cidrs", &allow);
        let clients: Vec<String> = self.get(
            tree,
            "clients",
            "allow",
            vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()],
        );
        let clients_allow = self.cidrs("clients", "allow", &clients);
        let max_connections = self.get(tree, "limits", "max_connections", DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            self.problem(
                "limits",
                "max_connections",
                "`limits.max_connections` must be at least 1".into(),
            );
        }
        // The limit sizes a tokio semaphore, whose constructor panics above
        // MAX_PERMITS: refuse such a value here, with its line, rather than
        // crash at start-up (found by tests/adversarial.rs).
        if max_connections > MAX_MAX_CONNECTIONS {
            self.problem(
                "limits",
                "max_connections",
                format!("`limits.max_connections` must be at most {MAX_MAX_CONNECTIONS}"),
            );
        }
        let handshake_timeout = self.millis(
            tree,
            "limits",
            "handshake_timeout_ms",
            DEFAULT_HANDSHAKE_TIMEOUT_MS,
        );
        let idle_timeout = self.secs(tree, "limits", "idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S);
        let shutdown_grace =
            self.bounded_secs(tree, "limits", "shutdown_grace_s", DEFAULT_SHUTDOWN_GRACE_S);
        let pac_proxy: Vec<String> =
            self.get(tree, "pac", "proxy", vec![DEFAULT_PROXY_LISTEN.to_owned()]);
        for p in &pac_proxy {
            if p.is_empty()
                || p.chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || ".-:[]_".contains(c)))
            {
                self.problem(
                    "pac",
                    "proxy",
                    format!("`pac.proxy` entry {p:?} is not a host:port"),
                );
            }
        }
        let pac_mode = match self
            .get(tree, "pac", "mode", "allowlist".to_owned())
            .as_str()
        {
            "allowlist" => PacMode::Allowlist,
            "all" => PacMode::All,
            other => {
                self.problem(
                    "pac",
                    "mode",
                    format!("`pac.mode` must be \"allowlist\" or \"all\", not {other:?}"),
                );
                PacMode::Allowlist
            }
        };
        let log_format = match self.get(tree, "log", "format", "json".to_owned()).as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                self.problem(
                    "log",
                    "format",
                    format!("`log.format` must be \"json\" or \"text\", not {other:?}"),
                );
                LogFormat::Json
            }
        };
        let log_level: String = self.get(tree, "log", "level", "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            self.problem(
                "log",
                "level",
                format!("`log.level` {log_level:?} is not a valid level"),
            );
        }
        let inbound = self.inbound(tree);
        Config {
            file: file.map(Path::to_path_buf),
            policy,
            policy_watch,
            mode,
            proxy_listen,
            sni_listen,
            admin_listen,
            dns_nameservers,
            dns_timeout,
            dns_max_ttl,
            connect_timeout,
            deny_cidrs,
            allow_cidrs,
            clients_allow,
            max_connections,
            handshake_timeout,
            idle_timeout,
            shutdown_grace,
            pac_proxy,
            pac_mode,
            log_format,
            log_level,
            inbound,
        }
    }

    fn millis(
        &mut self,
        tree: &serde_json::Value,
        section: &str,
        key: &str,
        default: u64,
    ) -> Duration {
        let v: u64 = self.get(tree, section, key, default);
        if v == 0 {
            self.problem(
                section,
                key,
                format!("`{section}.{key}` must be greater than 0"),
            );
        }
        self.check_max(section, key, v, MAX_DURATION_S.saturating_mul(1000));
        Duration::from_millis(v)
    }

    /// A duration in seconds where 0 is allowed, bounded like the others.
    fn bounded_secs(
        &mut self,
        tree: &serde_json::Value,
        section: &str,
        key: &str,
        default: u64,
    ) -> Duration {
        let v: u64 = self.get(tree, section, key, default);
        self.check_max(section, key, v, MAX_DURATION_S);
        Duration::from_secs(v)
    }

    /// Deadlines are computed as `now + duration`, which panics when the sum
    /// overflows the clock (`idle_timeout_s = 9223372036854775807` did, found
    /// by tests/adversarial.rs): a value over `max` is refused at load time.
    fn check_max(&mut self, section: &str, key: &str, v: u64, max: u64) {
        if v > max {
            self.problem(
                section,
                key,
                format!("`{section}.{key}` must be at most {max} (100 years)"),
            );
        }
    }

    fn secs(
        &mut self,
        tree: &serde_json::Value,
        section: &str,
        key: &str,
        default: u64,
    ) -> Duration {
        let v: u64 = self.get(tree, section, key, default);
        if v == 0 {
            self.problem(
                section,
                key,
                format!("`{section}.{key}` must be greater than 0"),
            );
        }
        self.check_max(section, key, v, MAX_DURATION_S);
        Duration::from_secs(v)
    }

    fn addrs(&mut self, section: &str, key: &str, raw: &[String]) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for s in raw {
            match s.parse::<SocketAddr>() {
                Ok(a) => out.push(a),
                Err(_) => self.problem(
                    section,
                    key,
                    format!("`{section}.{key}`: {s:?} is not an ip:port address"),
                ),
            }
        }
        out
    }

    fn cidrs(&mut self, section: &str, key: &str, raw: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for s in raw {
            if s == "default" {
                out.extend(
                    DEFAULT_DENY_CIDRS
                        .iter()
                        .filter_map(|c| c.parse::<IpNet>().ok()),
                );
            } else if let Ok(net) = s.parse::<IpNet>() {
                out.push(net.trunc());
            } else if let Ok(ip) = s.parse::<IpAddr>() {
                out.push(IpNet::from(ip));
            } else {
                self.problem(
                    section,
                    key,
                    format!("`{section}.{key}`: {s:?} is not a CIDR"),
                );
            }
        }
        out
    }

    fn sni(&mut self, tree: &serde_json::Value) -> Vec<SniListen> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            addr: String,
            port: Option<u16>,
            #[serde(default)]
            original_dst: bool,
        }
        let raw: Vec<Raw> = self.get(tree, "sni", "listen", Vec::new());
        let mut out = Vec::new();
        for r in raw {
            let Some(addr) = self.addrs("sni", "listen", &[r.addr]).pop() else {
                continue;
            };
            let port = r.port.unwrap_or(DEFAULT_SNI_PORT);
            if port == 0 {
                self.problem("sni", "listen", "`sni.listen` port must be 1-65535".into());
            }
            out.push(SniListen {
                addr,
                port,
                original_dst: r.original_dst,
            });
        }
        out
    }

    fn inbound(&mut self, tree: &serde_json::Value) -> Vec<Inbound> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            name: String,
            listen: String,
            forward: String,
            sources: Vec<String>,
        }
        let raw: Vec<Raw> = self.get(tree, "", "inbound", Vec::new());
        let mut out: Vec<Inbound> = Vec::new();
        for r in raw {
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                self.problem(
                    "inbound",
                    "name",
                    format!("inbound name {:?} must be [a-z0-9-]", r.name),
                );
            }
            if out.iter().any(|i| i.name == r.name) {
                self.problem(
                    "inbound",
                    "name",
                    format!("duplicate inbound name {:?}", r.name),
                );
            }
            if crate::target::parse_authority(&r.forward).is_err() {
                self.problem(
                    "inbound",
                    "forward",
                    format!("inbound forward {:?} is not host:port", r.forward),
                );
            }
            let sources = self.cidrs("inbound", "sources", &r.sources);
            if sources.is_empty() {
                self.problem(
                    "inbound",
                    "sources",
                    format!("inbound {:?} has no sources", r.name),
                );
            }
            let Some(listen) = self.addrs("inbound", "listen", &[r.listen]).pop() else {
                continue;
            };
            out.push(Inbound {
                name: r.name,
                listen,
                forward: r.forward,
                sources,
            });
        }
        out
    }
}

/// Finds the 1-based line where `key` is set inside `[section]` (or `[[section]]`).
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            continue;
        };
        if current == section && k.trim().trim_matches('"') == key {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("portcullis-cfg-{}-{n}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("c{}.toml", env.len()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let loaded = Config::load_from(Some(&path), Some(env));
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    #[test]
    fn builtin_default_is_loopback_and_seed_policy() {
        let c = Config::load_from(None, Some(HashMap::new())).unwrap();
        assert_eq!(
            c.proxy_listen,
            vec!["127.0.0.1:3128".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.admin_listen, Some("127.0.0.1:9128".parse().unwrap()));
        assert!(c.policy.is_none());
        assert!(c.dns_nameservers.is_empty());
        assert_eq!(c.mode, Mode::Enforce);
        assert!(c
            .deny_cidrs
            .iter()
            .any(|n| n.contains(&"169.254.169.254".parse::<IpAddr>().unwrap())));
    }

    #[test]
    fn env_overrides_file() {
        let c = load_text(
            "[limits]\nmax_connections = 10\n",
            &[
                ("PORTCULLIS__LIMITS__MAX_CONNECTIONS", "7"),
                ("PORTCULLIS__PROXY__LISTEN", "127.0.0.1:1,127.0.0.1:2"),
                ("PORTCULLIS__MODE", "report"),
            ],
        )
        .unwrap();
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.proxy_listen.len(), 2);
        assert_eq!(c.mode, Mode::Report);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let err = load_text(
            "mode = \"loud\"\n[proxy]\nlisten = [\"nope\"]\n[limits]\nmax_conections = 5\nidle_timeout_s = 0\n[upstream]\ndeny_cidrs = [\"10.0.0.0/33\"]\n",
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(":1: `mode`"), "{text}");
        assert!(text.contains(":3: `proxy.listen`"), "{text}");
        assert!(
            text.contains(":5: unknown key `limits.max_conections`"),
            "{text}"
        );
        assert!(text.contains(":6: `limits.idle_timeout_s`"), "{text}");
        assert!(text.contains(":8: `upstream.deny_cidrs`"), "{text}");
        assert_eq!(err.problems.len(), 5, "{text}");
    }

    #[test]
    fn unknown_section_and_nested_keys_are_rejected() {
        let err = load_text("[proxi]\nlisten = []\n[[inbound]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nforward = \"x.example:443\"\nsources = [\"1.2.3.4/32\"]\nextra = 1\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown key `proxi`"), "{text}");
        assert!(text.contains("unknown key `inbound.extra`"), "{text}");
    }

    #[test]
    fn toml_syntax_error_is_reported() {
        let err = load_text("[proxy\nlisten = 1\n", &[]).unwrap_err();
        assert!(
            err.to_string().contains("line 1") || err.to_string().contains(":1"),
            "{err}"
        );
    }

    #[test]
    fn policy_watch_is_off_by_default_and_read_in_seconds() {
        assert!(load_text("", &[]).unwrap().policy_watch.is_zero());
        let c = load_text("policy_watch_s = 10\n", &[]).unwrap();
        assert_eq!(c.policy_watch, Duration::from_secs(10));
    }

    #[test]
    fn policy_path_is_relative_to_config_file() {
        let c = load_text("policy = \"p/x.toml\"\n", &[]).unwrap();
        let p = c.policy.unwrap();
        assert!(p.ends_with("p/x.toml"));
        assert!(p.is_absolute() || p.components().count() > 2);
    }
}
