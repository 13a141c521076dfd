//! [`PinnedIssuerVerifier`]: the server certificate verifier of every custody metadata connection.
//!
//! One path-building pass of rustls-webpki does everything: the chain must reach a configured root, every certificate
//! on it must be within its validity period, carry the server-auth usage and be covered by a current CRL of its issuer
//! (stale CRLs are refused), and, through the `verify_path` callback, the path must contain a pinned key (an
//! intermediate's or the root's). Because the pin is checked on each *verified* path, a leaf of another intermediate
//! under the same root is refused even when the server appends the pinned intermediate to its chain. The server name
//! is checked last. Refusals become an [`Error`] naming what was wrong and which certificate.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::{Error, Result, SpkiPin};

/// Verifies a server's chain against custody's own roots, CRLs and issuer pins. See the module documentation.
pub struct PinnedIssuerVerifier {
    trust: PinnedTrust,
    /// Issuer name and next update of each CRL, for error messages.
    crl_info: Vec<(String, Option<i64>)>,
}

/// Who a certificate is, as every refusal shows it: subject, issuer, SPKI SHA-256 (and serial).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub spki_sha256: SpkiPin,
    /// Hex.
    pub serial: String,
}

impl PinnedIssuerVerifier {
    /// A verifier trusting `roots` only, checking revocation against `crls` (which must cover every certificate of a
    /// chain: the root's CRL for intermediates, each intermediate's CRL for its leaves), and requiring one of `pins` on
    /// the verified path.
    pub fn new(
        roots: &[CertificateDer<'_>],
        crls: &[CertificateRevocationListDer<'_>],
        pins: &[SpkiPin],
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Result<Self> {
        if roots.is_empty() {
            return Err(Error::Missing("root certificate", "set [tls] roots to the custody root CA certificate"));
        }
        if pins.is_empty() {
            return Err(Error::Missing("pin", "set [tls] pins to the SPKI SHA-256 of the service's issuing CA"));
        }
        // A service's certificates must be covered by a current CRL: with none, nothing would be checked.
        if crls.is_empty() {
            return Err(Error::Missing("CRL", "set [tls] crls to the root's and the issuing CA's CRLs"));
        }
        let trust = PinnedTrust::new(roots, crls, pins, algorithms)?;
        let crl_info = crls
            .iter()
            .map(|der| {
                let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
                    .map_err(|err| Error::InvalidCertificate(format!("CRL: {err}")))?;
                Ok((crl.issuer().to_string(), crl.next_update().map(|t| t.timestamp())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { trust, crl_info })
    }

    /// The configured pins.
    pub fn pins(&self) -> &[SpkiPin] {
        &self.trust.pins
    }

    /// Verifies a server's certificate chain for `server_name` at time `now`. This is the whole decision; the rustls
    /// [`ServerCertVerifier`] implementation only wraps its error.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<()> {
        let refuse = |err: webpki::Error, pin_refused: bool| {
            Refusal { verifier: self, end_entity, intermediates, server_name, now }.into_error(err, pin_refused)
        };
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|err| refuse(err, false))?;
        // Every certificate of the path must be covered by a CRL (`new` made sure there are some).
        let usage = webpki::KeyUsage::server_auth();
        (self.trust.verify_path(&ee, intermediates, now, usage, webpki::UnknownStatusPolicy::Deny))
            .map_err(|refused| refuse(refused.error, refused.unpinned))?;
        ee.verify_is_valid_for_subject_name(server_name).map_err(|err| refuse(err, false))?;
        Ok(())
    }
}

impl ServerCertVerifier for PinnedIssuerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verify(end_entity, intermediates, server_name, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(err) => {
                tracing::warn!(server = %server_name.to_str(), error = %err, "refused server certificate");
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err)))))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.trust.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.algorithms.supported_schemes()
    }
}

impl fmt::Debug for PinnedIssuerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedIssuerVerifier").field("trust", &self.trust).field("crls", &self.crl_info).finish()
    }
}

/// What custody's certificate verifiers share: the roots, the CRLs, the pins and the signature algorithms, and the one
/// path-building pass of webpki that checks them all. [`PinnedIssuerVerifier`] checks a service with it,
/// [`crate::PeerVerifier`] a device of the fleet; they differ in the key usage, in how a certificate no CRL covers is
/// treated, and in what they check after the path.
pub(crate) struct PinnedTrust {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    pub(crate) pins: Vec<SpkiPin>,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
}

/// A chain [`PinnedTrust::verify_path`] refused: webpki's error, and whether a complete, valid path to a root was
/// refused for want of a pinned key (webpki's error then only says that it found no other path).
pub(crate) struct PathRefusal {
    pub(crate) error: webpki::Error,
    pub(crate) unpinned: bool,
}

impl PinnedTrust {
    /// Parses `roots` and `crls`. What a verifier requires of them (a root and a pin always, CRLs for a service) its
    /// constructor checks first, with its own hint.
    pub(crate) fn new(
        roots: &[CertificateDer<'_>],
        crls: &[CertificateRevocationListDer<'_>],
        pins: &[SpkiPin],
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Result<Self> {
        let anchors = roots
            .iter()
            .map(|der| webpki::anchor_from_trusted_cert(der).map(|anchor| anchor.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| Error::InvalidCertificate(format!("root certificate: {err}")))?;
        let crls = crls
            .iter()
            .map(|der| webpki::OwnedCertRevocationList::from_der(der.as_ref()).map(webpki::CertRevocationList::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| Error::InvalidCertificate(format!("CRL: {err}")))?;
        Ok(Self { anchors, crls, pins: pins.to_vec(), algorithms })
    }

    /// Checks `end_entity` and `intermediates` at `now`: a path to a configured root whose signatures verify, every
    /// certificate on it within its validity period, `usage` on the leaf, revocation against the CRLs (a stale CRL
    /// refused; a certificate no CRL covers refused or allowed by `unknown_status`; with no CRL configured, none
    /// checked), and a pinned key on the path, an intermediate's or the root's. The pin is checked on each *verified*
    /// path (webpki's `verify_path` callback; refusing one makes webpki look for another), so a leaf of another
    /// intermediate under the same root is refused even when the chain carries the pinned intermediate too.
    pub(crate) fn verify_path(
        &self,
        end_entity: &webpki::EndEntityCert<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        unknown_status: webpki::UnknownStatusPolicy,
    ) -> Result<(), PathRefusal> {
        let unpinned = Cell::new(false);
        let check_pin = |path: &webpki::VerifiedPath<'_>| {
            let pinned = path.intermediate_certificates().any(|cert| self.is_pinned(&cert.subject_public_key_info()))
                || self.is_pinned(&webpki::spki_for_anchor(path.anchor()));
            if pinned {
                Ok(())
            } else {
                unpinned.set(true);
                Err(webpki::Error::UnknownIssuer)
            }
        };
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        // `RevocationOptionsBuilder::new` fails only on an empty list: no CRL configured, no revocation check.
        let revocation = webpki::RevocationOptionsBuilder::new(&crls).ok().map(|builder| {
            builder
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(unknown_status)
                .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                .build()
        });
        let verified = end_entity.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            revocation,
            Some(&check_pin),
        );
        match verified {
            Ok(_) => Ok(()),
            Err(error) => Err(PathRefusal { error, unpinned: unpinned.get() }),
        }
    }

    fn is_pinned(&self, spki_der: &[u8]) -> bool {
        self.pins.contains(&SpkiPin::of_spki(spki_der))
    }
}

impl fmt::Debug for PinnedTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedTrust")
            .field("roots", &self.anchors.len())
            .field("crls", &self.crls.len())
            .field("pins", &self.pins)
            .finish()
    }
}

impl CertInfo {
    fn unparsable(der: &[u8]) -> Self {
        Self {
            subject: "(unparsable certificate)".into(),
            issuer: "(unknown)".into(),
            spki_sha256: SpkiPin::of_spki(der),
            serial: String::new(),
        }
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subject {:?}, issuer {:?}, SPKI SHA-256 {}", self.subject, self.issuer, self.spki_sha256)?;
        if !self.serial.is_empty() {
            write!(f, ", serial {}", self.serial)?;
        }
        Ok(())
    }
}

/// A failed verification, turned into an [`Error`] that names the certificate concerned. Only runs on failure, so
/// it may parse the presented certificates at leisure.
struct Refusal<'a> {
    verifier: &'a PinnedIssuerVerifier,
    end_entity: &'a CertificateDer<'a>,
    intermediates: &'a [CertificateDer<'a>],
    server_name: &'a ServerName<'a>,
    now: UnixTime,
}

/// A presented certificate, parsed for an error message.
struct Presented {
    info: CertInfo,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    serial_raw: Vec<u8>,
    not_before: i64,
    not_after: i64,
    sans: Vec<String>,
}

impl Refusal<'_> {
    fn into_error(self, err: webpki::Error, pin_refused: bool) -> Error {
        let host = self.server_name.to_str().into_owned();
        let presented: Vec<Option<Presented>> =
            std::iter::once(self.end_entity).chain(self.intermediates).map(|der| Presented::parse(der)).collect();
        let leaf = match presented.first() {
            Some(Some(leaf)) => leaf.info.clone(),
            _ => CertInfo::unparsable(self.end_entity),
        };
        let now = self.now.as_secs() as i64;
        // The presented certificate matching `pred`, else the leaf.
        let which = |pred: &dyn Fn(&Presented) -> bool| {
            Box::new(presented.iter().flatten().find(|p| pred(p)).map_or_else(|| leaf.clone(), |p| p.info.clone()))
        };
        // The presented certificate that issued the leaf, if the server sent it.
        let leaf_issuer = presented.first().and_then(Option::as_ref).and_then(|leaf| {
            presented.iter().skip(1).flatten().find(|p| p.subject_raw == leaf.issuer_raw && p.info != leaf.info)
        });
        let pin_mismatch = |issuer: Option<&Presented>| Error::PinMismatch {
            host: host.clone(),
            cert: Box::new(leaf.clone()),
            issuer_spki: issuer.map_or_else(|| "(issuer not presented)".to_owned(), |p| p.info.spki_sha256.to_string()),
            pins: self.verifier.trust.pins.iter().map(SpkiPin::to_string).collect::<Vec<_>>().join(", "),
        };
        if pin_refused {
            // A complete, valid path to a root existed, but none through a pinned key.
            return pin_mismatch(leaf_issuer);
        }
        match err {
            webpki::Error::CertExpired { not_after, .. } => Error::Expired {
                cert: which(&|p| p.not_after == not_after.as_secs() as i64 && p.not_after < now),
                host,
                not_after: format_time(not_after.as_secs() as i64),
                now: format_time(now),
            },
            webpki::Error::CertNotValidYet { not_before, .. } => Error::NotYetValid {
                cert: which(&|p| p.not_before == not_before.as_secs() as i64 && p.not_before > now),
                host,
                not_before: format_time(not_before.as_secs() as i64),
                now: format_time(now),
            },
            webpki::Error::CertRevoked => Error::Revoked {
                cert: which(&|p| {
                    self.verifier.trust.crls.iter().any(|crl| matches!(crl.find_serial(&p.serial_raw), Ok(Some(_))))
                }),
                host,
            },
            webpki::Error::CertNotValidForName(_) => Error::NameMismatch {
                names: match presented.first().and_then(Option::as_ref) {
                    Some(leaf) if !leaf.sans.is_empty() => leaf.sans.join(", "),
                    _ => "no DNS name or IP address".to_owned(),
                },
                cert: Box::new(leaf.clone()),
                host,
            },
            webpki::Error::UnknownIssuer => match leaf_issuer {
                // The server sent an issuer that is not pinned and does not chain to our root: an unexpected issuer,
                // such as a TLS-inspecting proxy's CA or another CA the machine trusts.
                Some(issuer) if !self.verifier.trust.pins.contains(&issuer.info.spki_sha256) => {
                    pin_mismatch(Some(issuer))
                }
                // The issuer is missing from the chain, or pinned but not under the configured root.
                _ => Error::UnknownIssuer { host, cert: Box::new(leaf.clone()) },
            },
            webpki::Error::CrlExpired { next_update, .. } => {
                let next = next_update.as_secs() as i64;
                let crl_issuer = self
                    .verifier
                    .crl_info
                    .iter()
                    .find(|(_, crl_next)| *crl_next == Some(next))
                    .map_or_else(|| "(unknown)".to_owned(), |(issuer, _)| issuer.clone());
                Error::StaleCrl {
                    host,
                    cert: Box::new(leaf.clone()),
                    crl_issuer,
                    next_update: format_time(next),
                    now: format_time(now),
                }
            }
            webpki::Error::UnknownRevocationStatus => Error::RevocationUnknown { host, cert: Box::new(leaf.clone()) },
            webpki::Error::RequiredEkuNotFoundContext(_) => Error::WrongUsage { host, cert: Box::new(leaf.clone()) },
            other => Error::Rejected { host, cert: Box::new(leaf.clone()), reason: format!("{other}") },
        }
    }
}

impl Presented {
    fn parse(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let sans = match cert.subject_alternative_name() {
            Ok(Some(ext)) => ext
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(|b| std::net::Ipv4Addr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(|b| std::net::Ipv6Addr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(Self {
            info: CertInfo {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                spki_sha256: SpkiPin::of_spki(cert.public_key().raw),
                serial: hex::encode(cert.raw_serial()),
            },
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            serial_raw: cert.raw_serial().to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sans,
        })
    }
}

fn format_time(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).map_or_else(|_| format!("{seconds} s after the epoch"), |t| t.to_string())
}
