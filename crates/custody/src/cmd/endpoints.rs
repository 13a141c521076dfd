//! `custody endpoints`: the host names and ports a device or relay contacts, from its configuration file, for
//! firewall rules and for the pass-through list of a TLS-inspecting proxy (docs/configuration.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use custody_tls::{ProxySettings, TransportConfig};

#[derive(clap::Args)]
pub struct Args {
    /// The device or relay configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = TransportConfig::load(&args.config)?;
    // The proxy as the configured machine would pick it: the file, else this process's environment if allowed.
    let proxy = config.proxy_settings(ProxySettings::from_process_env)?;
    let endpoints =
        config.endpoints(&proxy).with_context(|| format!("invalid endpoint in {}", args.config.display()))?;
    if args.json {
        let output = custody_tls::config::EndpointList { endpoints: endpoints.clone() };
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = endpoints.iter().map(|e| e.host.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<5}  {:<6}  {:<17}  {:<7}  ROUTE", "HOST", "PORT", "SCHEME", "PURPOSE", "TLS");
    for endpoint in &endpoints {
        let tls = match (endpoint.scheme.as_str(), endpoint.pinned) {
            ("https", true) => "pinned",
            ("https", false) => "tls",
            _ => "none",
        };
        println!(
            "{:<width$}  {:<5}  {:<6}  {:<17}  {:<7}  {}",
            endpoint.host, endpoint.port, endpoint.scheme, endpoint.purpose, tls, endpoint.route
        );
    }
    if endpoints.iter().any(|e| e.pinned) {
        println!();
        println!("Pinned connections must reach the server untouched: a TLS-inspecting proxy must pass these host");
        println!("names through without inspection (an HTTP CONNECT tunnel is fine).");
    }
    Ok(ExitCode::SUCCESS)
}
