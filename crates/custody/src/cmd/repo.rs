//! `custody repo`: the publisher's tool. Creates and changes a TUF repository directory (docs/repository.md):
//! keys, targets with their catalog metadata, delegations (hashed bins included), signatures from offline keys,
//! key rotation, refreshing the online roles, and verifying everything as a client would.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use custody_repo::keys::read_key_file;
use custody_repo::{
    AddTarget, DelegateOptions, DelegationKind, Expiry, InitOptions, KeySpec, Outcome, Passphrase, Report, Repository,
    Severity, Status,
};
use custody_tuf::{PrivateKey, PrivateKeyKind};

use super::Hint;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a repository: new keys for root, targets, snapshot and timestamp, and version 1 of their metadata.
    Init(InitArgs),
    /// Add (or replace) targets, with their custom (catalog) metadata; every touched role is signed once.
    Add(AddArgs),
    /// Remove targets from the roles that list them.
    Remove(RemoveArgs),
    /// Delegate path patterns, or hashed bins, to a new role with new keys.
    Delegate(DelegateArgs),
    /// Give a product its own role for "<product>/*" (taking over those targets), optionally split into hashed bins.
    DelegateProduct(ProductArgs),
    /// Sign metadata waiting in staged/ with the given keys; publish once every threshold is met.
    Sign(SignArgs),
    /// Replace the keys of a role (root included: the new root is signed by old and new root keys).
    Rotate(RotateArgs),
    /// Publish a new snapshot and timestamp with fresh expiry dates, using only the online keys.
    Refresh(RefreshArgs),
    /// Check the whole published repository as a client would; report every problem (exit 1 on any error).
    Verify(ListArgs),
    /// Show every role: versions, expiry, keys, and what waits for signatures.
    Status(ListArgs),
}

/// Where the repository is, and how to unlock encrypted keys.
#[derive(clap::Args)]
pub struct RepoArgs {
    /// The repository directory.
    #[arg(long = "repo", short = 'C', value_name = "DIR", default_value = ".", env = "CUSTODY_REPO")]
    dir: PathBuf,
    /// Read the passphrase of encrypted key files from this environment variable (without it, it is asked on a
    /// terminal when needed).
    #[arg(long, value_name = "VAR")]
    passphrase_env: Option<String>,
}

/// Keys to sign with besides those in keys/, and whether new keys are encrypted.
#[derive(clap::Args)]
pub struct SigningArgs {
    /// A private key file to sign with, such as an offline key (repeatable).
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// Encrypt new key files with the passphrase (--passphrase-env, or asked on a terminal).
    #[arg(long)]
    encrypt: bool,
}

/// How many new keys, how many of them must sign, and of which kind.
#[derive(clap::Args, Clone, Copy)]
pub struct KeyArgs {
    /// Number of new keys.
    #[arg(long = "keys", value_name = "N", default_value_t = 1)]
    count: u32,
    /// How many of the new keys must sign.
    #[arg(long, value_name = "M", default_value_t = 1)]
    threshold: u32,
    #[arg(long, value_enum, default_value_t = KeyType::Ed25519)]
    key_type: KeyType,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum KeyType {
    Ed25519,
    /// ECDSA P-256.
    Ecdsa,
    /// RSA-PSS 3072.
    Rsa,
}

#[derive(clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Encrypt the new key files with the passphrase.
    #[arg(long)]
    encrypt: bool,
    #[arg(long, value_enum, default_value_t = KeyType::Ed25519)]
    key_type: KeyType,
    #[arg(long, value_name = "N", default_value_t = 1)]
    root_keys: u32,
    #[arg(long, value_name = "M", default_value_t = 1)]
    root_threshold: u32,
    #[arg(long, value_name = "N", default_value_t = 1)]
    targets_keys: u32,
    #[arg(long, value_name = "M", default_value_t = 1)]
    targets_threshold: u32,
    #[arg(long, value_name = "N", default_value_t = 1)]
    snapshot_keys: u32,
    #[arg(long, value_name = "M", default_value_t = 1)]
    snapshot_threshold: u32,
    #[arg(long, value_name = "N", default_value_t = 1)]
    timestamp_keys: u32,
    #[arg(long, value_name = "M", default_value_t = 1)]
    timestamp_threshold: u32,
    /// Validity of root metadata (e.g. 365d).
    #[arg(long, default_value = "365d")]
    root_expiry: Expiry,
    #[arg(long, default_value = "90d")]
    targets_expiry: Expiry,
    /// Validity of delegated roles' metadata.
    #[arg(long, default_value = "90d")]
    delegated_expiry: Expiry,
    #[arg(long, default_value = "7d")]
    snapshot_expiry: Expiry,
    #[arg(long, default_value = "1d")]
    timestamp_expiry: Expiry,
}

#[derive(clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    signing: SigningArgs,
    /// Files to add; each target path is --prefix plus the file name, unless --path is given.
    files: Vec<PathBuf>,
    /// The target path (only with a single file).
    #[arg(long)]
    path: Option<String>,
    /// Directory prefix of the target paths, e.g. "acme/".
    #[arg(long, default_value = "")]
    prefix: String,
    /// The custom metadata of every file added, as JSON (a catalog entry goes under "custody").
    #[arg(long, value_name = "JSON", conflicts_with = "custom_file")]
    custom: Option<String>,
    /// Read the custom metadata from this JSON file.
    #[arg(long, value_name = "FILE")]
    custom_file: Option<PathBuf>,
    /// Put the targets in this role, or in the right bin of this group of hashed bins (default: where a client's
    /// search for the path ends).
    #[arg(long)]
    role: Option<String>,
    /// Add every target listed in this JSON-lines file: {"path": ..., "file": ..., "custom": {...}} per line, files
    /// relative to the manifest's directory.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    signing: SigningArgs,
    /// Target paths to remove.
    #[arg(required = true)]
    paths: Vec<String>,
}

#[derive(clap::Args)]
pub struct DelegateArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The new role's name (for --bins: the prefix of the bin names).
    name: String,
    /// The delegating role.
    #[arg(long, default_value = "targets")]
    delegator: String,
    /// Path patterns the role may sign for ('*' and '?' never cross a '/').
    #[arg(long, num_args = 1.., required_unless_present = "bins", conflicts_with = "bins")]
    paths: Vec<String>,
    /// Number of hashed bins (a power of two, 2 to 65536) sharing all paths by the SHA-256 of the path.
    #[arg(long)]
    bins: Option<u32>,
    /// A client that reaches this delegation looks no further.
    #[arg(long)]
    terminating: bool,
    /// Validity of the new role's metadata (default: the repository's delegated expiry).
    #[arg(long)]
    expiry: Option<Expiry>,
    /// Move the delegator's targets that the new role covers into it.
    #[arg(long)]
    move_targets: bool,
}

#[derive(clap::Args)]
pub struct ProductArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// The product name: its role covers "<product>/*".
    product: String,
    /// Split the product's role into this many hashed bins (also for an existing product role).
    #[arg(long)]
    bins: Option<u32>,
}

#[derive(clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    signing: SigningArgs,
}

#[derive(clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    signing: SigningArgs,
    #[command(flatten)]
    keys: KeyArgs,
    /// root, targets, snapshot, timestamp, a delegated role, or a group of hashed bins.
    role: String,
}

#[derive(clap::Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only a new timestamp (the snapshot stays).
    #[arg(long)]
    timestamp_only: bool,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(args) => {
            let passphrase = args.repo.passphrase(args.encrypt)?;
            let kind = args.key_type.kind();
            let spec = |count, threshold| KeySpec { count, threshold, kind };
            let options = InitOptions {
                root: spec(args.root_keys, args.root_threshold),
                targets: spec(args.targets_keys, args.targets_threshold),
                snapshot: spec(args.snapshot_keys, args.snapshot_threshold),
                timestamp: spec(args.timestamp_keys, args.timestamp_threshold),
                expiry: custody_repo::ExpiryConfig {
                    root: args.root_expiry,
                    targets: args.targets_expiry,
                    delegated: args.delegated_expiry,
                    snapshot: args.snapshot_expiry,
                    timestamp: args.timestamp_expiry,
                },
            };
            let dir = &args.repo.dir;
            let (_, outcome) = Repository::init(dir, &options, passphrase)
                .map_err(explain)
                .with_context(|| format!("cannot create a repository in {}", dir.display()))?;
            println!("created repository {}", dir.display());
            println!("keep the root and targets keys offline (move them out of keys/; sign with --key FILE)");
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Add(args) => {
            let targets = args.targets()?;
            let mut repo = args.repo.open(&args.signing)?;
            let count = targets.len();
            let outcome = repo.add_targets(targets, args.role.as_deref()).map_err(explain).with_context(|| {
                format!("cannot add {count} target(s) to the repository in {}", args.repo.dir.display())
            })?;
            println!("added {count} target(s)");
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove(args) => {
            let mut repo = args.repo.open(&args.signing)?;
            let outcome = repo
                .remove_targets(&args.paths)
                .map_err(explain)
                .with_context(|| format!("cannot remove targets from {}", args.repo.dir.display()))?;
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Delegate(args) => {
            let mut repo = args.repo.open(&args.signing)?;
            let kind = match args.bins {
                Some(count) => DelegationKind::Bins(count),
                None => DelegationKind::Paths(args.paths.clone()),
            };
            let options = DelegateOptions {
                name: args.name.clone(),
                delegator: args.delegator.clone(),
                kind,
                terminating: args.terminating,
                keys: args.keys.spec(),
                expiry: args.expiry,
                move_targets: args.move_targets,
            };
            let outcome = repo
                .delegate(&options)
                .map_err(explain)
                .with_context(|| format!("cannot delegate {} from {}", args.name, args.delegator))?;
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::DelegateProduct(args) => {
            let mut repo = args.repo.open(&args.signing)?;
            let outcome = repo
                .delegate_product(&args.product, args.bins, &args.keys.spec())
                .map_err(explain)
                .with_context(|| format!("cannot delegate product {}", args.product))?;
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign(args) => {
            if args.signing.keys.is_empty() {
                anyhow::bail!(Hint("give the keys that must sign with --key FILE (see `custody repo status`)".into()));
            }
            let mut repo = args.repo.open(&args.signing)?;
            let outcome = repo
                .sign()
                .map_err(explain)
                .with_context(|| format!("cannot sign the pending metadata of {}", args.repo.dir.display()))?;
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Rotate(args) => {
            let mut repo = args.repo.open(&args.signing)?;
            let outcome = repo
                .rotate(&args.role, &args.keys.spec())
                .map_err(explain)
                .with_context(|| format!("cannot rotate the keys of {}", args.role))?;
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Refresh(args) => {
            let mut repo = args.repo.open(&SigningArgs { keys: vec![], encrypt: false })?;
            let outcome = repo
                .refresh(args.timestamp_only)
                .map_err(explain)
                .with_context(|| format!("cannot refresh {}", args.repo.dir.display()))?;
            print_outcome(&outcome);
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let repo = args.repo.open(&SigningArgs { keys: vec![], encrypt: false })?;
            let report = repo.verify();
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            Ok(if report.errors() == 0 { ExitCode::SUCCESS } else { ExitCode::from(super::EXIT_FAILURE) })
        }
        Command::Status(args) => {
            let repo = args.repo.open(&SigningArgs { keys: vec![], encrypt: false })?;
            let status = repo
                .status()
                .map_err(explain)
                .with_context(|| format!("cannot read the repository in {}", args.repo.dir.display()))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl RepoArgs {
    /// The passphrase source; with `encrypt`, one must be available to encrypt new key files.
    fn passphrase(&self, encrypt: bool) -> anyhow::Result<Passphrase> {
        let passphrase = match &self.passphrase_env {
            Some(var) => Passphrase::from_env(var)
                .map_err(anyhow::Error::from)
                .context(Hint(format!("export {var}=... before running, or leave out --passphrase-env")))?,
            None => Passphrase::prompt(),
        };
        if encrypt && !passphrase.is_available() {
            anyhow::bail!(Hint("--encrypt needs a passphrase: give --passphrase-env VAR, or run on a terminal".into()));
        }
        Ok(passphrase.encrypt_new_keys(encrypt))
    }

    /// Opens the repository, with the extra signing keys read (and decrypted) up front.
    fn open(&self, signing: &SigningArgs) -> anyhow::Result<Repository> {
        let passphrase = self.passphrase(signing.encrypt)?;
        let mut keys: Vec<PrivateKey> = Vec::new();
        for file in &signing.keys {
            let key = read_key_file(file, &passphrase)
                .map_err(explain)
                .with_context(|| format!("cannot use the key file {}", file.display()))?;
            keys.push(key);
        }
        let mut repo = Repository::open(&self.dir, passphrase)
            .map_err(explain)
            .with_context(|| format!("cannot open the repository in {}", self.dir.display()))?;
        repo.add_signing_keys(keys);
        Ok(repo)
    }
}

impl KeyArgs {
    fn spec(&self) -> KeySpec {
        KeySpec { count: self.count, threshold: self.threshold, kind: self.key_type.kind() }
    }
}

impl KeyType {
    fn kind(self) -> PrivateKeyKind {
        match self {
            KeyType::Ed25519 => PrivateKeyKind::Ed25519,
            KeyType::Ecdsa => PrivateKeyKind::EcdsaP256,
            KeyType::Rsa => PrivateKeyKind::RsaPss3072,
        }
    }
}

impl AddArgs {
    /// Reads every file to add (all of them before anything changes, so that a missing file changes nothing).
    fn targets(&self) -> anyhow::Result<Vec<AddTarget>> {
        let custom = match (&self.custom, &self.custom_file) {
            (Some(json), _) => Some(serde_json::from_str(json).context("--custom is not valid JSON")?),
            (None, Some(file)) => {
                let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
                Some(serde_json::from_slice(&text).with_context(|| format!("{} is not valid JSON", file.display()))?)
            }
            (None, None) => None,
        };
        if self.path.is_some() && self.files.len() != 1 {
            anyhow::bail!(Hint("--path names one target: give exactly one file with it".into()));
        }
        let mut targets = Vec::new();
        for file in &self.files {
            let path = match &self.path {
                Some(path) => path.clone(),
                None => {
                    let name = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .with_context(|| format!("{} has no file name to use as the target path", file.display()))?;
                    format!("{}{name}", self.prefix)
                }
            };
            let content = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            targets.push(AddTarget { path, content, custom: custom.clone() });
        }
        if let Some(manifest) = &self.manifest {
            targets.extend(AddTarget::read_manifest(manifest).map_err(explain)?);
        }
        if targets.is_empty() {
            anyhow::bail!(Hint("name the files to add, or give --manifest FILE".into()));
        }
        Ok(targets)
    }
}

/// Attaches a hint to the library errors a user can act on.
fn explain(err: custody_repo::Error) -> anyhow::Error {
    use custody_repo::Error as E;
    let hint = match &err {
        E::NotARepository(_) => Some("create one with `custody repo init --repo DIR`, or point --repo at one"),
        E::AlreadyExists(_) => Some("choose a directory without a repo.toml"),
        E::PassphraseNeeded { .. } | E::WrongPassphrase { .. } | E::Passphrase(_) => {
            Some("give the passphrase with --passphrase-env VAR, or run on a terminal to be asked")
        }
        E::OnlineKeys { .. } => Some(
            "the snapshot and timestamp keys must be in keys/ or given with --key FILE; encrypted ones need \
             --passphrase-env VAR",
        ),
        E::UnknownRole(_) => Some("`custody repo status` lists the roles"),
        E::NotDelegatedPath { .. } => Some("leave out --role to place the target where clients look for it"),
        E::UnknownTarget(_) => Some("target paths are case-sensitive and have no leading '/'"),
        E::Catalog { .. } => Some("docs/catalog.md describes the \"custody\" entry of custom metadata"),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::Error::from(err).context(Hint(hint.into())),
        None => err.into(),
    }
}

fn print_outcome(outcome: &Outcome) {
    match outcome {
        Outcome::Published { roles, snapshot_version, timestamp_version } => {
            let roles: Vec<String> = roles.iter().map(|(role, version)| format!("{role} v{version}")).collect();
            let roles = if roles.is_empty() { String::new() } else { format!("{}; ", roles.join(", ")) };
            println!("published: {roles}snapshot v{snapshot_version}, timestamp v{timestamp_version}");
        }
        Outcome::Pending { waiting } => {
            println!("not published: waiting for signatures (changes are kept in staged/)");
            for w in waiting {
                println!(
                    "  {} v{}: {} of {} signatures from {} keys; missing:",
                    w.role, w.version, w.signed, w.threshold, w.signers
                );
                for key in &w.missing {
                    let file = key.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "-".into());
                    println!("    {} {} ({})", key.keyid, file, key.state);
                }
            }
            println!("sign with `custody repo sign --key FILE ...`");
        }
    }
}

fn print_report(report: &Report) {
    for problem in &report.problems {
        let severity = match problem.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        println!("{severity}: {}: {}", problem.subject, problem.message);
    }
    println!(
        "root v{}, {} targets roles, {} targets checked: {} error(s), {} warning(s)",
        report.root_version,
        report.roles_verified,
        report.targets_checked,
        report.errors(),
        report.warnings()
    );
}

fn print_status(status: &Status) {
    println!(
        "{:<24} {:>8} {:>8} {:<21} {:>9} {:>8}  keys",
        "role", "version", "staged", "expires", "threshold", "targets"
    );
    for role in &status.roles {
        let staged = role.staged_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let targets = role.targets.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        let keys: Vec<String> =
            role.keys.iter().map(|k| format!("{} ({})", &k.keyid[..k.keyid.len().min(12)], k.state)).collect();
        println!(
            "{:<24} {:>8} {:>8} {:<21} {:>9} {:>8}  {}",
            role.role,
            role.version,
            staged,
            role.expires.as_deref().unwrap_or("-"),
            role.threshold,
            targets,
            keys.join(", ")
        );
    }
    for w in &status.pending {
        println!(
            "waiting: {} v{}: {} of {} signatures from {} keys",
            w.role, w.version, w.signed, w.threshold, w.signers
        );
    }
}
