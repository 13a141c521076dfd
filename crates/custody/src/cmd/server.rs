//! `custody server`: runs the update service (docs/api.md) on a data directory, creating it when empty, until
//! SIGTERM or SIGINT.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use custody_server::ServiceConfig;

#[derive(clap::Args)]
pub struct Args {
    /// The data directory; created (PKI, repository, database) when it does not exist or is empty.
    #[arg(long, value_name = "DIR", env = "CUSTODY_DATA")]
    data: PathBuf,
    /// The configuration file (docs/configuration.md, "Service"); default DATA/server.toml if it exists, else the
    /// built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config_file = args.config.clone().or_else(|| Some(args.data.join("server.toml")).filter(|p| p.exists()));
    let config = match &config_file {
        Some(path) => ServiceConfig::load(path)?,
        None => ServiceConfig::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = custody_server::start(&args.data, config)
            .await
            .with_context(|| format!("cannot start the service on {}", args.data.display()))?;
        let data = running.data.root().display().to_string();
        let mut out = std::io::stdout().lock();
        writeln!(out, "custody server: data directory {data}")?;
        if let Some(path) = &config_file {
            writeln!(out, "  configuration   {}", path.display())?;
        }
        writeln!(out, "  {:<40} metadata, device API, admin API, /metrics", running.https_url)?;
        writeln!(out, "  {:<40} content, /pki", running.http_url)?;
        writeln!(out, "  client configuration: {data}/client/custody.toml")?;
        if let Some(created) = &running.created {
            writeln!(
                out,
                "created a new data directory; server certificate names: {}",
                created.server_names.join(", ")
            )?;
            writeln!(out, "  pin of the service intermediate: {}", created.service_pin)?;
            writeln!(out, "  THE ROOT AND TARGETS KEYS ARE IN {data}/offline-keys: MOVE THEM OFF THIS MACHINE")?;
            writeln!(out, "  (read {data}/offline-keys/README.txt)")?;
        }
        if let Some(token) = &running.admin_token_file {
            writeln!(out, "first admin token (scope write): {}", token.display())?;
        }
        out.flush()?;
        drop(out);
        custody_server::shutdown_signal().await;
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
