//! `custody admin`: the admin API of an update service (docs/api.md) over the pinned HTTPS client of custody-tls:
//! updates, devices, compliance, tokens. Every listing takes `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use custody_api::admin::{
    ComplianceReport, CreateEnrollmentToken, CreateToken, CreatedEnrollmentToken, CreatedToken, DeliveryReport,
    DeviceDetail, DeviceList, DeviceRevoked, EnrollmentTokenList, RevokeDevice, Scope, ServiceStatus, StagedList,
    TokenInfo, TokenList, UpdateComplianceDetail, UpdateDetail, UpdateList,
};
use custody_api::{ErrorBody, routes};
use custody_tls::{ProxySettings, TransportConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Hint;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// Transport configuration (docs/configuration.md): the [admin] URL (else [service]) and the pinned [tls]
    /// section; `custody server` writes one to DATA/client/custody.toml.
    #[arg(long, value_name = "FILE", env = "CUSTODY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Base URL of the service, instead of the configuration's.
    #[arg(long, value_name = "URL", global = true)]
    server: Option<String>,
    /// Admin token (prefer CUSTODY_TOKEN or --token-file: a command line is visible to other users).
    #[arg(long, env = "CUSTODY_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the admin token (for example DATA/admin-token).
    #[arg(long, value_name = "FILE", global = true)]
    token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The updates of the catalog.
    Updates {
        /// Show one update with its catalog entry.
        id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Enrolled devices; `devices revoke ID` revokes one.
    #[command(args_conflicts_with_subcommands = true)]
    Devices {
        #[command(subcommand)]
        action: Option<DeviceCommand>,
        /// Show one device with its inventory and latest events.
        id: Option<String>,
        /// Devices per page (1 to 1000); every page is fetched.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Compliance of every update, or of one update device by device.
    Compliance {
        /// One update: its devices and their states.
        update: Option<String>,
        /// With an update: only devices in this state (installed, pending-reboot, needed, downloaded, failed,
        /// not-applicable).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Admin tokens.
    #[command(subcommand)]
    Tokens(TokenCommand),
    /// Enrollment tokens (what a device presents to enroll).
    #[command(subcommand, name = "enrollment-tokens")]
    EnrollmentTokens(EnrollmentCommand),
    /// Roles waiting for more signatures.
    Staged {
        #[arg(long)]
        json: bool,
    },
    /// Versions and expiry of the published metadata.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Where devices' downloads came from, per device group: bytes by source and peering efficiency.
    Delivery {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
enum DeviceCommand {
    /// Revokes a device: the service refuses it from now on, it is nobody's peer, and its certificate goes on the
    /// device CRL (the HTTPS listener reloads it; devices fetch it from /pki/device-crl.pem). Repeating it is harmless.
    Revoke {
        /// The device's id (`custody admin devices` lists them).
        id: String,
        /// The CRL's reason.
        #[arg(long, default_value = "unspecified", value_parser = RevokeDevice::REASONS)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
enum TokenCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Creates a token and prints it (the only time it is shown).
    Create {
        name: String,
        #[arg(long, value_parser = ["read", "write"])]
        scope: String,
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Subcommand)]
enum EnrollmentCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Creates an enrollment token and prints it (the only time it is shown).
    Create {
        name: String,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Validity in hours (default one week).
        #[arg(long)]
        hours: Option<u32>,
        /// The device group enrolled devices join.
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Revoke {
        id: String,
    },
}

/// A client of the admin API.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Connection {
    /// The pinned client for the configured service.
    pub fn client(&self) -> anyhow::Result<AdminClient> {
        let file = self.config.as_ref().ok_or_else(|| {
            anyhow::anyhow!("no configuration file")
                .context(Hint("give --config FILE (custody server writes DATA/client/custody.toml)".into()))
        })?;
        let config = TransportConfig::load(file)?;
        let base = match &self.server {
            Some(url) => url.clone(),
            None => config.admin.as_ref().map_or_else(|| config.service.url.clone(), |admin| admin.url.clone()),
        };
        let proxy = config.proxy_settings(ProxySettings::from_process_env)?;
        let http = config
            .tls_client()
            .with_context(|| format!("the [tls] section of {}", file.display()))?
            .http_client(&proxy)?;
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(anyhow::anyhow!("no admin token")
                    .context(Hint("give --token-file FILE or set CUSTODY_TOKEN".into())));
            }
        };
        Ok(AdminClient { http, base: base.trim_end_matches('/').to_owned(), token })
    }
}

impl AdminClient {
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.request(reqwest::Method::GET, path).send().await.map_err(connection_error)?;
        decode(response).await.map(|(_, body)| body)
    }

    /// Sends a JSON body; returns the status and the decoded answer.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<(reqwest::StatusCode, T)> {
        let response = self
            .request(method, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await
            .map_err(connection_error)?;
        decode(response).await
    }
}

/// Decodes a success, or turns an error body into an error naming the status, the code and the field.
pub async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> anyhow::Result<(reqwest::StatusCode, T)> {
    let status = response.status();
    let url = response.url().path().to_owned();
    let bytes = response.bytes().await.map_err(connection_error)?;
    if status.is_success() {
        let body = serde_json::from_slice(&bytes).with_context(|| format!("unexpected answer from {url}"))?;
        return Ok((status, body));
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(error) => {
            let field = error.field.map(|f| format!(" (field {f})")).unwrap_or_default();
            let code = serde_json::to_value(error.error).ok().and_then(|v| v.as_str().map(str::to_owned));
            bail!("{url}: HTTP {} {}: {}{field}", status.as_u16(), code.unwrap_or_default(), error.message)
        }
        Err(_) => bail!("{url}: HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(&bytes).trim()),
    }
}

/// A connection error, with custody-tls's explanation when the pinned verifier refused the server.
pub fn connection_error(err: reqwest::Error) -> anyhow::Error {
    match custody_tls::Error::from_reqwest(&err) {
        Some(refusal) => anyhow::anyhow!("{refusal}"),
        None => anyhow::Error::new(err),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.connection.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(command(&client, args.command))?;
    Ok(ExitCode::SUCCESS)
}

async fn command(client: &AdminClient, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Updates { id: Some(id), json } => {
            let detail: UpdateDetail = client.get(&routes::admin_update(&id)).await?;
            if json {
                return print_json(&detail);
            }
            let u = &detail.update;
            println!("{} revision {}: {}", u.id, u.revision, u.title);
            println!("  product {} version {}, {} / {}", u.product, u.version, u.kind, u.classification);
            println!("  target {} in role {} ({} bytes, sha256 {})", u.path, u.role, u.length, u.sha256);
            println!("{}", serde_json::to_string_pretty(&detail.entry)?);
        }
        Command::Updates { id: None, json } => {
            let list: UpdateList = client.get(routes::ADMIN_UPDATES).await?;
            if json {
                return print_json(&list);
            }
            let rows = list.updates.iter().map(|u| {
                vec![
                    u.id.to_string(),
                    u.revision.to_string(),
                    u.product.clone(),
                    u.version.clone(),
                    u.classification.clone(),
                    u.release_date.clone(),
                    u.title.clone(),
                ]
            });
            table(&["ID", "REV", "PRODUCT", "VERSION", "CLASS", "RELEASED", "TITLE"], rows);
        }
        Command::Devices { action: Some(DeviceCommand::Revoke { id, reason, json }), .. } => {
            let request = RevokeDevice { reason: Some(reason) };
            let (_, revoked): (_, DeviceRevoked) =
                client.send(reqwest::Method::POST, &routes::admin_device_revoke(&id), &request).await?;
            if json {
                return print_json(&revoked);
            }
            let at = revoked.device.revoked_at.map(|at| at.to_string()).unwrap_or_default();
            println!("revoked device {} ({}) at {at}", revoked.device.id, revoked.device.hostname);
            match &revoked.certificate {
                Some(certificate) if certificate.on_crl => {
                    println!("certificate {} is on the device CRL", certificate.serial)
                }
                Some(certificate) => println!(
                    "certificate {} is not in the CA index (issued by an earlier version): the service refuses it, \
                     but it is not on the device CRL",
                    certificate.serial
                ),
                None => println!("the device had a token identity; it stopped working"),
            }
        }
        Command::Devices { id: Some(id), json, .. } => {
            let detail: DeviceDetail = client.get(&routes::admin_device(&id)).await?;
            if json {
                return print_json(&detail);
            }
            let d = &detail.device;
            println!(
                "{} {} ({:?}), enrolled {}, last seen {}",
                d.id, d.hostname, d.identity, d.enrolled_at, d.last_seen
            );
            if let Some(inventory) = &detail.inventory {
                println!(
                    "  {} {} {}",
                    inventory.os_family,
                    inventory.os_version.as_deref().unwrap_or("-"),
                    inventory.arch
                );
            }
            for stored in &detail.events {
                let e = &stored.event;
                let subject = match (&e.update, &e.product) {
                    (Some(update), _) => format!(" {} rev {}", update.id, update.revision),
                    (None, Some(product)) => format!(" {product}"),
                    (None, None) => String::new(),
                };
                let versions = match (&e.from, &e.to) {
                    (Some(from), Some(to)) => format!(" {from} -> {to}"),
                    (Some(from), None) => format!(" {from}"),
                    _ => String::new(),
                };
                println!("  {} {}{subject}{versions}", e.time, e.kind.as_str());
            }
        }
        Command::Devices { action: None, id: None, limit, json } => {
            let mut devices = Vec::new();
            let mut after: Option<uuid::Uuid> = None;
            loop {
                let mut path = format!("{}?limit={limit}", routes::ADMIN_DEVICES);
                if let Some(after) = after {
                    path.push_str(&format!("&after={after}"));
                }
                let page: DeviceList = client.get(&path).await?;
                devices.extend(page.devices);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if json {
                return print_json(&DeviceList { devices, next: None });
            }
            let rows = devices.iter().map(|d| {
                vec![
                    d.id.to_string(),
                    d.hostname.clone(),
                    format!("{:?}", d.identity).to_lowercase(),
                    d.group.clone().unwrap_or_default(),
                    d.last_seen.to_string(),
                ]
            });
            table(&["ID", "HOSTNAME", "IDENTITY", "GROUP", "LAST SEEN"], rows);
        }
        Command::Compliance { update: Some(update), state, json } => {
            let mut path = routes::admin_update_compliance(&update);
            if let Some(state) = &state {
                path.push_str(&format!("?state={state}"));
            }
            let detail: UpdateComplianceDetail = client.get(&path).await?;
            if json {
                return print_json(&detail);
            }
            println!("{} revision {}: {}", detail.update.id, detail.update.revision, detail.update.title);
            print_counts(&detail.counts);
            let rows = detail.devices.iter().map(|d| {
                vec![
                    d.device_id.to_string(),
                    d.state.as_str().to_owned(),
                    d.revision.to_string(),
                    d.code.map(|c| c.to_string()).unwrap_or_default(),
                    d.time.to_string(),
                ]
            });
            table(&["DEVICE", "STATE", "REV", "CODE", "SINCE"], rows);
        }
        Command::Compliance { update: None, state, json } => {
            if state.is_some() {
                bail!("--state needs an update id");
            }
            let report: ComplianceReport = client.get(routes::ADMIN_COMPLIANCE).await?;
            if json {
                return print_json(&report);
            }
            let rows = report.updates.iter().map(|u| {
                let c = &u.counts;
                vec![
                    u.update.id.to_string(),
                    u.update.title.clone(),
                    c.installed.to_string(),
                    c.pending_reboot.to_string(),
                    c.needed.to_string(),
                    c.downloaded.to_string(),
                    c.failed.to_string(),
                    c.not_applicable.to_string(),
                    c.unknown.to_string(),
                ]
            });
            table(
                &["UPDATE", "TITLE", "INSTALLED", "REBOOT", "NEEDED", "DOWNLOADED", "FAILED", "N/A", "UNKNOWN"],
                rows,
            );
        }
        Command::Tokens(TokenCommand::List { json }) => {
            let list: TokenList = client.get(routes::ADMIN_TOKENS).await?;
            if json {
                return print_json(&list);
            }
            let rows = list.tokens.iter().map(|t| {
                vec![
                    t.id.to_string(),
                    t.name.clone(),
                    t.scope.as_str().to_owned(),
                    t.created_at.to_string(),
                    t.revoked_at.map(|r| format!("revoked {r}")).unwrap_or_else(|| "active".into()),
                ]
            });
            table(&["ID", "NAME", "SCOPE", "CREATED", "STATE"], rows);
        }
        Command::Tokens(TokenCommand::Create { name, scope, json }) => {
            let scope: Scope = scope.parse()?;
            let (_, created): (_, CreatedToken) =
                client.send(reqwest::Method::POST, routes::ADMIN_TOKENS, &CreateToken { name, scope }).await?;
            if json {
                return print_json(&created);
            }
            println!("{}", created.token);
            eprintln!(
                "token {} ({}, scope {}): shown only now; store it safely",
                created.info.id,
                created.info.name,
                scope.as_str()
            );
        }
        Command::Tokens(TokenCommand::Revoke { id, json }) => {
            let response = client.request(reqwest::Method::DELETE, &routes::admin_token(&id)).send().await;
            let (_, info): (_, TokenInfo) = decode(response.map_err(connection_error)?).await?;
            if json {
                return print_json(&info);
            }
            println!("revoked token {} ({})", info.id, info.name);
        }
        Command::EnrollmentTokens(EnrollmentCommand::List { json }) => {
            let list: EnrollmentTokenList = client.get(routes::ADMIN_ENROLLMENT_TOKENS).await?;
            if json {
                return print_json(&list);
            }
            let rows = list.enrollment_tokens.iter().map(|t| {
                vec![
                    t.id.to_string(),
                    t.name.clone(),
                    format!("{}/{}", t.uses_left, t.uses),
                    t.group.clone().unwrap_or_default(),
                    t.expires_at.to_string(),
                ]
            });
            table(&["ID", "NAME", "USES LEFT", "GROUP", "EXPIRES"], rows);
        }
        Command::EnrollmentTokens(EnrollmentCommand::Create { name, uses, hours, group, json }) => {
            let request = CreateEnrollmentToken { name, group, uses, expires_in_hours: hours };
            let (_, created): (_, CreatedEnrollmentToken) =
                client.send(reqwest::Method::POST, routes::ADMIN_ENROLLMENT_TOKENS, &request).await?;
            if json {
                return print_json(&created);
            }
            println!("{}", created.token);
            eprintln!(
                "enrollment token {} for {} device(s), valid until {}: shown only now",
                created.info.id, created.info.uses, created.info.expires_at
            );
        }
        Command::EnrollmentTokens(EnrollmentCommand::Revoke { id }) => {
            let response = client
                .request(reqwest::Method::DELETE, &routes::admin_enrollment_token(&id))
                .send()
                .await
                .map_err(connection_error)?;
            if !response.status().is_success() {
                decode::<serde_json::Value>(response).await?;
            }
            println!("revoked enrollment token {id}");
        }
        Command::Staged { json } => {
            let list: StagedList = client.get(routes::ADMIN_STAGED).await?;
            if json {
                return print_json(&list);
            }
            let rows = list.staged.iter().map(|s| {
                vec![
                    s.role.clone(),
                    s.version.to_string(),
                    format!("{}/{}", s.signatures, s.threshold),
                    s.missing_keyids.join(" "),
                ]
            });
            table(&["ROLE", "VERSION", "SIGNED", "MISSING KEYS"], rows);
        }
        Command::Delivery { json } => {
            let report: DeliveryReport = client.get(routes::ADMIN_DELIVERY).await?;
            if json {
                return print_json(&report);
            }
            let rows = report.groups.iter().map(|g| {
                let b = &g.bytes;
                vec![
                    g.group.clone().unwrap_or_else(|| "(no group)".into()),
                    g.devices.to_string(),
                    g.downloads.to_string(),
                    b.from_http.to_string(),
                    b.from_cache_server.to_string(),
                    b.from_lan_peers.to_string(),
                    b.from_group_peers.to_string(),
                    b.from_internet_peers.to_string(),
                    b.to_peers.to_string(),
                    format!("{:.1} %", g.percent_peer_caching),
                ]
            });
            let headers = [
                "GROUP",
                "DEVICES",
                "DOWNLOADS",
                "HTTP",
                "CACHE SERVER",
                "LAN PEERS",
                "GROUP PEERS",
                "INTERNET PEERS",
                "TO PEERS",
                "PEERING",
            ];
            table(&headers, rows);
            println!("(bytes; peering: bytes from peers / bytes downloaded)");
        }
        Command::Status { json } => {
            let status: ServiceStatus = client.get(routes::ADMIN_STATUS).await?;
            if json {
                return print_json(&status);
            }
            let rows = status.roles.iter().map(|r| vec![r.role.clone(), r.version.to_string(), r.expires.to_string()]);
            table(&["ROLE", "VERSION", "EXPIRES"], rows);
            if let Some(next) = status.next_refresh {
                println!("next check for re-signing: {next}");
            }
        }
    }
    Ok(())
}

fn print_counts(c: &custody_api::admin::ComplianceCounts) {
    println!(
        "  {} devices: {} installed, {} pending reboot, {} needed, {} downloaded, {} failed, {} not applicable, {} \
         unknown",
        c.devices, c.installed, c.pending_reboot, c.needed, c.downloaded, c.failed, c.not_applicable, c.unknown
    );
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, cell)| if i == last { cell } else { format!("{cell:<width$}", width = widths[i]) })
            .collect();
        println!("{}", text.join("  "));
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row);
    }
}
