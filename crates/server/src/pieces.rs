//! Piece layers of published content (peer-to-peer delivery): when a publish lists a target whose catalog entry has
//! `pieces`, the service computes the piece tree of the stored bytes itself, refuses the publish if its root is not
//! the signed one, and keeps the layer (32 bytes per piece) beside the content, where the origin serves it at
//! `/pieces/sha256/<hex>` ([`crate::origin::pieces`]). Devices and peers check a layer against the signed root
//! before using it; the service's check means a publisher's mistake is caught at publish time, not on devices.
//!
//! A content has one layer: a later publish of the same bytes with another piece size is refused, so that the URL
//! keeps naming the same bytes (it is cached as immutable).

use custody_catalog::UpdateEntry;
use custody_tuf::TargetFile;

use crate::content::ContentStore;
use crate::error::ApiError;

/// For a new or changed target of a publish whose content is stored: when its catalog entry has pieces, checks
/// the signed root against the stored bytes and stores the layer. Targets without pieces pass unchanged.
pub async fn publish_layer(store: &dyn ContentStore, path: &str, file: &TargetFile) -> Result<(), ApiError> {
    let Some(custom) = file.custom.as_ref().filter(|custom| custom.get(custody_catalog::NAMESPACE).is_some()) else {
        return Ok(());
    };
    let entry = UpdateEntry::parse(custom).map_err(|err| refuse(path, err.to_string()))?;
    let Some(signed) = entry.content().piece_tree() else { return Ok(()) };
    let sha256 = entry.content().sha256.0;
    let piece_size = signed.layout().piece_size();
    let computed = store
        .compute_pieces(sha256, piece_size)
        .await
        .map_err(|err| ApiError::internal(format!("content store: computing the piece tree: {err}")))?
        .ok_or_else(|| refuse(path, format!("no content with sha256 {} is stored", entry.content().sha256)))?
        .map_err(|err| refuse(path, format!("the piece tree of the stored content: {err}")))?;
    if computed.tree() != &signed {
        return Err(refuse(
            path,
            format!(
                "the signed piece tree root is {}, but the stored content's piece tree ({} byte pieces) has root {}: \
                 the catalog entry was not computed from these bytes",
                signed.root(),
                piece_size.get(),
                computed.root()
            ),
        ));
    }
    let layer = computed.to_layer_bytes();
    let stored = store
        .piece_layer(sha256)
        .await
        .map_err(|err| ApiError::internal(format!("content store: reading the piece layer: {err}")))?;
    match stored {
        Some(stored) if stored == layer => Ok(()),
        Some(stored) => Err(refuse(
            path,
            format!(
                "this content was published before with another piece size (a layer of {} pieces, not {}); a \
                 content has one piece layer, so publish it with the piece size it was first published with",
                stored.len() / 32,
                layer.len() / 32
            ),
        )),
        None => {
            store
                .put_piece_layer(sha256, layer)
                .await
                .map_err(|err| ApiError::internal(format!("content store: storing the piece layer: {err}")))?;
            tracing::info!(target = path, pieces = computed.piece_hashes().len(), "piece layer stored");
            Ok(())
        }
    }
}

fn refuse(path: &str, message: String) -> ApiError {
    let message = format!("target {path:?}: {message}");
    metrics::counter!("custody_publishes_total", "result" => "rejected").increment(1);
    tracing::warn!(%message, "publish rejected");
    ApiError::rejected(message)
}
