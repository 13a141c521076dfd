//! `custody tuf`: a low-level TUF client speaking the command-line protocol of the tuf-conformance suite
//! (CLIENT-CLI.md): `init`, `refresh` and `download`, exit code 0 on full success and 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use custody_client::{Fetcher, FileFetcher, HttpFetcher, RoleLimits, Updater, UpdaterConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Directory of trusted metadata.
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Base URL of the repository's metadata.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; processed in order).
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Directory to store downloaded targets in.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// More logging (same as --log debug).
    #[arg(short, long)]
    verbose: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Trust ROOT as the initial root (no network).
    Init { root: PathBuf },
    /// Update the top-level metadata.
    Refresh,
    /// Refresh, then download and verify each --target-name into --target-dir.
    Download,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Action::Init { root } = &args.action {
        let bytes = std::fs::read(root).with_context(|| format!("cannot read trusted root {}", root.display()))?;
        std::fs::create_dir_all(&args.metadata_dir)
            .with_context(|| format!("cannot create {}", args.metadata_dir.display()))?;
        custody_client::MetadataDir::new(&args.metadata_dir).persist("root", &bytes)?;
        return Ok(ExitCode::SUCCESS);
    }
    let metadata_url = args.metadata_url.clone().context("--metadata-url is required")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if metadata_url.starts_with("file://") {
        return runtime.block_on(update(&args, metadata_url, FileFetcher));
    }
    // The conformance suite serves plain HTTP on loopback; HTTPS needs a pinned configuration, which this low-level
    // client does not take, so it is refused rather than verified against any trust store.
    let client = custody_tls::plain_http_client(&custody_tls::ProxySettings::direct())
        .context("cannot build the HTTP client")?;
    runtime.block_on(update(&args, metadata_url, HttpFetcher::new(client, Duration::from_secs(60))))
}

/// Refreshes, then downloads every `--target-name` (for `download`).
async fn update(args: &Args, metadata_url: String, fetcher: impl Fetcher) -> anyhow::Result<ExitCode> {
    let config = UpdaterConfig {
        metadata_dir: args.metadata_dir.clone(),
        metadata_url,
        limits: RoleLimits::default(),
        snapshot_proofs: false,
    };
    let mut updater = Updater::new(config, fetcher, jiff::Timestamp::now())?;
    updater.refresh().await.context("refresh failed")?;
    if let Action::Download = args.action {
        let base = args.target_base_url.as_deref().context("--target-base-url is required")?;
        let dir = args.target_dir.as_deref().context("--target-dir is required")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for name in &args.target_names {
            let target = updater.target_info(name).await.with_context(|| format!("cannot resolve {name:?}"))?;
            let path = updater
                .fetch_target_into(&target, base, dir)
                .await
                .with_context(|| format!("cannot download {name:?}"))?;
            println!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
