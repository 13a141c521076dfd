//! Paths of the service. The device and admin APIs carry their major version in the path; the metadata and content
//! paths follow the TUF repository layout and are not versioned (their format is TUF's).
//!
//! Listener by listener:
//!
//! | Listener | Paths |
//! |---|---|
//! | HTTPS (pinned) | [`METADATA`], [`DEVICE_PREFIX`], [`ADMIN_PREFIX`], [`METRICS`], [`HEALTH`] |
//! | plain HTTP | [`TARGETS`], [`CONTENT_SHA256`], [`PKI`], [`HEALTH`] |

/// Prefix of the device API.
pub const DEVICE_PREFIX: &str = "/device/v1";
/// `POST`: enrollment with an enrollment token (no device identity yet).
pub const DEVICE_ENROLL: &str = "/device/v1/enroll";
/// `PUT`: the device's current inventory.
pub const DEVICE_INVENTORY: &str = "/device/v1/inventory";
/// `POST`: a batch of events.
pub const DEVICE_EVENTS: &str = "/device/v1/events";
/// `POST`: peers of a content for peer-to-peer delivery (and the device's announcement as one).
pub const DEVICE_PEERS: &str = "/device/v1/peers";
/// The device routes that need a device identity (a client certificate, or a device token where allowed).
pub const DEVICE_AUTHENTICATED: [&str; 3] = [DEVICE_INVENTORY, DEVICE_EVENTS, DEVICE_PEERS];

/// Prefix of the admin API.
pub const ADMIN_PREFIX: &str = "/admin/v1";
/// `GET`: every update in the catalog.
pub const ADMIN_UPDATES: &str = "/admin/v1/updates";
/// `GET`: the compliance summary of every update.
pub const ADMIN_COMPLIANCE: &str = "/admin/v1/compliance";
/// `GET`: devices (paged).
pub const ADMIN_DEVICES: &str = "/admin/v1/devices";
/// `GET`, `POST`: admin tokens.
pub const ADMIN_TOKENS: &str = "/admin/v1/tokens";
/// `GET`, `POST`: enrollment tokens.
pub const ADMIN_ENROLLMENT_TOKENS: &str = "/admin/v1/enrollment-tokens";
/// `HEAD`, `PUT` `.../<sha256 hex>`: content upload before publishing.
pub const ADMIN_CONTENT_SHA256: &str = "/admin/v1/content/sha256";
/// `POST`: signed targets-role metadata to publish.
pub const ADMIN_PUBLISH: &str = "/admin/v1/publish";
/// `GET`: roles waiting for more signatures.
pub const ADMIN_STAGED: &str = "/admin/v1/staged";
/// `GET`: versions and expiry of the published metadata.
pub const ADMIN_STATUS: &str = "/admin/v1/status";
/// `GET`: download statistics (bytes by source, peering efficiency) per device group.
pub const ADMIN_DELIVERY: &str = "/admin/v1/delivery";

/// TUF metadata (HTTPS only): `/metadata/<N>.<role>.json`, `/metadata/timestamp.json`, `/metadata/merkle/...`.
pub const METADATA: &str = "/metadata";
/// Target content under its consistent name (plain HTTP): `/targets/<dir>/<HASH>.<name>`.
pub const TARGETS: &str = "/targets";
/// Content by SHA-256 (plain HTTP): `/content/sha256/<64 hex digits>`.
pub const CONTENT_SHA256: &str = "/content/sha256";
/// Certificates and CRLs (signed, so plain HTTP is fine; a device with a stale CRL cannot use HTTPS).
pub const PKI: &str = "/pki";
/// Prometheus metrics (HTTPS).
pub const METRICS: &str = "/metrics";
/// `200 ok` while the service runs (both listeners).
pub const HEALTH: &str = "/health";

/// `/admin/v1/updates/<id>`.
pub fn admin_update(id: &str) -> String {
    format!("{ADMIN_UPDATES}/{id}")
}

/// `/admin/v1/updates/<id>/compliance`.
pub fn admin_update_compliance(id: &str) -> String {
    format!("{ADMIN_UPDATES}/{id}/compliance")
}

/// `/admin/v1/devices/<id>`.
pub fn admin_device(id: &str) -> String {
    format!("{ADMIN_DEVICES}/{id}")
}

/// `POST`: `/admin/v1/devices/<id>/revoke`.
pub fn admin_device_revoke(id: &str) -> String {
    format!("{ADMIN_DEVICES}/{id}/revoke")
}

/// `/admin/v1/tokens/<id>`.
pub fn admin_token(id: &str) -> String {
    format!("{ADMIN_TOKENS}/{id}")
}

/// `/admin/v1/enrollment-tokens/<id>`.
pub fn admin_enrollment_token(id: &str) -> String {
    format!("{ADMIN_ENROLLMENT_TOKENS}/{id}")
}

/// `/admin/v1/content/sha256/<hex>`.
pub fn admin_content(sha256_hex: &str) -> String {
    format!("{ADMIN_CONTENT_SHA256}/{sha256_hex}")
}

/// `/admin/v1/staged/<role>`, the role name percent-encoded into one segment.
pub fn admin_staged_role(role: &str) -> String {
    format!("{ADMIN_STAGED}/{}", encode_segment(role))
}

/// `/content/sha256/<hex>`.
pub fn content_sha256(sha256_hex: &str) -> String {
    format!("{CONTENT_SHA256}/{sha256_hex}")
}

/// Percent-encodes everything but `A-Za-z0-9-._~` (as TUF role file names are encoded).
fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_carry_their_version_and_encode_role_names() {
        assert!(DEVICE_AUTHENTICATED.iter().all(|r| r.starts_with(DEVICE_PREFIX)));
        assert!(!DEVICE_AUTHENTICATED.contains(&DEVICE_ENROLL));
        assert_eq!(admin_update_compliance("x"), "/admin/v1/updates/x/compliance");
        assert_eq!(admin_staged_role("acme/x y"), "/admin/v1/staged/acme%2Fx%20y");
    }
}
