//! Size and count limits of request bodies. The service answers a larger body with `413` ([`crate::ErrorCode::
//! PayloadTooLarge`]) and a longer list or string with `400` naming the field. Within a major API version these
//! limits never shrink.

/// `POST /device/v1/enroll` body.
pub const MAX_ENROLL_BYTES: usize = 32 * 1024;
/// A PEM certificate signing request in an enrollment.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// A device's host name (enrollment).
pub const MAX_HOSTNAME_BYTES: usize = 128;

/// `PUT /device/v1/inventory` body.
pub const MAX_INVENTORY_BYTES: usize = 2 * 1024 * 1024;
/// Installed products in one inventory.
pub const MAX_PRODUCTS: usize = 1024;
/// Hardware ids in one inventory.
pub const MAX_HARDWARE_IDS: usize = 4096;
/// Installed updates in one inventory.
pub const MAX_INSTALLED_UPDATES: usize = 16384;

/// `POST /device/v1/events` body.
pub const MAX_EVENT_BATCH_BYTES: usize = 1024 * 1024;
/// Events in one batch.
pub const MAX_EVENTS_PER_BATCH: usize = 256;
/// An event's `detail`, in bytes.
pub const MAX_EVENT_DETAIL_BYTES: usize = 2048;
/// How far in the future (by the service's clock) an event's time may lie, in seconds.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 24 * 3600;

/// `POST /device/v1/peers` body.
pub const MAX_PEER_QUERY_BYTES: usize = 8 * 1024;
/// Interface addresses in one peer query.
pub const MAX_PEER_ADDRESSES: usize = 16;

/// Admin JSON bodies other than publishing.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;
/// `POST /admin/v1/publish` body (signed targets-role metadata).
pub const MAX_PUBLISH_BYTES: usize = 16 * 1024 * 1024;
/// Names of tokens, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Uses of one enrollment token.
pub const MAX_ENROLLMENT_USES: u32 = 1_000_000;
/// Validity of an enrollment token, in hours.
pub const MAX_ENROLLMENT_HOURS: u32 = 24 * 366;
/// Rows per page of `GET /admin/v1/devices` and of an update's compliance.
pub const MAX_PAGE: u32 = 1000;
