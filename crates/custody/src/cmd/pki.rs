//! `custody pki`: the certificate authority of a custody deployment (docs/pki.md). An offline root, issuing
//! intermediates by purpose, server and device certificates, CRLs, renewal and revocation, all in one CA directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use custody_pki::layout::{self, ROOT};
use custody_pki::{CaDir, CertDetails, CrlDetails, IndexEntry, IntermediateRole, Serial};

use super::Hint;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a CA directory with a new offline root CA and its CRL.
    InitRoot(InitRootArgs),
    /// Issue an intermediate CA: `service` (the update service's), `relay:<name>` (one per relay) or `device`.
    IssueIntermediate(IntermediateArgs),
    /// Issue a TLS server certificate with DNS names and IP addresses.
    IssueServer(ServerArgs),
    /// Issue a device client certificate (enrollment, mutual TLS).
    IssueDevice(DeviceArgs),
    /// Issue a new certificate like an existing one (same names; a CA keeps its key, so pins stay valid).
    Renew(RenewArgs),
    /// Revoke a certificate and re-sign its issuer's CRL.
    Revoke(RevokeArgs),
    /// Re-sign CRLs (before their next-update time passes: devices refuse stale CRLs).
    Crl(CrlArgs),
    /// List every certificate issued.
    List(ListArgs),
    /// Show a certificate (from the index by serial, or any PEM file, certificate or CRL), with its SPKI pin.
    Show(ShowArgs),
}

/// The CA directory.
#[derive(clap::Args)]
pub struct DirArgs {
    #[arg(long = "dir", short = 'C', value_name = "DIR", default_value = ".", env = "CUSTODY_CA_DIR")]
    dir: PathBuf,
}

#[derive(clap::Args)]
pub struct InitRootArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Common name of the root.
    #[arg(long, default_value = "custody root CA")]
    common_name: String,
    #[arg(long, default_value_t = layout::ROOT_DAYS)]
    days: u32,
    /// Lifetime of the root's CRLs (next update), in days.
    #[arg(long, default_value_t = layout::ROOT_CRL_DAYS)]
    crl_days: u32,
}

#[derive(clap::Args)]
pub struct IntermediateArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// `service`, `relay:<name>` or `device`.
    role: IntermediateRole,
    /// CA name (directory under ca/); defaults to the role's. Give a new one to rotate (docs/pki.md).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    common_name: Option<String>,
    #[arg(long, default_value_t = layout::INTERMEDIATE_DAYS)]
    days: u32,
    /// Lifetime of this CA's CRLs (next update), in days.
    #[arg(long, default_value_t = layout::INTERMEDIATE_CRL_DAYS)]
    crl_days: u32,
}

#[derive(clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The issuing CA (a `service` or `relay:<name>` intermediate).
    #[arg(long, default_value = "service")]
    issuer: String,
    /// DNS names and IP addresses (subject alternative names).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Common name; defaults to the first name.
    #[arg(long)]
    common_name: Option<String>,
    #[arg(long, default_value_t = layout::SERVER_DAYS)]
    days: u32,
    /// Also copy cert.pem, chain.pem and key.pem (mode 0600) into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The issuing CA (a `device` intermediate).
    #[arg(long, default_value = "device")]
    issuer: String,
    /// The device id (common name).
    device_id: String,
    #[arg(long, default_value_t = layout::DEVICE_DAYS)]
    days: u32,
    /// Also copy cert.pem, chain.pem and key.pem (mode 0600) into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    dir: DirArgs,
    serial: Serial,
    /// Lifetime of the new certificate; defaults to the old one's.
    #[arg(long)]
    days: Option<u32>,
    /// Also copy the new cert.pem, chain.pem and key.pem (leaves only) into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    dir: DirArgs,
    serial: Serial,
    /// unspecified, key-compromise, ca-compromise, affiliation-changed, superseded, cessation-of-operation,
    /// privilege-withdrawn.
    #[arg(long, default_value = "unspecified")]
    reason: String,
}

#[derive(clap::Args)]
pub struct CrlArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The CA whose CRL to re-sign (`root`, `service`, ...); all of them without it.
    #[arg(long)]
    issuer: Option<String>,
    /// Next update in this many days; defaults to each CA's CRL lifetime.
    #[arg(long)]
    next_update_days: Option<u32>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    dir: DirArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// A serial from the index.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    serial: Option<Serial>,
    /// A PEM file (certificate, chain or CRL) instead.
    #[arg(long, value_name = "PEM")]
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    let now = jiff::Timestamp::now();
    match command {
        Command::InitRoot(args) => {
            let ca = CaDir::init(&args.dir.dir, &args.common_name, args.days, args.crl_days, now)?;
            let root = &ca.entries()[0];
            println!("created root CA {} in {}", root.serial, args.dir.dir.display());
            println!("root SPKI SHA-256 (pin): {}", root.spki_sha256);
            println!("keep {} offline", ca.ca_dir(ROOT).join("key.pem").display());
        }
        Command::IssueIntermediate(args) => {
            let mut ca = open(&args.dir.dir)?;
            let name = args.name.as_deref();
            let entry =
                ca.issue_intermediate(&args.role, name, args.common_name.as_deref(), args.days, args.crl_days, now)?;
            let ca_name = entry.ca_name.clone().unwrap_or_default();
            println!("issued {} CA {:?}: serial {}", args.role, ca_name, entry.serial);
            println!("SPKI SHA-256 (pin): {}", entry.spki_sha256);
            println!("files: {}", ca.ca_dir(&ca_name).display());
        }
        Command::IssueServer(args) => {
            let mut ca = open(&args.dir.dir)?;
            let entry = ca.issue_server(&args.issuer, &args.names, args.common_name.as_deref(), args.days, now)?;
            report_leaf(&ca, &entry, args.out.as_deref())?;
        }
        Command::IssueDevice(args) => {
            let mut ca = open(&args.dir.dir)?;
            let entry = ca.issue_device(&args.issuer, &args.device_id, args.days, now)?;
            report_leaf(&ca, &entry, args.out.as_deref())?;
        }
        Command::Renew(args) => {
            let mut ca = open(&args.dir.dir)?;
            let entry = ca.renew(&args.serial, args.days, now)?;
            match &entry.ca_name {
                Some(name) => {
                    println!("renewed CA {name:?}: serial {} (was {})", entry.serial, args.serial);
                    println!("SPKI SHA-256 (pin, unchanged): {}", entry.spki_sha256);
                }
                None => report_leaf(&ca, &entry, args.out.as_deref())?,
            }
        }
        Command::Revoke(args) => {
            let mut ca = open(&args.dir.dir)?;
            let entry = ca.revoke(&args.serial, &args.reason, now).map_err(|err| match err {
                custody_pki::Error::Refused(msg) if msg.starts_with("unknown revocation reason") => {
                    anyhow::Error::new(Hint(format!("reasons: {}", IndexEntry::reasons().join(", ")))).context(msg)
                }
                other => other.into(),
            })?;
            println!("revoked {} ({})", entry.serial, entry.subject);
            println!("new CRL: {}", ca.ca_dir(&entry.issuer).join("crl.pem").display());
            println!("distribute it to devices and servers before the old one's next update");
        }
        Command::Crl(args) => {
            let mut ca = open(&args.dir.dir)?;
            let names: Vec<String> = match args.issuer {
                Some(name) => vec![name],
                None => ca.cas().keys().cloned().collect(),
            };
            for name in names {
                let path = ca.write_crl(&name, args.next_update_days, now)?;
                let details = CrlDetails::from_pem(&std::fs::read_to_string(&path)?)?;
                let next = details.next_update.map_or_else(|| "-".to_owned(), |t| t.to_string());
                println!("{name}: {} (next update {next}, {} revoked)", path.display(), details.revoked.len());
            }
        }
        Command::List(args) => {
            let ca = open(&args.dir.dir)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(ca.entries())?);
            } else {
                println!(
                    "{:<32}  {:<28}  {:<14}  {:<20}  {:<8}  SUBJECT",
                    "SERIAL", "PURPOSE", "ISSUER", "NOT AFTER", "STATUS"
                );
                for entry in ca.entries() {
                    let status = if entry.revoked.is_some() {
                        "revoked"
                    } else if entry.not_after < now {
                        "expired"
                    } else {
                        "valid"
                    };
                    let not_after = entry.not_after.strftime("%Y-%m-%d %H:%M:%S").to_string();
                    println!(
                        "{:<32}  {:<28}  {:<14}  {:<20}  {:<8}  {}",
                        entry.serial, entry.purpose, entry.issuer, not_after, status, entry.subject
                    );
                }
            }
        }
        Command::Show(args) => show(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn open(dir: &Path) -> anyhow::Result<CaDir> {
    CaDir::open(dir).with_context(|| format!("cannot open the CA directory {}", dir.display()))
}

/// Prints an issued leaf's files, and copies them to `out` if given.
fn report_leaf(ca: &CaDir, entry: &IndexEntry, out: Option<&Path>) -> anyhow::Result<()> {
    let dir = ca.entry_dir(entry);
    println!("issued {} certificate {} ({})", entry.purpose, entry.serial, entry.subject);
    if !entry.sans.is_empty() {
        println!("names: {}", entry.sans.join(", "));
    }
    println!("not after: {}", entry.not_after);
    println!("files: {}/{{cert,chain,key}}.pem", dir.display());
    if let Some(out) = out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        for (name, mode) in [("cert.pem", 0o644), ("chain.pem", 0o644), ("key.pem", 0o600)] {
            let bytes =
                std::fs::read(dir.join(name)).with_context(|| format!("cannot read {}", dir.join(name).display()))?;
            layout::write_atomic(&out.join(name), &bytes, mode)?;
        }
        println!("copied to {}", out.display());
    }
    Ok(())
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let (pem, entry) = match (&args.file, &args.serial) {
        (Some(file), _) => (std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?, None),
        (None, Some(serial)) => {
            let ca = open(&args.dir.dir)?;
            let entry = ca.find(serial)?.clone();
            let path = ca.entry_dir(&entry).join("cert.pem");
            (std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?, Some(entry))
        }
        // clap requires one of them (`required_unless_present`).
        (None, None) => anyhow::bail!("give a serial or --file"),
    };
    let text = String::from_utf8_lossy(&pem);
    if text.contains("BEGIN X509 CRL") {
        let crl = CrlDetails::from_pem(&text)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&crl)?);
        } else {
            println!("CRL issuer:   {}", crl.issuer);
            println!("this update:  {}", crl.this_update);
            println!("next update:  {}", crl.next_update.map_or_else(|| "-".to_owned(), |t| t.to_string()));
            println!("CRL number:   {}", crl.crl_number.as_deref().unwrap_or("-"));
            println!(
                "revoked:      {}",
                if crl.revoked.is_empty() { "none".to_owned() } else { crl.revoked.join(", ") }
            );
        }
        return Ok(());
    }
    let certs = CertDetails::from_pem_chain(&pem)?;
    if args.json {
        let value = serde_json::json!({ "certificates": certs, "index": entry });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    for (i, cert) in certs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("subject:            {}", cert.subject);
        println!("issuer:             {}", cert.issuer);
        println!("serial:             {}", cert.serial);
        println!("not before:         {}", cert.not_before);
        println!("not after:          {}", cert.not_after);
        if !cert.sans.is_empty() {
            println!("names:              {}", cert.sans.join(", "));
        }
        println!("CA:                 {}", if cert.is_ca { "yes" } else { "no" });
        if !cert.extended_key_usage.is_empty() {
            println!("extended key usage: {}", cert.extended_key_usage.join(", "));
        }
        println!("SPKI SHA-256 (pin): {}", cert.spki_sha256);
    }
    if let Some(entry) = entry {
        println!("purpose:            {} (issued by CA {:?})", entry.purpose, entry.issuer);
        if let Some(revoked) = entry.revoked {
            println!("revoked:            {} ({})", revoked.at, revoked.reason);
        }
    }
    Ok(())
}
