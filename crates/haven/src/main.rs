//! `haven`: the one binary. It parses the command line and wires the crates together; the
//! behaviour lives in the crates.

mod app;
mod channels;
mod lag;
mod server;
mod telemetry;

use clap::{Parser, Subcommand};
use haven_platform::config::{CliOverrides, Config};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's allocator spent a sixth of the server's CPU under load (measured with perf while
// benchmarking); mimalloc's per-thread free lists avoid its consolidation and locking.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "haven",
    version,
    about = "Haven: self-hosted communications APIs for healthcare"
)]
struct Cli {
    /// TOML configuration file (also HAVEN_CONFIG).
    #[arg(long, global = true, env = "HAVEN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: master key, TLS material, SQLite database (default ./haven-data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://…` (default: SQLite in the data directory).
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the data directory, master key, TLS certificate, database, root account and first
    /// admin key (printed once). `serve` does this too on first start.
    Init,
    /// Run the server.
    Serve {
        /// Address to listen on (default 127.0.0.1:8443; port 0 picks a free port, written to
        /// DATA_DIR/listen.addr).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Check or show the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the version.
    Version,
    /// Manage accounts (operator).
    #[command(subcommand)]
    Accounts(app::AccountsCommand),
    /// Manage API keys and token signing keys (operator).
    #[command(subcommand)]
    Keys(app::KeysCommand),
    /// Verify the tamper-evident audit log (operator).
    #[command(subcommand)]
    Audit(app::AuditCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Report every problem in the configuration (file and environment) at once.
    Check,
    /// Print the effective configuration, secrets redacted.
    Show,
}

fn load_config(cli: &Cli, listen: Option<String>) -> Result<Config, ExitCode> {
    let overrides = CliOverrides {
        data_dir: cli.data_dir.clone(),
        listen,
        database_url: cli.database_url.clone(),
    };
    Config::load(cli.config.as_deref(), std::env::vars(), &overrides).map_err(|problems| {
        eprintln!(
            "haven: the configuration has {} problem(s):",
            problems.len()
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Version => {
            println!("haven {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Config(ConfigCommand::Check) => {
            return match load_config(&cli, None) {
                Ok(c) => match channels::Channels::check(&c) {
                    Ok(()) => {
                        println!("configuration is valid");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("haven: {e}");
                        ExitCode::FAILURE
                    }
                },
                Err(code) => code,
            };
        }
        Command::Config(ConfigCommand::Show) => {
            return match load_config(&cli, None) {
                Ok(c) => {
                    print!("{}", c.to_redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
        _ => {}
    }
    let listen = match &cli.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let config = match load_config(&cli, listen) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _log = telemetry::init(&config.log, matches!(cli.command, Command::Serve { .. }));
    // One crypto provider for every TLS user in the process (server, PostgreSQL client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haven: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Init => app::init(&config).await,
            Command::Serve { .. } => server::serve(config).await,
            Command::Migrate => app::migrate(&config).await,
            Command::Accounts(cmd) => app::accounts(&config, cmd).await,
            Command::Keys(cmd) => app::keys(&config, cmd).await,
            Command::Audit(cmd) => app::audit(&config, cmd).await,
            Command::Version | Command::Config(_) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "haven failed");
            eprintln!("haven: {e}");
            ExitCode::FAILURE
        }
    }
}
