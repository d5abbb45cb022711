//! Command line: `run`, `check`, `explain HOST:PORT`, `pac` (clap), and the
//! offline commands' output and exit codes.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::load_policy;
use crate::config::{Config, Mode};
use crate::policy::{Decision, Policy};
use crate::target::parse_authority;

/// portcullis: egress-filtering forward proxy (CONNECT + transparent SNI).
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// Config file (TOML). Without it, the built-in default: loopback
    /// listeners, the built-in helpdeskbuttons policy, the system resolver.
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Option<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every configured listener (the default).
    Run,
    /// Load config and policy, print the compiled rule table; exit 1 if invalid.
    Check,
    /// Print ALLOW <rule> or DENY <reason> for HOST:PORT, as the proxy would decide before DNS.
    Explain {
        /// Destination, e.g. connect.helpdeskbuttons.com:2001 or [2001:db8::1]:443.
        destination: String,
    },
    /// Print the PAC file the admin listener serves.
    Pac,
    /// Print firewall rules matching the config: inbound source allowlists,
    /// listener ports open only to clients.allow, client egress only through
    /// the proxy, and the transparent tcp/443 redirect when [sni] listeners exist.
    Firewall {
        /// Rule syntax: nftables (IPv4 and IPv6), iptables (IPv4) or ip6tables (IPv6).
        #[arg(long, value_enum)]
        format: FirewallFormat,
    },
}

pub use crate::firewall::Format as FirewallFormat;

/// Exit code for usage errors (clap uses the same).
pub const EXIT_USAGE: i32 = 2;

/// Loads config and policy for an offline command, printing problems to stderr.
fn load(cli: &Cli) -> Result<(Config, Policy), String> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| e.to_string())?;
    let policy = load_policy(&config).map_err(|e| e.to_string())?;
    Ok((config, policy))
}

/// `check`: prints the rule table; 0 valid, 1 invalid.
pub fn check(cli: &Cli) -> i32 {
    match load(cli) {
        Ok((config, policy)) => {
            print!("{}", rule_table(&policy));
            let source = config
                .policy
                .as_ref()
                .map_or_else(|| "built-in policy".to_owned(), |p| p.display().to_string());
            println!("{} rule(s) from {source}; config OK", policy.rules().len());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// The compiled rule table: name, hosts, ports, tls.
pub fn rule_table(policy: &Policy) -> String {
    let rows: Vec<[String; 4]> = policy
        .rules()
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.hosts.join(","),
                r.ports_text(),
                r.tls.to_string(),
            ]
        })
        .collect();
    let head = [
        "RULE".to_owned(),
        "HOSTS".to_owned(),
        "PORTS".to_owned(),
        "TLS".to_owned(),
    ];
    let mut widths = head.clone().map(|h| h.len());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `explain`: 0 allow, 1 deny, 2 usage error.
pub fn explain(cli: &Cli, destination: &str) -> i32 {
    let target = match parse_authority(destination) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("portcullis explain: {destination:?}: {e}");
            return EXIT_USAGE;
        }
    };
    let (config, policy) = match load(cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    match policy.decide(&target) {
        Decision::Allow(rule) => {
            println!("ALLOW {}", rule.name);
            0
        }
        Decision::Deny(why) => {
            if config.mode == Mode::Report {
                println!("DENY {why} (mode=report: the proxy would let it through and report it)");
            } else {
                println!("DENY {why}");
            }
            1
        }
    }
}

/// `pac`: prints the PAC file.
pub fn pac(cli: &Cli) -> i32 {
    match load(cli) {
        Ok((config, policy)) => {
            print!(
                "{}",
                crate::pac::render(&policy, &config.pac_proxy, config.pac_mode)
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `firewall`: prints the rules; 0, or 1 if the config is invalid.
pub fn firewall(cli: &Cli, format: FirewallFormat) -> i32 {
    match Config::load(cli.config.as_deref()) {
        Ok(config) => {
            print!("{}", crate::firewall::render(&config, format));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
