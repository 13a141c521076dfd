//! `custody`: the single user-facing binary.
//!
//! Every subcommand lives in its own module under `cmd/`; this file only parses the command line, sets up logging and
//! turns an error into its printed cause chain and exit code (see README, "Exit codes").

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser)]
#[command(name = "custody", version, about = "Secure update delivery for fleets of Linux devices")]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax); also read from CUSTODY_LOG.
    #[arg(long, global = true, env = "CUSTODY_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Low-level TUF client (the tuf-conformance client protocol).
    Tuf(cmd::tuf::Args),
    /// The publisher's repository tool: keys, targets, delegations, signing.
    #[command(subcommand)]
    Repo(cmd::repo::Command),
    /// The certificate authority: root, intermediates, server and device certificates, CRLs (docs/pki.md).
    #[command(subcommand)]
    Pki(cmd::pki::Command),
    /// The host names and ports a device or relay contacts, for firewall and proxy exceptions.
    Endpoints(cmd::endpoints::Args),
    /// The device agent: the daemon and its commands (docs/agent-cli.md).
    Agent(cmd::agent::Args),
    /// The update service: metadata over pinned HTTPS, content over HTTP, device and admin APIs (docs/api.md).
    Server(cmd::server::Args),
    /// Publishes an update to an update service, signing the targets metadata here (docs/api.md).
    Publish(cmd::publish::Args),
    /// The admin API of an update service: updates, devices, compliance, tokens.
    Admin(cmd::admin::Args),
    /// The whole system on this machine: service, sample updates of every kind, devices installing them.
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Tuf(args) => cmd::tuf::run(args),
        Command::Repo(command) => cmd::repo::run(command),
        Command::Pki(command) => cmd::pki::run(command),
        Command::Endpoints(args) => cmd::endpoints::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Server(args) => cmd::server::run(args),
        Command::Publish(args) => cmd::publish::run(args),
        Command::Admin(args) => cmd::admin::run(args),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            cmd::report(&err);
            ExitCode::from(cmd::EXIT_FAILURE)
        }
    }
}
