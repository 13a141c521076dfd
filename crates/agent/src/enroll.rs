//! Enrollment: the device obtains its identity from the service's device API with an enrollment token.
//!
//! With `Identity::Certificate` (the default) the device makes an ECDSA P-256 key, sends a certificate signing
//! request, and gets a client certificate issued by the service's device intermediate (common name = device id). That
//! certificate authenticates the device on the device API and to other devices of the fleet (peer-to-peer delivery
//! accepts nothing else). With `Identity::Token` it gets a bearer token instead (no peer-to-peer delivery).
//!
//! Where the identity goes is the configuration's business: `[tls] client_cert` and `client_key` for a certificate,
//! `[agent] device_token_file` for a token; enrollment refuses to start without them, so the daemon finds what
//! enrollment wrote. The enrollment id is kept in the state directory until enrollment succeeds, so a retry after a
//! lost answer gets the same device (and does not use up the token). The private key is written (mode 0600) only
//! after the service answered, next to the certificate, each by write-to-temporary and rename; an existing identity is
//! replaced only with `force`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use custody_api::device::{DeviceIdentity, EnrollRequest, EnrollResponse};
use custody_api::routes;
use uuid::Uuid;

use crate::Error;
use crate::config::AgentConfig;
use crate::state::StateDir;

/// Which identity to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    Certificate,
    Token,
}

/// What an enrollment produced.
#[derive(Clone, Debug)]
pub struct Enrolled {
    pub device_id: Uuid,
    /// The files written: certificate chain and key, or the token file.
    pub files: Vec<PathBuf>,
    /// The certificate's end of validity, for a certificate identity.
    pub not_after: Option<jiff::Timestamp>,
}

/// Enrolls this device with `token` and writes its identity where `config` says.
pub async fn enroll(
    config: &AgentConfig,
    token: &str,
    hostname: &str,
    identity: Identity,
    force: bool,
) -> Result<Enrolled, Error> {
    // Relative paths of the configuration are relative to its directory (`[agent]` ones are resolved already).
    let base = config.path.parent().map(Path::to_path_buf).unwrap_or_default();
    let tls = config.transport.tls.as_ref();
    let targets: Vec<PathBuf> = match identity {
        Identity::Certificate => match tls.and_then(|tls| tls.client_cert.as_ref().zip(tls.client_key.as_ref())) {
            Some((cert, key)) => vec![base.join(cert), base.join(key)],
            None => {
                return Err(Error::Config {
                    path: config.path.clone(),
                    detail: "enrolling with a certificate needs [tls] client_cert and client_key: the files to write"
                        .into(),
                });
            }
        },
        Identity::Token => match &config.agent.device_token_file {
            Some(file) => vec![base.join(file)],
            None => {
                return Err(Error::Config {
                    path: config.path.clone(),
                    detail: "enrolling with a token needs [agent] device_token_file: the file to write".into(),
                });
            }
        },
    };
    if !force && let Some(existing) = targets.iter().find(|file| file.exists()) {
        return Err(Error::Refused(format!(
            "{} exists: this device is already enrolled (--force enrolls again and replaces its identity)",
            existing.display()
        )));
    }

    let state = StateDir::new(&config.agent.state_dir);
    std::fs::create_dir_all(state.root()).map_err(Error::io("create", state.root()))?;
    let id_file = state.root().join("enrollment-id");
    let enrollment_id = match std::fs::read_to_string(&id_file) {
        Ok(text) => {
            text.trim().parse::<Uuid>().map_err(|e| Error::Corrupt { path: id_file.clone(), detail: e.to_string() })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
            write_file(&id_file, id.to_string().as_bytes(), 0o600)?;
            id
        }
        Err(e) => return Err(Error::io("read", &id_file)(e)),
    };

    // A key made now is only kept if the service accepts its request; a retry makes a new one, which is fine: the
    // service issues for whatever key the retried request carries.
    let key = match identity {
        Identity::Certificate => Some(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| Error::Refused(format!("cannot make a device key: {e}")))?,
        ),
        Identity::Token => None,
    };
    let csr = match &key {
        Some(key) => {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
                .map_err(|e| Error::Refused(format!("cannot make a certificate request: {e}")))?;
            params.distinguished_name.push(rcgen::DnType::CommonName, hostname);
            let request = params
                .serialize_request(key)
                .map_err(|e| Error::Refused(format!("cannot make a certificate request: {e}")))?;
            Some(request.pem().map_err(|e| Error::Refused(format!("cannot encode the certificate request: {e}")))?)
        }
        None => None,
    };

    // The device has no identity yet: the pinned client presents none.
    let mut transport = config.transport.clone();
    if let Some(tls) = transport.tls.as_mut() {
        tls.client_cert = None;
        tls.client_key = None;
    }
    let proxy = transport.proxy_settings(custody_tls::ProxySettings::from_process_env)?;
    let client = transport.tls_client()?.http_client(&proxy)?;
    let api = config.api_url();
    let url = format!("{}{}", api, routes::DEVICE_ENROLL.trim_start_matches('/'));
    let request = EnrollRequest { enrollment_id, hostname: hostname.to_owned(), csr };
    let service_error = |detail: String| Error::Service { url: url.clone(), detail };
    let response = client
        .post(&url)
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .map_err(|e| service_error(crate::error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(service_error(format!("enrollment answered HTTP {status}: {body}")));
    }
    let enrolled: EnrollResponse =
        response.json().await.map_err(|e| service_error(format!("the enrollment answer is not valid: {e}")))?;

    let (files, not_after) = match (enrolled.identity, key) {
        (DeviceIdentity::Certificate { chain, not_after }, Some(key)) => {
            write_file(&targets[1], key.serialize_pem().as_bytes(), 0o600)?;
            write_file(&targets[0], chain.as_bytes(), 0o644)?;
            (targets, Some(not_after))
        }
        (DeviceIdentity::Token { token }, None) => {
            write_file(&targets[0], token.as_bytes(), 0o600)?;
            (targets, None)
        }
        (DeviceIdentity::Token { .. }, Some(_)) => {
            return Err(service_error("the service answered a certificate request with a token".into()));
        }
        (DeviceIdentity::Certificate { .. }, None) => {
            return Err(service_error("the service answered a token request with a certificate".into()));
        }
    };
    std::fs::remove_file(&id_file).map_err(Error::io("remove", &id_file))?;
    Ok(Enrolled { device_id: enrolled.device_id, files, not_after })
}

/// Writes `data` to `path` through a temporary file in the same directory, synced, then renamed into place.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    let temporary = path.with_extension("tmp-enroll");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(Error::io("create", &temporary))?;
    file.write_all(data).map_err(Error::io("write", &temporary))?;
    file.sync_all().map_err(Error::io("sync", &temporary))?;
    std::fs::rename(&temporary, path).map_err(Error::io("rename", path))
}
