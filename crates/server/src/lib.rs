//! The custody update service (`custody server`): one process, two listeners.
//!
//! - **HTTPS** (custody-tls's [`custody_tls::HttpsServer`]: hot-reloaded certificate, client certificates on the
//!   device routes): TUF metadata of the repository ([`metadata`]), the device API ([`device_api`]), the admin API
//!   ([`admin_api`]), `/metrics`.
//! - **plain HTTP**: the content origin ([`origin`]): content-addressed, immutable, ranges, strong ETags; anything
//!   may cache it, since devices verify content against signed hashes.
//!
//! The service holds no root or targets key: publishers sign targets metadata where they run, and
//! [`repository::RepoService`] checks it against the delegation tree before publishing it with the online
//! snapshot and timestamp keys, which it also uses to re-sign those roles before they expire. Storage is custody-store
//! (devices, inventory, events, compliance, admin tokens) and a [`content::ContentStore`] for payloads.
//!
//! [`start`] opens (or on first start creates, [`datadir`]) the data directory and runs everything;
//! [`Running::shutdown`] stops it gracefully. The HTTP interface is documented in docs/api.md, the configuration in
//! docs/configuration.md ("Service").

pub mod admin_api;
pub mod app;
pub mod config;
pub mod content;
pub mod datadir;
pub mod device_api;
pub mod enrollment;
mod error;
pub mod events;
pub mod metadata;
pub mod origin;
pub mod peers;
pub mod pieces;
pub mod pki;
pub mod repository;
pub mod request;
mod service;
pub mod throttle;

pub use config::ServiceConfig;
pub use datadir::DataDir;
pub use error::{ApiError, Error};
pub use service::{Running, metrics_handle, shutdown_signal, start};
