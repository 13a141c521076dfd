//! Full TLS 1.3 handshakes with custody's pinned verifier against rustls' standard `WebPkiServerVerifier`, same PKI,
//! same CRLs, same run, in memory (client and server rustls connections pumping bytes to each other, so the figure is
//! the CPU cost of a whole handshake on both sides, without socket noise). Session resumption is off on both sides of
//! the comparison, so every handshake is a full one.
//!
//! Run: `cargo bench -p custody-tls --bench handshake` (optionally `-- ROUNDS HANDSHAKES_PER_ROUND`).
//! Exits with status 1 if the pinned verifier's handshake costs more than 10% over the standard one.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use custody_pki::{CaSigner, CertKind, CertRequest, IntermediateRole, Validity};
use custody_tls::{SpkiPin, TlsClientConfig};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

const LIMIT: f64 = 1.10;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    // Many short rounds, interleaved: on a shared machine both sides then see the same background load.
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(151);
    let per_round: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);

    let fixture = Fixture::new();
    let pinned = fixture.pinned_client();
    let standard = fixture.standard_client(true);
    let standard_no_crl = fixture.standard_client(false);
    let server = fixture.server();
    let name = ServerName::try_from("updates.example").expect("valid name");

    // Warm up, and check that every configuration really completes a handshake.
    for config in [&pinned, &standard, &standard_no_crl] {
        for _ in 0..50 {
            handshake(config, &server, &name);
        }
    }

    let mut samples: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        // Alternate the order so that neither side always runs first (caches, frequency scaling).
        let order: [usize; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for which in order {
            let config = [&pinned, &standard, &standard_no_crl][which];
            let start = Instant::now();
            for _ in 0..per_round {
                handshake(config, &server, &name);
            }
            samples[which].push(start.elapsed().as_secs_f64() * 1e6 / per_round as f64);
        }
    }
    let [pinned_us, standard_us, no_crl_us] = samples.map(|mut s| median(&mut s));

    // The verifiers alone, on the same chain, interleaved the same way.
    let pinned_config = fixture.pinned_config();
    let standard_verifier = fixture.standard_verifier(true);
    let verifiers: [&dyn ServerCertVerifier; 2] = [pinned_config.verifier().as_ref(), standard_verifier.as_ref()];
    let mut verify_samples: [Vec<f64>; 2] = Default::default();
    let now = UnixTime::now();
    for round in 0..rounds {
        for which in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let start = Instant::now();
            for _ in 0..per_round {
                black_box(verifiers[which].verify_server_cert(&fixture.leaf, &fixture.intermediates, &name, &[], now))
                    .expect("the fixture chain verifies");
            }
            verify_samples[which].push(start.elapsed().as_secs_f64() * 1e6 / per_round as f64);
        }
    }
    let [pinned_verify, standard_verify] = verify_samples.map(|mut s| median(&mut s));

    let ratio = pinned_us / standard_us;
    println!("TLS 1.3 full handshake, in memory, ECDSA P-256 chain (leaf + intermediate + root), CRLs for the chain");
    println!("rounds: {rounds} x {per_round} handshakes per verifier (median of rounds)");
    println!("standard WebPkiServerVerifier + CRLs : {standard_us:8.1} us/handshake");
    println!("PinnedIssuerVerifier (custody-tls)   : {pinned_us:8.1} us/handshake");
    println!("standard verifier without CRLs       : {no_crl_us:8.1} us/handshake (for reference)");
    println!("verify_server_cert alone             : standard {standard_verify:.1} us, pinned {pinned_verify:.1} us");
    println!("ratio pinned / standard              : {ratio:.3} (limit {LIMIT:.2})");
    if ratio > LIMIT {
        println!("FAIL: the pinned verifier costs more than {:.0}% over the standard one", (LIMIT - 1.0) * 100.0);
        std::process::exit(1);
    }
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// One full handshake between fresh connections, bytes pumped in memory.
fn handshake(client_config: &Arc<ClientConfig>, server_config: &Arc<ServerConfig>, name: &ServerName<'static>) {
    let mut client = ClientConnection::new(client_config.clone(), name.clone()).expect("client connection");
    let mut server = ServerConnection::new(server_config.clone()).expect("server connection");
    let mut buffer = Vec::with_capacity(8192);
    while client.is_handshaking() || server.is_handshaking() {
        pump(&mut client, &mut server, &mut buffer);
        server.process_new_packets().expect("server handshake");
        pump(&mut server, &mut client, &mut buffer);
        client.process_new_packets().expect("client handshake");
    }
}

fn pump<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>, buffer: &mut Vec<u8>) {
    buffer.clear();
    while from.wants_write() {
        from.write_tls(buffer).expect("write to memory");
    }
    let mut slice = &buffer[..];
    while !slice.is_empty() {
        to.read_tls(&mut slice).expect("read from memory");
    }
}

/// A root, the service intermediate and a leaf for `updates.example`, with current CRLs for the root and intermediate.
struct Fixture {
    root: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    leaf_key: String,
    crls: Vec<CertificateRevocationListDer<'static>>,
    pin: SpkiPin,
}

impl Fixture {
    fn new() -> Self {
        let now = jiff::Timestamp::now();
        let validity = Validity::days_from(now - jiff::SignedDuration::from_hours(24), 365).expect("validity");
        let issue = |kind, serial: u8, issuer: Option<&CaSigner>| {
            let key = custody_pki::generate_key().expect("key");
            let cert = CertRequest {
                kind,
                common_name: format!("bench {serial}"),
                serial: custody_pki::Serial::from_random([serial; 16]),
                validity,
                key: &key,
            }
            .sign(issuer)
            .expect("certificate");
            (cert, key.serialize_pem())
        };
        let (root, root_key) = issue(CertKind::Root, 1, None);
        let root_signer = CaSigner::from_pem(&root.pem, &root_key).expect("root signer");
        let (int, int_key) = issue(CertKind::Intermediate(IntermediateRole::Service), 2, Some(&root_signer));
        let int_signer = CaSigner::from_pem(&int.pem, &int_key).expect("intermediate signer");
        let (leaf, leaf_key) = issue(CertKind::Server { names: vec!["updates.example".into()] }, 3, Some(&int_signer));
        let next = now + jiff::SignedDuration::from_hours(24 * 30);
        let crls = [&root_signer, &int_signer]
            .iter()
            .map(|signer| {
                let pem = signer.crl(&[], 1, now - jiff::SignedDuration::from_hours(1), next).expect("crl");
                CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).expect("crl pem")
            })
            .collect();
        Self {
            root: root.der,
            leaf: leaf.der,
            intermediates: vec![int.der],
            leaf_key,
            crls,
            pin: SpkiPin(int.spki_sha256),
        }
    }

    fn pinned_config(&self) -> TlsClientConfig {
        let mut builder = TlsClientConfig::builder().root(self.root.clone()).pin(self.pin);
        for crl in &self.crls {
            builder = builder.crl(crl.clone());
        }
        builder.build().expect("pinned config")
    }

    fn pinned_client(&self) -> Arc<ClientConfig> {
        self.pinned_config().rustls_config()
    }

    fn standard_verifier(&self, crls: bool) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).expect("root");
        let builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
        let builder = if crls { builder.with_crls(self.crls.clone()).enforce_revocation_expiration() } else { builder };
        builder.build().expect("standard verifier")
    }

    fn standard_client(&self, crls: bool) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_webpki_verifier(self.standard_verifier(crls))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }

    fn server(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::from_pem_slice(self.leaf_key.as_bytes()).expect("key");
        let mut chain = vec![self.leaf.clone()];
        chain.extend(self.intermediates.iter().cloned());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
