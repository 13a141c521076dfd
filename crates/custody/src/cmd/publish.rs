//! `custody publish`: publishes an update to an update service, signing where the publisher runs.
//!
//! 1. Refresh the repository over pinned HTTPS as a client does (custody-client's `Updater`, trust anchored in the
//!    publisher's own `root.json`), so that what gets signed is what the publisher verified, never what the service
//!    merely claims.
//! 2. Hash the package once (length, SHA-256, SHA-512, BEP 52 piece tree) and build the catalog entry from the TOML
//!    description (`UpdateEntry::from_description`).
//! 3. Upload the content (skipped when the service already has it).
//! 4. Sign the next version of the role a client's search for the target path ends at, with the publisher's keys
//!    (custody-repo key files), and send it; the service checks it and publishes it with snapshot and timestamp.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use custody_api::admin::{ContentStored, PublishRequest, PublishResponse};
use custody_api::routes;
use custody_catalog::{ContentHasher, UpdateDescription, UpdateEntry};
use custody_client::{HttpFetcher, RoleLimits, Updater, UpdaterConfig};
use custody_repo::{Expiry, Passphrase};
use custody_tuf::{Metadata, TargetFile, TrustedSet};

use super::Hint;
use super::admin::{Connection, connection_error, decode};

#[derive(clap::Args)]
pub struct Args {
    /// The package file.
    package: PathBuf,
    /// The update description (TOML, docs/catalog.md §7).
    #[arg(long, value_name = "FILE")]
    description: PathBuf,
    #[command(flatten)]
    connection: Connection,
    /// The publisher's directory: `root.json` (the trusted root, e.g. DATA/offline-keys/root.json of the service)
    /// and the metadata verified on earlier runs (rollback protection).
    #[arg(long, value_name = "DIR")]
    repo: PathBuf,
    /// A private key of the signing role (custody-repo key file); repeat for a threshold.
    #[arg(long = "key", value_name = "FILE", required = true)]
    keys: Vec<PathBuf>,
    /// Environment variable holding the passphrase of encrypted key files (else asked on the terminal).
    #[arg(long, value_name = "VAR")]
    passphrase_env: Option<String>,
    /// Target path (default: <product>/<package file name>).
    #[arg(long)]
    path: Option<String>,
    /// The role to list the target in (default: the role a client's search for the path ends at).
    #[arg(long)]
    role: Option<String>,
    /// Piece size for peer-to-peer delivery, a power of two from 16 KiB to 16 MiB; 0: no piece tree.
    #[arg(long, default_value_t = 1 << 20)]
    piece_size: u64,
    /// Validity of the role's new version.
    #[arg(long, default_value = "90d")]
    expiry: Expiry,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.description)
        .with_context(|| format!("cannot read {}", args.description.display()))?;
    let description: UpdateDescription = toml::from_str(&text)
        .with_context(|| format!("{} is not a TOML update description", args.description.display()))?;
    let (target, content) = describe_package(&args, &description)?;
    let entry = UpdateEntry::from_description(&description, content)
        .with_context(|| format!("{}: invalid update description", args.description.display()))?;
    let file_name = args.package.file_name().and_then(|n| n.to_str()).context("the package has no file name")?;
    let path = args.path.clone().unwrap_or_else(|| format!("{}/{file_name}", entry.product()));
    let target = TargetFile { custom: Some(entry.to_custom_json()), ..target };

    let passphrase = match &args.passphrase_env {
        Some(var) => Passphrase::from_env(var)?,
        None => Passphrase::prompt(),
    };
    let keys = args
        .keys
        .iter()
        .map(|file| custody_repo::keys::read_key_file(file, &passphrase))
        .collect::<Result<Vec<_>, _>>()?;

    let client = args.connection.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let response = runtime.block_on(async {
        let fetcher = HttpFetcher::new(client.http().clone(), Duration::from_secs(60));
        let config = UpdaterConfig {
            metadata_dir: args.repo.clone(),
            metadata_url: client.url(&format!("{}/", routes::METADATA)),
            limits: RoleLimits::default(),
            snapshot_proofs: false,
        };
        let mut updater = Updater::new(config, fetcher, jiff::Timestamp::now())
            .with_context(|| format!("{} must hold the trusted root.json", args.repo.display()))?;
        updater.refresh().await.context("refreshing the repository from the service")?;
        let found = match updater.target_info(&path).await {
            Ok(existing) => Some(existing.role().to_owned()),
            Err(custody_client::Error::TargetNotFound(_)) => None,
            Err(err) => return Err(anyhow::Error::new(err).context(format!("looking up {path}"))),
        };
        let role = choose_role(updater.trusted(), &path, found, args.role.as_deref())?;
        let current = updater.trusted().targets(&role).context("the role is not loaded")?;
        let (role_keys, threshold) = keys_of(updater.trusted(), &role)?;
        let mut next = (**current).clone();
        next.version += 1;
        next.expires = args.expiry.after(jiff::Timestamp::now());
        let replaced = next.targets.insert(path.clone(), target.clone()).is_some();
        let mut metadata = Metadata::new(next)?;
        for key in &keys {
            if !role_keys.contains(&key.key_id()) {
                bail!("key {} is not a key of role {role} (its keys: {})", key.key_id(), role_keys.join(", "));
            }
            metadata.sign(key)?;
        }
        if keys.len() < threshold as usize {
            eprintln!(
                "role {role} needs {threshold} signatures; this run signs with {}: the service will wait",
                keys.len()
            );
        }

        upload(&client, &args.package, &target).await?;
        let request = PublishRequest { role: role.clone(), metadata: serde_json::from_slice(&metadata.to_bytes())? };
        let (_, response): (_, PublishResponse) =
            client.send(reqwest::Method::POST, routes::ADMIN_PUBLISH, &request).await?;
        eprintln!("{} {path} in role {role}", if replaced { "replaced" } else { "added" });
        Ok(response)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(ExitCode::SUCCESS);
    }
    match response {
        PublishResponse::Published { role, version, snapshot_version, timestamp_version, .. } => println!(
            "published {path}: {role} version {version}, snapshot {snapshot_version}, timestamp {timestamp_version}"
        ),
        PublishResponse::Pending(staged) => println!(
            "{} version {} waits for signatures: {} of {}; missing keys {}",
            staged.role,
            staged.version,
            staged.signatures,
            staged.threshold,
            staged.missing_keyids.join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the package once: its TUF description (length, SHA-256) and its catalog content info.
fn describe_package(
    args: &Args,
    _description: &UpdateDescription,
) -> anyhow::Result<(TargetFile, custody_catalog::ContentInfo)> {
    let piece_size = match args.piece_size {
        0 => None,
        size => Some(custody_catalog::pieces::PieceSize::new(size).context("--piece-size")?),
    };
    let mut file =
        std::fs::File::open(&args.package).with_context(|| format!("cannot open {}", args.package.display()))?;
    let mut hasher = ContentHasher::new(piece_size);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("cannot read {}", args.package.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let (content, _) = hasher.finish().with_context(|| format!("{}", args.package.display()))?;
    let mut hashes = custody_tuf::Hashes::new();
    hashes.insert("sha256".into(), content.sha256.to_string());
    let target = TargetFile { length: content.length.get(), hashes, custom: None, unrecognized: Default::default() };
    Ok((target, content))
}

/// The role that gets the target: where it is listed, else where a client's search for it ends (following the
/// first delegation that covers the path, down to a role that delegates it no further).
fn choose_role(
    trusted: &TrustedSet,
    path: &str,
    found: Option<String>,
    wanted: Option<&str>,
) -> anyhow::Result<String> {
    let mut chain = vec!["targets".to_owned()];
    // The search loaded every role on the path of first delegations, which is where the walk goes.
    while let Some(role) = trusted.targets(chain.last().map(String::as_str).unwrap_or("targets")) {
        let children = role.delegations.as_ref().map(|d| d.roles_for_target(path)).unwrap_or_default();
        match children.first() {
            Some((child, _)) if trusted.targets(child).is_some() && !chain.contains(child) => chain.push(child.clone()),
            _ => break,
        }
    }
    let leaf = chain.last().cloned().unwrap_or_else(|| "targets".into());
    match (wanted, found) {
        (Some(wanted), Some(found)) if wanted != found => {
            bail!(
                "{path} is listed by role {found}; --role {wanted} would list it twice (remove it from {found} first)"
            )
        }
        (Some(wanted), _) if !chain.iter().any(|r| r == wanted) => Err(anyhow::anyhow!(
            "a client's search for {path} visits {}; role {wanted} is not among them",
            chain.join(" -> ")
        )
        .context(Hint("omit --role to use the role the search ends at".into()))),
        (Some(wanted), _) => Ok(wanted.to_owned()),
        (None, Some(found)) => Ok(found),
        (None, None) => Ok(leaf),
    }
}

/// The key ids and threshold of `role`, as its (verified) delegator lists them.
fn keys_of(trusted: &TrustedSet, role: &str) -> anyhow::Result<(Vec<String>, u32)> {
    if role == "targets" {
        let entry = trusted.root().role(custody_tuf::RoleType::Targets);
        return Ok((entry.keyids.clone(), entry.threshold));
    }
    let mut names = vec!["targets".to_owned()];
    while let Some(name) = names.pop() {
        let Some(targets) = trusted.targets(&name) else { continue };
        let Some(delegations) = &targets.delegations else { continue };
        if let Some((keyids, threshold)) = delegations.role_keys(role) {
            return Ok((keyids.to_vec(), threshold));
        }
        names.extend(delegations.roles.iter().flatten().map(|r| r.name.clone()));
    }
    bail!("no verified role delegates {role}")
}

/// Uploads the package unless the service has it, streaming it from disk.
async fn upload(client: &super::admin::AdminClient, package: &PathBuf, target: &TargetFile) -> anyhow::Result<()> {
    let sha256 = target.sha256().context("no sha256")?.to_owned();
    let path = routes::admin_content(&sha256);
    let head = client.request(reqwest::Method::HEAD, &path).send().await.map_err(connection_error)?;
    if head.status().is_success() {
        eprintln!("content {sha256} is already stored");
        return Ok(());
    }
    match head.status() {
        reqwest::StatusCode::NOT_FOUND => {}
        status @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
            bail!("{path}: HTTP {} forbidden: publishing needs an admin token of scope write", status.as_u16())
        }
        status => bail!("{path}: HEAD answered HTTP {}", status.as_u16()),
    }
    let file = tokio::fs::File::open(package).await.with_context(|| format!("cannot open {}", package.display()))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let response = client
        .request(reqwest::Method::PUT, &path)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, target.length)
        .body(body)
        .send()
        .await
        .map_err(connection_error)?;
    let (_, stored): (_, ContentStored) = decode(response).await?;
    eprintln!("uploaded {} bytes (sha256 {})", stored.length, stored.sha256);
    Ok(())
}
