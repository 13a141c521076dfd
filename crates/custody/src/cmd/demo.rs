//! `custody demo`: the whole system on one machine in one command.
//!
//! 1. A data directory (PKI, TUF repository, SQLite database, admin token) and the update service on free loopback
//!    ports, in this process (custody-server's `start`, as `custody server` does).
//! 2. One update of every kind (`os`, `app`, `driver`, `definitions`, `store-app`), built with custody-install's
//!    `PackageBuilder` (the OS update is a raw image), published by `custody publish` child processes that sign with
//!    the targets key the data directory keeps in `offline-keys/` (a real deployment keeps it offline).
//! 3. N devices, each with its own state directory under `DATA/devices/<name>`: each enrolls with `custody agent
//!    enroll` (a key made on the device, a client certificate from the device intermediate), then runs `custody agent scan` and `custody agent install` as child processes, which
//!    refresh the signed metadata, download from the content origin, verify, install and report.
//! 4. A summary of what each device did, and the compliance of every update as the admin API reports it.
//! 5. The service keeps running, with its addresses and commands to try, until SIGINT or SIGTERM (`--exit`: stop).
//!
//! App and driver updates link a destination path, which is one per machine; the devices of a demo share a machine,
//! so each device gets its own app and driver product (`demo-app-<device>`), while the OS image, definitions and
//! store app are one update each for every device.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use custody_api::admin::ComplianceReport;
use custody_catalog::ArchiveFormat;
use custody_install::PackageBuilder;
use custody_server::ServiceConfig;
use custody_tls::TransportConfig;
use serde::Serialize;
use serde_json::Value;

use super::Hint;

/// The file that marks a directory as a demo's (so that a later run may replace it).
const MARKER: &str = "custody-demo.toml";
/// The service configuration of the demo: loopback on free ports; devices enroll with certificates.
const SERVICE_CONFIG: &str = "[listen]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";
/// os-release of the demo devices, matched by the updates' applicability.
const OS_RELEASE: &str = "ID=custody-demo\nVERSION_ID=\"1.0\"\nNAME=\"custody demo device\"\n";
/// The hardware id every demo device reports and the driver update requires.
const HARDWARE_ID: &str = "usb:1d6b:0002";

#[derive(clap::Args)]
pub struct Args {
    /// The demo's directory: service data, packages, devices. A previous demo there is replaced.
    #[arg(long, value_name = "DIR", default_value = "custody-demo")]
    data: PathBuf,
    /// How many devices to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    devices: u32,
    /// Stop after the summary instead of keeping the service running.
    #[arg(long)]
    exit: bool,
    /// Print the summary as one JSON document on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
}

/// What one device did.
#[derive(Debug, Serialize)]
struct DeviceReport {
    name: String,
    device_id: String,
    needed: usize,
    /// `kind` of each installed update.
    installed: Vec<String>,
    failed: Vec<String>,
    /// The content length of the updates installed (each downloaded once and verified against its signed hashes).
    bytes_downloaded: u64,
    seconds: f64,
}

#[derive(Serialize)]
struct Summary {
    data: PathBuf,
    https_url: String,
    http_url: String,
    client_config: PathBuf,
    devices: Vec<DeviceReport>,
    compliance: ComplianceReport,
}

/// One sample update: its description (TOML) and package file.
struct Sample {
    kind: &'static str,
    package: PathBuf,
    description: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    prepare_dir(&args.data)?;
    let data = std::path::absolute(&args.data).with_context(|| format!("{}", args.data.display()))?;
    let config = ServiceConfig::from_toml(SERVICE_CONFIG).map_err(|detail| anyhow::anyhow!("{detail}"))?;
    let exe = std::env::current_exe().context("cannot find the custody executable to run devices")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = custody_server::start(&data, config)
            .await
            .with_context(|| format!("cannot start the service on {}", data.display()))?;
        let client_config = data.join("client/custody.toml");
        let result = demo(&args, &data, &exe, &running, &client_config).await;
        let code = match result {
            Ok(summary) if !args.exit => {
                print_running(&summary, &data, args.json)?;
                custody_server::shutdown_signal().await;
                eprintln!("stopping the service");
                ExitCode::SUCCESS
            }
            Ok(summary) => match summary.devices.iter().all(|d| d.failed.is_empty()) {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(super::EXIT_FAILURE),
            },
            Err(err) => {
                running.shutdown().await;
                return Err(err);
            }
        };
        running.shutdown().await;
        Ok(code)
    })
}

/// Refuses a non-empty directory that is not a demo's; removes a previous demo.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(anyhow::Error::new(err).context(format!("cannot read {}", dir.display()))),
    };
    if empty {
        return Ok(());
    }
    if !dir.join(MARKER).is_file() {
        return Err(anyhow::anyhow!("{} is not empty and not a previous demo ({MARKER} is missing)", dir.display())
            .context(Hint("give an empty or new directory with --data DIR".into())));
    }
    eprintln!("replacing the previous demo in {}", dir.display());
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove the previous demo in {}", dir.display()))
}

async fn demo(
    args: &Args,
    data: &Path,
    exe: &Path,
    running: &custody_server::Running,
    client_config: &Path,
) -> anyhow::Result<Summary> {
    std::fs::write(
        data.join(MARKER),
        "# created by `custody demo`; a later `custody demo` may replace this directory\n",
    )
    .with_context(|| format!("cannot write {}", data.join(MARKER).display()))?;
    eprintln!("custody demo in {}", data.display());
    eprintln!("  service: {} (metadata, device and admin APIs), {} (content)", running.https_url, running.http_url);

    let names: Vec<String> = (1..=args.devices).map(|i| format!("device-{i}")).collect();
    let samples = build_samples(data, &names)?;
    let targets_key = targets_key(data)?;
    let publisher = data.join("publisher");
    std::fs::create_dir_all(&publisher).with_context(|| format!("cannot create {}", publisher.display()))?;
    std::fs::copy(data.join("offline-keys/root.json"), publisher.join("root.json"))
        .context("cannot copy the trusted root for the publisher")?;
    eprintln!(
        "publishing {} updates, signed with the targets key {} \
         (a real deployment keeps offline-keys/ off the server)",
        samples.len(),
        targets_key.display()
    );
    for sample in &samples {
        let publish = [
            "publish".as_ref(),
            sample.package.as_os_str(),
            "--description".as_ref(),
            sample.description.as_os_str(),
            "--repo".as_ref(),
            publisher.as_os_str(),
            "--key".as_ref(),
            targets_key.as_os_str(),
            "--json".as_ref(),
        ];
        let published =
            output_json(custody(exe, data, publish), &format!("publishing the {} update", sample.kind)).await?;
        let target = published["added"].get(0).or(published["replaced"].get(0)).and_then(Value::as_str);
        eprintln!("  {:<12} {}", sample.kind, target.unwrap_or("published"));
    }

    let uses = args.devices.to_string();
    let create = ["admin", "enrollment-tokens", "create", "demo", "--uses", &uses, "--json"];
    let created = output_json(custody(exe, data, create), "creating an enrollment token").await?;
    let enrollment_token = created["token"].as_str().context("the enrollment token answer has no token")?.to_owned();

    let mut tasks = Vec::new();
    for name in &names {
        let device_dir = data.join("devices").join(name);
        std::fs::create_dir_all(&device_dir).with_context(|| format!("cannot create {}", device_dir.display()))?;
        write_agent_config(&device_dir, name, client_config, data)?;
        let device_id = enroll(exe, &device_dir, name, &enrollment_token).await?;
        let (exe, device_dir, name) = (exe.to_owned(), device_dir.clone(), name.clone());
        eprintln!("  {name}: enrolled as {device_id}; scanning and installing");
        tasks.push(tokio::task::spawn_blocking(move || run_device(&exe, &device_dir, &name, device_id)));
    }
    let mut devices = Vec::new();
    for task in tasks {
        devices.push(task.await.context("a device task failed")??);
    }

    let report = output_json(custody(exe, data, ["admin", "compliance", "--json"]), "reading compliance").await?;
    let compliance: ComplianceReport =
        serde_json::from_value(report).context("the compliance answer is not a compliance report")?;
    let summary = Summary {
        data: data.to_owned(),
        https_url: running.https_url.clone(),
        http_url: running.http_url.clone(),
        client_config: client_config.to_owned(),
        devices,
        compliance,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary)?;
    }
    Ok(summary)
}

/// `custody ARGS... --config DATA/client/custody.toml --token-file DATA/admin-token`: an admin or publish command
/// against the demo's service.
fn custody<S: AsRef<std::ffi::OsStr>>(exe: &Path, data: &Path, args: impl IntoIterator<Item = S>) -> Command {
    let mut command = Command::new(exe);
    command
        .args(args)
        .arg("--config")
        .arg(data.join("client/custody.toml"))
        .arg("--token-file")
        .arg(data.join("admin-token"))
        .env_remove("CUSTODY_TOKEN")
        .stdin(Stdio::null());
    command
}

/// Runs a child to completion (off the runtime's threads, the service answers it) and parses its stdout as JSON.
async fn output_json(mut command: Command, what: &str) -> anyhow::Result<Value> {
    let what = what.to_owned();
    tokio::task::spawn_blocking(move || {
        let output = command.output().with_context(|| format!("{what}: cannot run custody"))?;
        if !output.status.success() {
            bail!("{what} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        serde_json::from_slice(&output.stdout).with_context(|| format!("{what}: the output is not JSON"))
    })
    .await
    .context("a child process task failed")?
}

/// Builds the packages and descriptions under `DATA/packages`: one OS image, definitions and store app for every
/// device, and an app and a driver per device (their destinations are paths on this machine).
fn build_samples(data: &Path, devices: &[String]) -> anyhow::Result<Vec<Sample>> {
    let dir = data.join("packages");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let arch = std::env::consts::ARCH.parse::<custody_catalog::Arch>().ok().map(|a| a.to_string());
    let applicability = match &arch {
        Some(arch) => format!(
            "[applicability]\narch = [\"{arch}\"]\nos = {{ family = \"custody-demo\", version_range = {{ min = \"1.0\" }} }}\n"
        ),
        None => "[applicability]\nos = { family = \"custody-demo\", version_range = { min = \"1.0\" } }\n".into(),
    };
    let mut samples = Vec::new();
    let mut add = |kind: &'static str, product: &str, title: &str, extra: &str, installer: &str, content: Content| {
        let file = match content {
            Content::Image(_) => format!("{product}-1.0.img"),
            Content::Package(_) => format!("{product}-1.0.tar.zst"),
        };
        let package = dir.join(&file);
        match content {
            Content::Image(bytes) => {
                std::fs::write(&package, bytes).with_context(|| format!("cannot write {}", package.display()))?
            }
            Content::Package(builder) => {
                let out =
                    std::fs::File::create(&package).with_context(|| format!("cannot create {}", package.display()))?;
                builder.write(std::io::BufWriter::new(out), ArchiveFormat::TarZstd, 3)?;
            }
        }
        // A driver applies to devices that have its hardware.
        let applicability = match kind {
            "driver" => applicability
                .replace("[applicability]\n", &format!("[applicability]\nhardware_ids = [\"{HARDWARE_ID}\"]\n")),
            _ => applicability.clone(),
        };
        let mut random = [0u8; 16];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("no random bytes for an update id"))?;
        let id = uuid::Builder::from_random_bytes(random).into_uuid();
        let description = format!(
            "id = \"{id}\"\nrevision = 1\ntitle = \"{title}\"\ndescription = \"custody demo: {title}.\"\n\
             kind = \"{kind}\"\nproduct = \"{product}\"\nversion = \"1.0\"\nrelease_date = \"2026-01-15\"\n\
             {extra}\n{applicability}\n[installer]\n{installer}\n"
        );
        let description_file = dir.join(format!("{product}.toml"));
        std::fs::write(&description_file, description)
            .with_context(|| format!("cannot write {}", description_file.display()))?;
        samples.push(Sample { kind, package, description: description_file });
        anyhow::Ok(())
    };

    // A small OS image: a header and 1 MiB of patterned blocks, written to the device's inactive slot.
    let mut image = b"CUSTODY-DEMO-OS 1.0\n".to_vec();
    image.extend((0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    add(
        "os",
        "demo-os",
        "Demo OS 1.0",
        "classification = \"security\"\nseverity = \"critical\"\nreboot = \"required\"",
        "handler = \"os-image\"\nslot_layout = \"a-b\"\nformat = \"raw\"",
        Content::Image(image),
    )?;
    let mut definitions = PackageBuilder::new("demo-definitions", "1.0");
    definitions.file("signatures.db", 0o644, "# demo definitions set 1.0\nEICAR-Test-File\n".repeat(64));
    add(
        "definitions",
        "demo-definitions",
        "Demo definitions 1.0",
        "classification = \"definitions\"\nreboot = \"never\"",
        "handler = \"definitions\"\nkeep = 2",
        Content::Package(definitions),
    )?;
    let mut store_app = PackageBuilder::new("demo-store-app", "1.0");
    store_app.file("app.json", 0o644, "{\"name\": \"demo store app\", \"version\": \"1.0\"}\n");
    add(
        "store-app",
        "demo-store-app",
        "Demo store app 1.0",
        "classification = \"feature\"\nreboot = \"never\"",
        "handler = \"store-app\"",
        Content::Package(store_app),
    )?;
    for device in devices {
        let device_dir = data.join("devices").join(device);
        let mut app = PackageBuilder::new(&format!("demo-app-{device}"), "1.0");
        app.dir("bin", 0o755)
            .file("bin/demo-app", 0o755, "#!/bin/sh\necho custody demo app 1.0\n")
            .file("VERSION", 0o644, "1.0\n");
        let destination = device_dir.join("opt/demo-app");
        add(
            "app",
            &format!("demo-app-{device}"),
            &format!("Demo app 1.0 for {device}"),
            "classification = \"security\"\nseverity = \"important\"\nreboot = \"never\"",
            &format!(
                "handler = \"archive\"\nformat = \"tar-zstd\"\ndestination = {:?}",
                destination.display().to_string()
            ),
            Content::Package(app),
        )?;
        let mut driver = PackageBuilder::new(&format!("demo-driver-{device}"), "1.0");
        driver.file("demo-driver.ko", 0o644, vec![0x7f; 4096]);
        let destination = device_dir.join("lib/modules/demo-driver");
        add(
            "driver",
            &format!("demo-driver-{device}"),
            &format!("Demo USB driver 1.0 for {device}"),
            "classification = \"driver\"\nreboot = \"never\"",
            &format!(
                "handler = \"driver\"\nformat = \"tar-zstd\"\ndestination = {:?}\nreload_command = [\"/bin/true\"]",
                destination.display().to_string()
            ),
            Content::Package(driver),
        )?;
    }
    Ok(samples)
}

/// What a sample update carries: a raw image (`os`) or a package.
enum Content {
    Image(Vec<u8>),
    Package(PackageBuilder),
}

/// The targets key in `offline-keys/repo-keys/`, where `custody server` put it when it created the data directory.
fn targets_key(data: &Path) -> anyhow::Result<PathBuf> {
    let dir = data.join("offline-keys/repo-keys");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("cannot read {}", dir.display()))?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("targets.")) {
            return Ok(path);
        }
    }
    bail!("no targets key in {}", dir.display())
}

/// `custody agent enroll` on the device's configuration: a key made on the device, a certificate from the service's
/// device intermediate (the identity peers of the fleet accept each other by).
async fn enroll(exe: &Path, device_dir: &Path, name: &str, enrollment_token: &str) -> anyhow::Result<uuid::Uuid> {
    let mut command = Command::new(exe);
    command
        .args(["agent", "enroll", "--json", "--token-env", "CUSTODY_ENROLLMENT_TOKEN", "--hostname", name, "--config"])
        .arg(device_dir.join("agent.toml"))
        .env("CUSTODY_ENROLLMENT_TOKEN", enrollment_token);
    let enrolled = output_json(command, &format!("{name}: enrolling")).await?;
    let id = enrolled["result"]["device_id"].as_str().context("the enrollment answer has no device id")?;
    id.parse().with_context(|| format!("{name}: the enrollment answer's device id {id:?}"))
}

/// The device's configuration (docs/configuration.md, "Agent"): the service's client configuration with absolute
/// paths and the content origin, plus `[agent]` (state, identity, inventory) and `[policy]` (install automatically).
fn write_agent_config(device_dir: &Path, name: &str, client_config: &Path, data: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(client_config).with_context(|| format!("cannot read {}", client_config.display()))?;
    let pki = format!("\"{}/pki/", data.display());
    let transport = text.replace("\"../pki/", &pki).replacen(
        "[tls]\n",
        "[tls]\nclient_cert = \"device-chain.pem\"\nclient_key = \"device-key.pem\"\n",
        1,
    );
    std::fs::write(device_dir.join("os-release"), OS_RELEASE)?;
    let arch = match std::env::consts::ARCH.parse::<custody_catalog::Arch>() {
        Ok(arch) => format!("arch = \"{arch}\"\n"),
        Err(_) => String::new(),
    };
    let sources = TransportConfig::from_toml(&transport, device_dir)?.content.sources;
    let origin = sources.first().context("the client configuration lists no content source")?;
    let products = ["demo-os".to_owned(), "demo-definitions".into(), "demo-store-app".into()]
        .into_iter()
        .chain([format!("demo-app-{name}"), format!("demo-driver-{name}")])
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "# custody demo device {name} (docs/configuration.md, \"Agent\")\n{transport}\n\
         [proxy]\nfrom_environment = false\n\n\
         [agent]\nstate_dir = \"state\"\ntrusted_root = \"{root}\"\norigin_url = \"{origin}/\"\n\
         products = [{products}]\nos_release = \"os-release\"\n{arch}\
         hardware_ids = [\"{HARDWARE_ID}\"]\ntime_zone = \"UTC\"\n\n\
         [agent.local_api]\nsocket = \"agent.sock\"\n\n\
         [policy]\ndefault = \"auto\"\n",
        root = data.join("client/root.json").display(),
        origin = origin.trim_end_matches('/'),
    );
    let path = device_dir.join("agent.toml");
    std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
    custody_agent::AgentConfig::load(&path).with_context(|| format!("{name}: the generated configuration"))?;
    Ok(())
}

/// `custody agent scan`, then `custody agent install`, as child processes on the device's configuration.
fn run_device(exe: &Path, device_dir: &Path, name: &str, device_id: uuid::Uuid) -> anyhow::Result<DeviceReport> {
    let started = Instant::now();
    let agent = |command: &str| -> anyhow::Result<Value> {
        let output = Command::new(exe)
            .args(["agent", command, "--json", "--config"])
            .arg(device_dir.join("agent.toml"))
            .env_remove("CUSTODY_CONFIG")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{name}: cannot run custody agent {command}"))?;
        let answer: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!("{name}: custody agent {command} printed no JSON: {}", String::from_utf8_lossy(&output.stderr))
        })?;
        if let Some(error) = answer.get("error") {
            bail!("{name}: custody agent {command} failed: {}", error["message"].as_str().unwrap_or_default());
        }
        Ok(answer["result"].clone())
    };
    let scan = agent("scan")?;
    let needed = scan["needed"].as_array().map_or(0, Vec::len);
    let outcomes = agent("install")?;
    let mut report = DeviceReport {
        name: name.to_owned(),
        device_id: device_id.to_string(),
        needed,
        installed: Vec::new(),
        failed: Vec::new(),
        bytes_downloaded: 0,
        seconds: 0.0,
    };
    for outcome in outcomes.as_array().into_iter().flatten() {
        let kind = outcome["update"]["kind"].as_str().unwrap_or("?").to_owned();
        match outcome["result"].as_str() {
            Some("installed") => {
                report.bytes_downloaded += outcome["update"]["length"].as_u64().unwrap_or(0);
                report.installed.push(kind);
            }
            Some("failed") => {
                let detail = outcome["detail"].as_str().unwrap_or("failed");
                eprintln!("  {name}: {kind} update failed: {detail}");
                report.failed.push(kind);
            }
            _ => {}
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn print_summary(summary: &Summary) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "{:<12} {:>7} {:>10} {:>7} {:>11} {:>8}  kinds installed",
        "DEVICE", "NEEDED", "INSTALLED", "FAILED", "DOWNLOADED", "TIME"
    )?;
    for device in &summary.devices {
        writeln!(
            out,
            "{:<12} {:>7} {:>10} {:>7} {:>11} {:>7.1}s  {}",
            device.name,
            device.needed,
            device.installed.len(),
            device.failed.len(),
            bytes(device.bytes_downloaded),
            device.seconds,
            device.installed.join(", ")
        )?;
    }
    writeln!(out)?;
    writeln!(out, "compliance (admin API):")?;
    writeln!(
        out,
        "{:<34} {:<12} {:>8} {:>10} {:>15} {:>7}",
        "UPDATE", "KIND", "DEVICES", "INSTALLED", "PENDING-REBOOT", "FAILED"
    )?;
    for update in &summary.compliance.updates {
        let counts = &update.counts;
        writeln!(
            out,
            "{:<34} {:<12} {:>8} {:>10} {:>15} {:>7}",
            update.update.title,
            update.update.kind,
            counts.installed + counts.pending_reboot + counts.needed + counts.downloaded + counts.failed,
            counts.installed,
            counts.pending_reboot,
            counts.failed
        )?;
    }
    writeln!(
        out,
        "(an OS image is written to the inactive slot and counts as pending-reboot until the device reboots)"
    )?;
    Ok(())
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The addresses and what to try while the service runs: on stdout, or on stderr when stdout carries the JSON.
fn print_running(summary: &Summary, data: &Path, json: bool) -> std::io::Result<()> {
    let mut out: Box<dyn Write> = match json {
        true => Box::new(std::io::stderr().lock()),
        false => Box::new(std::io::stdout().lock()),
    };
    let config = summary.client_config.display();
    let token = data.join("admin-token");
    let first = summary.devices.first().map_or("device-1", |d| d.name.as_str());
    let agent = data.join("devices").join(first).join("agent.toml");
    writeln!(out)?;
    writeln!(out, "the service keeps running (Ctrl-C stops it):")?;
    writeln!(out, "  {:<40} metadata, device API, admin API, /metrics", summary.https_url)?;
    writeln!(out, "  {:<40} content, /pki", summary.http_url)?;
    writeln!(out, "try:")?;
    writeln!(out, "  custody admin devices --config {config} --token-file {}", token.display())?;
    writeln!(out, "  custody admin compliance --config {config} --token-file {}", token.display())?;
    writeln!(out, "  custody agent status --config {}", agent.display())?;
    writeln!(out, "  custody agent history --config {}", agent.display())?;
    writeln!(
        out,
        "the TUF root and targets keys are in {}: a real deployment keeps them offline",
        data.join("offline-keys").display()
    )?;
    out.flush()
}
