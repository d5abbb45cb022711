//! The `portcullis` binary: parse the command line, set up diagnostics on
//! stderr, dispatch, map the result to an exit code.

use clap::Parser;
use portcullis::cli::{self, Cli, Command};
use portcullis::config::{Config, LogFormat};

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, None | Some(Command::Run)) {
        printing_to_a_closed_pipe_ends_quietly();
    }
    let code = match &cli.command {
        None | Some(Command::Run) => run(&cli),
        Some(Command::Check) => cli::check(&cli),
        Some(Command::Explain { destination }) => cli::explain(&cli, destination),
        Some(Command::Pac) => cli::pac(&cli),
        Some(Command::Firewall { format }) => cli::firewall(&cli, *format),
    };
    std::process::exit(code);
}

/// The offline commands print and exit: like other Unix tools they should
/// end quietly when their reader goes away (`portcullis check | head`)
/// instead of panicking in `println!`. The proxy itself keeps SIGPIPE
/// ignored, since its sockets report a closed peer as an error.
fn printing_to_a_closed_pipe_ends_quietly() {
    // SAFETY: restoring the default disposition of one signal, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: &Cli) -> i32 {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    init_tracing(&config);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(portcullis::app::run(config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            1
        }
    }
}

/// Diagnostics go to stderr; stdout carries only the access log.
fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
