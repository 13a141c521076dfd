//! The issue-3 matrix: custody's pinned client against real TLS servers on 127.0.0.1, directly and through real
//! proxies. Each refusal is also checked against a control (a naive client, or the standard rustls verifier) that shows
//! the connection would otherwise have worked, so these tests fail if the refusal came from a broken setup.

mod support;

use custody_pki::CertKind;
use custody_tls::{Error, ProxySettings};
use support::*;

#[tokio::test]
async fn valid_chain_connects() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    assert_eq!(get(&pki.client(), &url(&server)).await.unwrap(), "ok");
    // The IP subject alternative name works too.
    let by_ip = format!("https://127.0.0.1:{}/", server.local_addr().port());
    assert_eq!(get(&pki.client(), &by_ip).await.unwrap(), "ok");
}

#[tokio::test]
async fn leaf_from_second_intermediate_under_same_root_is_refused() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.other);
    let (server, _files) = serve(&leaf).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::PinMismatch { .. }), "{err}");
    assert_names(&err, &leaf.cert);
    assert!(err.to_string().contains(&Pki::pin(&pki.other).to_string()), "shows the presented issuer's SPKI: {err}");
    // Control: the chain is valid under the root, so an unpinned client would accept it.
    assert_eq!(get(&naive_client(&[&pki.root.cert], None), &url(&server)).await.unwrap(), "ok");
}

#[tokio::test]
async fn second_intermediate_leaf_with_pinned_intermediate_appended_is_refused() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.other);
    // The attacker's chain: their leaf, their intermediate, and the (public) pinned intermediate appended.
    let (server, _files) = serve_chain(&[&leaf.cert, &pki.other.cert, &pki.service.cert], &leaf.key_pem).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::PinMismatch { .. }), "{err}");
    // Control: a check on the presented chain would have found the pinned key in it.
    let presented_contains_pin = [&pki.other.cert, &pki.service.cert]
        .iter()
        .any(|c| custody_tls::SpkiPin(c.spki_sha256) == Pki::pin(&pki.service));
    assert!(presented_contains_pin);
    assert_eq!(get(&naive_client(&[&pki.root.cert], None), &url(&server)).await.unwrap(), "ok");
}

#[tokio::test]
async fn revoked_leaf_is_refused() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.service);
    pki.revoke(&leaf);
    let (server, _files) = serve(&leaf).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::Revoked { .. }), "{err}");
    assert_names(&err, &leaf.cert);
    assert!(err.to_string().contains(&serial_hex(&leaf.cert)), "{err}");
    assert_eq!(get(&naive_client(&[&pki.root.cert], None), &url(&server)).await.unwrap(), "ok");
}

#[tokio::test]
async fn revoked_intermediate_is_refused() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.service);
    let intermediate = support::Leaf { cert: pki.service.cert.clone(), key_pem: String::new(), chain: vec![] };
    pki.revoke(&intermediate); // goes into the root's CRL
    let (server, _files) = serve(&leaf).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::Revoked { .. }), "{err}");
    assert_names(&err, &pki.service.cert);
}

#[tokio::test]
async fn expired_leaf_is_refused() {
    let pki = Pki::new();
    let names = CertKind::Server { names: vec!["localhost".into()] };
    let leaf = pki.leaf(&pki.service, names, pki.now - DAY * 30, 10);
    let (server, _files) = serve(&leaf).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert_names(&err, &leaf.cert);
}

#[tokio::test]
async fn not_yet_valid_leaf_is_refused() {
    let pki = Pki::new();
    let names = CertKind::Server { names: vec!["localhost".into()] };
    let leaf = pki.leaf(&pki.service, names, pki.now + DAY * 2, 10);
    let (server, _files) = serve(&leaf).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::NotYetValid { .. }), "{err}");
    assert_names(&err, &leaf.cert);
}

#[tokio::test]
async fn wrong_name_is_refused() {
    let pki = Pki::new();
    let names = CertKind::Server { names: vec!["updates.example.com".into()] };
    let leaf = pki.leaf(&pki.service, names, pki.now - DAY, 10);
    let (server, _files) = serve(&leaf).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::NameMismatch { .. }), "{err}");
    assert!(err.to_string().contains("updates.example.com"), "{err}");
    assert_names(&err, &leaf.cert);
}

#[tokio::test]
async fn stale_crl_is_refused() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.service);
    let (server, _files) = serve(&leaf).await;
    let crls = vec![pki.crl(&pki.root), pki.crl_until(&pki.service, pki.now - DAY)];
    let client = pki.client_config(&[Pki::pin(&pki.service)], crls).http_client(&ProxySettings::direct()).unwrap();
    let err = get(&client, &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::StaleCrl { .. }), "{err}");
    assert!(err.to_string().contains("service CA"), "names the CRL's issuer: {err}");
    assert_names(&err, &leaf.cert);
    // Control: the same client with a current CRL connects.
    assert_eq!(get(&pki.client(), &url(&server)).await.unwrap(), "ok");
}

#[tokio::test]
async fn missing_crl_is_refused() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    let client = pki
        .client_config(&[Pki::pin(&pki.service)], vec![pki.crl(&pki.root)])
        .http_client(&ProxySettings::direct())
        .unwrap();
    let err = get(&client, &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::RevocationUnknown { .. }), "{err}");
}

#[tokio::test]
async fn chain_from_ca_in_machine_trust_store_is_refused() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.foreign_int);
    let (server, _files) = serve(&leaf).await;
    // A "machine trust store": the foreign CA added next to the custody root. A client using it would connect...
    let system_store = naive_client(&[&pki.foreign_root.cert, &pki.root.cert], None);
    assert_eq!(get(&system_store, &url(&server)).await.unwrap(), "ok");
    // ...custody's client never looks at it.
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::PinMismatch { .. }), "{err}");
    assert_names(&err, &leaf.cert);
    assert!(err.to_string().contains(&Pki::pin(&pki.foreign_int).to_string()), "{err}");
}

#[tokio::test]
async fn leaf_without_its_intermediate_is_unknown_issuer() {
    let pki = Pki::new();
    let leaf = pki.server_leaf(&pki.service);
    let (server, _files) = serve_chain(&[&leaf.cert], &leaf.key_pem).await;
    let err = get(&pki.client(), &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::UnknownIssuer { .. }), "{err}");
    assert_names(&err, &leaf.cert);
    assert!(err.to_string().contains("custody endpoints"), "{err}");
}

#[tokio::test]
async fn through_connect_proxy_connects() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    let proxy = ConnectProxy::start().await;
    let client = pki
        .client_config(&[Pki::pin(&pki.service)], pki.crls())
        .http_client(&ProxySettings::all(&proxy.url(), &[]).unwrap())
        .unwrap();
    assert_eq!(get(&client, &url(&server)).await.unwrap(), "ok");
    assert_eq!(proxy.targets(), [format!("localhost:{}", server.local_addr().port())]);
}

#[tokio::test]
async fn proxy_from_environment_and_no_proxy() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    let proxy = ConnectProxy::start().await;
    let config = pki.client_config(&[Pki::pin(&pki.service)], pki.crls());
    // The process's environment, as the agent's service manager would set it (passed in, not set globally).
    let env = ProxySettings::from_env_vars([("HTTPS_PROXY", proxy.url())]).unwrap();
    assert_eq!(get(&config.http_client(&env).unwrap(), &url(&server)).await.unwrap(), "ok");
    assert_eq!(proxy.targets().len(), 1);
    let env = ProxySettings::from_env_vars([("HTTPS_PROXY", proxy.url()), ("NO_PROXY", "localhost".into())]).unwrap();
    assert_eq!(get(&config.http_client(&env).unwrap(), &url(&server)).await.unwrap(), "ok");
    assert_eq!(proxy.targets().len(), 1, "NO_PROXY bypassed the proxy");
}

#[tokio::test]
async fn through_tls_intercepting_proxy_is_refused_with_pin_mismatch() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    // The proxy mints a certificate for the host from its own CA, which the machine trusts, and re-originates TLS.
    let minted = pki.server_leaf(&pki.foreign_int);
    let proxy = ConnectProxy::start_intercepting(Interception {
        chain: vec![minted.cert.der.clone(), pki.foreign_int.cert.der.clone()],
        key_pem: minted.key_pem.clone(),
        upstream_roots: vec![pki.root.cert.der.clone()],
    })
    .await;
    // Control: a client trusting the proxy's CA gets through, and the proxy sees the plaintext.
    let naive = naive_client(&[&pki.foreign_root.cert], Some(proxy.addr));
    assert_eq!(get(&naive, &url(&server)).await.unwrap(), "ok");

    let client = pki
        .client_config(&[Pki::pin(&pki.service)], pki.crls())
        .http_client(&ProxySettings::all(&proxy.url(), &[]).unwrap())
        .unwrap();
    let err = get(&client, &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::PinMismatch { .. }), "{err}");
    assert_names(&err, &minted.cert);
    let message = err.to_string();
    assert!(message.contains("TLS-inspecting proxy") && message.contains("custody endpoints"), "{message}");
}

#[tokio::test]
async fn pin_rotation_accepts_either_intermediate() {
    let pki = Pki::new();
    let (old, _old_files) = serve(&pki.server_leaf(&pki.service)).await;
    let (new, _new_files) = serve(&pki.server_leaf(&pki.other)).await;
    let both = [Pki::pin(&pki.service), Pki::pin(&pki.other)];
    let client = pki.client_config(&both, pki.crls()).http_client(&ProxySettings::direct()).unwrap();
    assert_eq!(get(&client, &url(&old)).await.unwrap(), "ok");
    assert_eq!(get(&client, &url(&new)).await.unwrap(), "ok");
    // After the rotation, only the new pin: the old intermediate is refused.
    let client = pki.client_config(&both[1..], pki.crls()).http_client(&ProxySettings::direct()).unwrap();
    assert!(matches!(get(&client, &url(&old)).await, Err(Error::PinMismatch { .. })));
    assert_eq!(get(&client, &url(&new)).await.unwrap(), "ok");
}

#[tokio::test]
async fn root_pin_accepts_any_intermediate_of_that_root() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.other)).await;
    let client = pki.client_config(&[Pki::pin(&pki.root)], pki.crls()).http_client(&ProxySettings::direct()).unwrap();
    assert_eq!(get(&client, &url(&server)).await.unwrap(), "ok");
}

#[tokio::test]
async fn device_certificate_is_not_accepted_as_a_server() {
    let pki = Pki::new();
    let leaf = pki.leaf(&pki.device, CertKind::Device, pki.now - DAY, 10);
    let (server, _files) = serve(&leaf).await;
    let client = pki.client_config(&[Pki::pin(&pki.device)], pki.crls()).http_client(&ProxySettings::direct()).unwrap();
    let err = get(&client, &url(&server)).await.unwrap_err();
    assert!(matches!(err, Error::WrongUsage { .. }), "{err}");
}

#[tokio::test]
async fn plain_http_client_refuses_every_https_server() {
    let pki = Pki::new();
    let (server, _files) = serve(&pki.server_leaf(&pki.service)).await;
    let client = custody_tls::plain_http_client(&custody_tls::ProxySettings::direct()).unwrap();
    let err = client.get(url(&server)).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("plain HTTP only"), "{err:?}");
    // Control: the server is fine for the pinned client.
    assert_eq!(get(&pki.client(), &url(&server)).await.unwrap(), "ok");
}
