//! `custody agent`: the device agent's daemon (`run`) and its commands (docs/agent-cli.md).
//!
//! Every command except `run` talks to the running daemon over its local socket when one answers there, and acts
//! directly on the state directory otherwise (then it takes the state lock, so it never acts beside a daemon).
//! `--json` prints one JSON document of schema 1 (docs/agent-cli.md); exit codes: 0 done, 1 failed, 2 usage,
//! 3 nothing to do (no update needed, nothing installed or downloaded), 4 done and a reboot is pending.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use custody_agent::agent::{AgentEvent, Selection};
use custody_agent::local_api::{HoldTarget, LocalClient, Op};
use custody_agent::{Agent, AgentConfig};
use custody_catalog::{ProductName, UpdateId};
use serde_json::{Value, json};

/// Version of the `--json` output (docs/agent-cli.md).
pub const JSON_SCHEMA: u64 = 1;
/// Nothing to do: no update needed, nothing downloaded or installed.
pub const EXIT_NOTHING_TO_DO: u8 = 3;
/// Done, and a reboot is needed for an installed update to take effect.
pub const EXIT_REBOOT_PENDING: u8 = 4;

#[derive(clap::Args)]
pub struct Args {
    /// The device configuration file.
    #[arg(long, global = true, value_name = "FILE", env = "CUSTODY_CONFIG", default_value = "/etc/custody/agent.toml")]
    config: PathBuf,
    /// Print one JSON document (schema 1, docs/agent-cli.md) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the daemon: schedule, local API, recovery at start (SIGTERM/SIGINT stop it gracefully).
    Run,
    /// Enroll this device with an enrollment token: a client certificate (written to `[tls] client_cert` and
    /// `client_key`) or, with `--identity token`, a device token (written to `[agent] device_token_file`).
    Enroll {
        /// A file holding the enrollment token (`custody admin enrollment-tokens create`).
        #[arg(long, value_name = "FILE", required_unless_present = "token_env")]
        token_file: Option<PathBuf>,
        /// An environment variable holding the enrollment token.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        #[arg(long, value_enum, default_value = "certificate")]
        identity: IdentityArg,
        /// The host name the service shows (default: this machine's).
        #[arg(long)]
        hostname: Option<String>,
        /// Enroll again, replacing an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// Refresh signed metadata and list the updates this device needs.
    Scan {
        /// Scan one product only.
        #[arg(long)]
        product: Option<ProductName>,
    },
    /// The needed updates found by the last scan.
    List {
        /// Also the updates not needed, with the reason, and refused catalog entries.
        #[arg(long)]
        all: bool,
    },
    /// Download and verify needed updates (all, one update, or one product's).
    Download {
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// Download, verify and install needed updates now (holds still apply).
    Install {
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// Last scan, next scan, pending reboot, last error.
    Status,
    /// What was installed, rolled back or recovered.
    History {
        #[arg(long)]
        product: Option<ProductName>,
    },
    /// Go back to the previous version of a product.
    Rollback { product: ProductName },
    /// Hold an update or a product: it is neither downloaded nor installed until released.
    Hold {
        #[command(flatten)]
        target: HoldArgs,
    },
    /// Release a hold.
    Unhold {
        #[command(flatten)]
        target: HoldArgs,
    },
    /// Remove a product: its destination link and every kept version (not the OS).
    Uninstall { product: ProductName },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IdentityArg {
    /// A client certificate from the service's device intermediate (needed for peer-to-peer delivery).
    Certificate,
    /// A bearer token.
    Token,
}

#[derive(clap::Args)]
#[group(multiple = false)]
struct SelectionArgs {
    /// One update (its id).
    #[arg(long)]
    update: Option<UpdateId>,
    /// The needed updates of one product.
    #[arg(long)]
    product: Option<ProductName>,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct HoldArgs {
    #[arg(long)]
    update: Option<UpdateId>,
    #[arg(long)]
    product: Option<ProductName>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<ExitCode> {
    let config = AgentConfig::load(&args.config)?;
    let (name, op) = match args.command {
        Command::Run => return run_daemon(config).await,
        Command::Enroll { token_file, token_env, identity, hostname, force } => {
            return enroll(&config, token_file, token_env, identity, hostname, force, args.json).await;
        }
        Command::Scan { product } => ("scan", Op::Scan { product }),
        Command::List { all } => ("list", Op::List { all }),
        Command::Download { selection } => ("download", Op::Download { selection: selection.into() }),
        Command::Install { selection } => ("install", Op::Install { selection: selection.into() }),
        Command::Status => ("status", Op::Status),
        Command::History { product } => ("history", Op::History { product }),
        Command::Rollback { product } => ("rollback", Op::Rollback { product }),
        Command::Hold { target } => ("hold", Op::Hold { target: target.into() }),
        Command::Unhold { target } => ("unhold", Op::Unhold { target: target.into() }),
        Command::Uninstall { product } => ("uninstall", Op::Uninstall { product }),
    };
    let progress = Progress::new(!args.json && std::io::stderr().is_terminal());
    let result = match LocalClient::connect(&config.agent.local_api.socket).await? {
        Some(client) => through_daemon(client, &op, &progress).await,
        None => directly(config, &op, &progress).await,
    };
    progress.finish();
    let result = match result {
        Ok(result) => result,
        Err(err) if args.json => {
            let error = json!({ "code": err.code(), "message": error_text(&err) });
            println!("{}", json!({ "schema": JSON_SCHEMA, "command": name, "error": error }));
            return Ok(ExitCode::from(crate::cmd::EXIT_FAILURE));
        }
        Err(err) => return Err(anyhow::Error::new(err).context(format!("custody agent {name} failed"))),
    };
    let code = exit_code(&op, &result);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "schema": JSON_SCHEMA, "command": name, "result": result }))?
        );
    } else {
        print_text(&op, &result);
    }
    Ok(ExitCode::from(code))
}

/// `custody agent enroll`.
async fn enroll(
    config: &AgentConfig,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    identity: IdentityArg,
    hostname: Option<String>,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let token = match (token_file, token_env) {
        (Some(file), _) => std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the enrollment token from {}", file.display()))?,
        (None, Some(var)) => std::env::var(&var).with_context(|| format!("environment variable {var} is not set"))?,
        (None, None) => anyhow::bail!("give --token-file or --token-env"),
    };
    let hostname = match hostname {
        Some(name) => name,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .context("cannot read this machine's host name; give --hostname")?,
    };
    let identity = match identity {
        IdentityArg::Certificate => custody_agent::enroll::Identity::Certificate,
        IdentityArg::Token => custody_agent::enroll::Identity::Token,
    };
    let enrolled = custody_agent::enroll::enroll(config, token.trim(), &hostname, identity, force)
        .await
        .context("custody agent enroll failed")?;
    let files: Vec<String> = enrolled.files.iter().map(|f| f.display().to_string()).collect();
    if json {
        let result = json!({ "device_id": enrolled.device_id, "files": files, "not_after": enrolled.not_after });
        println!("{}", json!({ "schema": JSON_SCHEMA, "command": "enroll", "result": result }));
    } else {
        println!("enrolled as device {}", enrolled.device_id);
        for file in &files {
            println!("  wrote {file}");
        }
        if let Some(not_after) = enrolled.not_after {
            println!("  certificate valid until {not_after}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon, in the foreground.
async fn run_daemon(config: AgentConfig) -> anyhow::Result<ExitCode> {
    let state = custody_agent::state::StateDir::new(&config.agent.state_dir);
    state.create()?;
    let _lock = state.try_lock()?.ok_or_else(|| custody_agent::Error::Busy(state.root().to_owned()))?;
    let agent = Arc::new(Agent::open(config)?);
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    custody_agent::daemon::run(agent, shutdown).await.context("the agent daemon stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// Sends the op to the daemon; progress events arrive on the same connection.
async fn through_daemon(mut client: LocalClient, op: &Op, progress: &Progress) -> Result<Value, custody_agent::Error> {
    let mut on_event = |event: Value| progress.event_json(&event);
    if matches!(op, Op::Download { .. } | Op::Install { .. } | Op::Scan { .. }) && progress.enabled() {
        client.call(&Op::Subscribe, &mut on_event).await?;
    }
    client.call(op, &mut on_event).await
}

/// Acts on the state directory without a daemon.
async fn directly(config: AgentConfig, op: &Op, progress: &Progress) -> Result<Value, custody_agent::Error> {
    let state = custody_agent::state::StateDir::new(&config.agent.state_dir);
    state.create()?;
    let _lock = state.try_lock()?.ok_or_else(|| custody_agent::Error::Busy(state.root().to_owned()))?;
    let agent = Agent::open(config)?;
    agent.recover().await?;
    let mut events = agent.subscribe();
    let work = agent.handle(op.clone());
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            Ok(event) = events.recv() => progress.event(&event),
        }
    }
}

/// The exit code of a successful answer (docs/agent-cli.md, "Exit codes").
fn exit_code(op: &Op, result: &Value) -> u8 {
    let outcomes = || result.as_array().cloned().unwrap_or_default();
    let count = |name: &str| outcomes().iter().filter(|o| o["result"] == name).count();
    match op {
        Op::Scan { .. } | Op::List { .. } => match result["needed"].as_array().is_some_and(|n| !n.is_empty()) {
            true => 0,
            false => EXIT_NOTHING_TO_DO,
        },
        Op::Install { .. } | Op::Download { .. } if count("failed") > 0 => crate::cmd::EXIT_FAILURE,
        Op::Install { .. } if outcomes().iter().any(|o| o["reboot_required"] == true) => EXIT_REBOOT_PENDING,
        Op::Install { .. } if count("installed") == 0 => EXIT_NOTHING_TO_DO,
        Op::Download { .. } if count("downloaded") == 0 => EXIT_NOTHING_TO_DO,
        Op::Status if result["reboot_pending"].as_array().is_some_and(|r| !r.is_empty()) => EXIT_REBOOT_PENDING,
        _ => 0,
    }
}

fn print_text(op: &Op, result: &Value) {
    let update_line = |u: &Value| {
        format!(
            "{}  {} {}  {}  ({}, {}, {} bytes)",
            u["id"].as_str().unwrap_or("?"),
            u["product"].as_str().unwrap_or("?"),
            u["version"].as_str().unwrap_or("?"),
            u["title"].as_str().unwrap_or(""),
            u["kind"].as_str().unwrap_or("?"),
            u["classification"].as_str().unwrap_or("?"),
            u["length"],
        )
    };
    match op {
        Op::Scan { .. } | Op::List { .. } => {
            let needed = result["needed"].as_array().cloned().unwrap_or_default();
            match needed.is_empty() {
                true => println!("No updates needed."),
                false => println!("{} update(s) needed:", needed.len()),
            }
            for update in &needed {
                println!("  {}", update_line(update));
            }
            for skipped in result["skipped"].as_array().into_iter().flatten() {
                let detail = skipped["detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default();
                println!(
                    "  not needed: {} {} ({}{detail})",
                    skipped["id"].as_str().unwrap_or("?"),
                    skipped["title"].as_str().unwrap_or(""),
                    skipped["reason"].as_str().unwrap_or("?")
                );
            }
            for rejected in result["rejected"].as_array().into_iter().flatten() {
                println!(
                    "  refused: {}: {}",
                    rejected["path"].as_str().unwrap_or("?"),
                    rejected["problem"].as_str().unwrap_or("?")
                );
            }
        }
        Op::Download { .. } | Op::Install { .. } => {
            let outcomes = result.as_array().cloned().unwrap_or_default();
            if outcomes.is_empty() {
                println!("Nothing to do: no needed update matches.");
            }
            for outcome in outcomes {
                let detail = outcome["detail"].as_str().map(|d| format!(": {d}")).unwrap_or_default();
                let reboot = if outcome["reboot_required"] == true { " (reboot required)" } else { "" };
                println!(
                    "{}{reboot}{detail}  {}",
                    outcome["result"].as_str().unwrap_or("?"),
                    update_line(&outcome["update"])
                );
            }
        }
        Op::Status => {
            let scan = &result["last_scan"];
            match scan.is_null() {
                true => println!("Last scan: never"),
                false => println!(
                    "Last scan: {} ({} needed)",
                    scan["time"].as_str().unwrap_or("?"),
                    scan["needed"].as_array().map_or(0, Vec::len)
                ),
            }
            if let Some(next) = result["next_scan"].as_str() {
                println!("Next scan: {next}");
            }
            if let Some(window) = result["next_window"].as_str() {
                println!("Installs wait for the maintenance window opening at {window}");
            }
            for update in result["reboot_pending"].as_array().into_iter().flatten() {
                println!("Reboot pending for: {}", update_line(update));
            }
            if let Some(error) = result["last_error"].as_str() {
                println!("Last error: {error}");
            }
            let recovery = &result["last_recovery"];
            if !recovery.is_null() {
                println!(
                    "Last recovery: an interrupted {} of {} {} was {}; in use: {}",
                    recovery["operation"].as_str().unwrap_or("?"),
                    recovery["product"].as_str().unwrap_or("?"),
                    recovery["version"].as_str().unwrap_or("?"),
                    recovery["outcome"]["outcome"].as_str().unwrap_or("?"),
                    recovery["current"].as_str().unwrap_or("nothing"),
                );
            }
            let delivery = &result["delivery"];
            if delivery["downloads"].as_u64().is_some_and(|n| n > 0) {
                println!(
                    "Downloads: {}, {} (peering {:.1} %)",
                    delivery["downloads"],
                    sources(&delivery["bytes"]),
                    delivery["percent_peer_caching"].as_f64().unwrap_or(0.0)
                );
            }
            for download in result["last_downloads"].as_array().into_iter().flatten() {
                println!(
                    "  {}  {} {}  {} (peering {:.1} %)",
                    download["time"].as_str().unwrap_or("?"),
                    download["product"].as_str().unwrap_or("?"),
                    download["version"].as_str().unwrap_or("?"),
                    sources(&download["delivery"]),
                    download["percent_peer_caching"].as_f64().unwrap_or(0.0)
                );
            }
            let cache = &result["cache_server"];
            if cache.is_object() {
                let n = |key: &str| cache[key].as_u64().unwrap_or(0);
                let list = |key: &str| {
                    let items: Vec<&str> =
                        cache[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
                };
                println!(
                    "Cache server for {}: {} signed targets indexed (refreshed {}); fetching {}",
                    list("products"),
                    n("indexed"),
                    cache["index_refreshed"].as_str().unwrap_or("never"),
                    list("fetching")
                );
                println!(
                    "  fetches {} started, {} completed, {} failed; {} refused; {} bytes over HTTP, {} served",
                    n("fetches_started"),
                    n("fetches_completed"),
                    n("fetches_failed"),
                    n("refused"),
                    n("bytes_from_http"),
                    n("bytes_served")
                );
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(result).unwrap_or_default()),
    }
}

/// Delivery statistics on one line: bytes by source, and uploaded.
fn sources(bytes: &Value) -> String {
    let n = |key: &str| bytes[key].as_u64().unwrap_or(0);
    format!(
        "{} bytes over HTTP, {} from the cache server, {} from LAN peers, {} from group peers, {} from internet \
         peers, {} uploaded to peers",
        n("from_http"),
        n("from_cache_server"),
        n("from_lan_peers"),
        n("from_group_peers"),
        n("from_internet_peers"),
        n("to_peers")
    )
}

fn error_text(err: &custody_agent::Error) -> String {
    let mut text = err.to_string();
    let mut next = std::error::Error::source(err);
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

impl From<SelectionArgs> for Selection {
    fn from(args: SelectionArgs) -> Self {
        match (args.update, args.product) {
            (Some(id), _) => Selection::Update(id),
            (None, Some(product)) => Selection::Product(product),
            (None, None) => Selection::All,
        }
    }
}

impl From<HoldArgs> for HoldTarget {
    fn from(args: HoldArgs) -> Self {
        match (args.update, args.product) {
            (Some(id), _) => HoldTarget::Update(id),
            // clap's group makes exactly one of them present.
            (None, Some(product)) => HoldTarget::Product(product),
            (None, None) => unreachable!("clap requires --update or --product"),
        }
    }
}

/// Download progress on a terminal (stderr), one bar per update.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        let bar = enabled.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            let style =
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        Self { bar }
    }

    fn enabled(&self) -> bool {
        self.bar.is_some()
    }

    fn event(&self, event: &AgentEvent) {
        if let Ok(value) = serde_json::to_value(event) {
            self.event_json(&value);
        }
    }

    fn event_json(&self, event: &Value) {
        let Some(bar) = &self.bar else { return };
        match event["event"].as_str() {
            Some("download-progress") => {
                bar.set_message(event["product"].as_str().unwrap_or("").to_owned());
                bar.set_length(event["total"].as_u64().unwrap_or(0));
                bar.set_position(event["received"].as_u64().unwrap_or(0));
            }
            Some("installing") => bar.set_message(format!("installing {}", event["product"].as_str().unwrap_or(""))),
            Some("scan-started") => bar.set_message("scanning"),
            _ => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
