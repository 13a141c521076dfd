use std::path::PathBuf;

use crate::FetchError;

/// Why an update cycle or a target download failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("metadata was refused")]
    Metadata(#[from] custody_tuf::Error),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no trusted root in {}: initialise the metadata directory with a root first", .0.display())]
    NoTrustedRoot(PathBuf),
    #[error("the repository has no {0}")]
    Missing(String),
    #[error("target {0:?} is not listed by any role that may sign it")]
    TargetNotFound(String),
    #[error("target search for {path:?} gave up after visiting {limit} roles")]
    TooManyRoles { path: String, limit: usize },
}
