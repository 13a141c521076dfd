#!/usr/bin/env bash
# custody in five minutes: a publisher signs an update, a device verifies and downloads it, and a tampered copy is
# refused. Everything happens in a temporary directory; nothing listens on the network.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building custody"
cargo build --quiet -p custody
custody="$PWD/target/debug/custody"
work=$(mktemp -d "${TMPDIR:-/tmp}/custody-quickstart.XXXXXX")
repo="$work/repo"
say() { printf '\n== %s\n' "$*"; }

say "publisher: a new repository (root and targets keys belong offline; snapshot and timestamp keys online)"
"$custody" repo init -C "$repo" --root-keys 2 --root-threshold 2

say "publisher: the product 'acme-agent' gets its own delegated role"
"$custody" repo delegate-product -C "$repo" acme-agent

say "publisher: an update package and its signed catalog entry"
mkdir -p "$work/build"
printf 'acme-agent 2.4.0 payload\n' > "$work/build/acme-agent-2.4.0.tar.zst"
length=$(stat -c %s "$work/build/acme-agent-2.4.0.tar.zst")
sha256=$(sha256sum "$work/build/acme-agent-2.4.0.tar.zst" | cut -d' ' -f1)
cat > "$work/build/entry.json" <<JSON
{"custody": {"schema": 1, "id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1,
  "title": "Acme agent 2.4.0", "description": "Fixes a parser bug.", "kind": "app", "product": "acme-agent",
  "classification": "security", "severity": "important", "version": "2.4.0", "release_date": "2026-11-28",
  "applicability": {"os": {"family": "debian", "version_range": {"min": "12", "below": "14"}}, "arch": ["x86_64"]},
  "reboot": "never",
  "installer": {"handler": "archive", "format": "tar-zstd", "destination": "/opt/acme-agent"},
  "content": {"length": $length, "sha256": "$sha256"}}}
JSON
"$custody" repo add -C "$repo" "$work/build/acme-agent-2.4.0.tar.zst" --prefix acme-agent/ \
    --custom-file "$work/build/entry.json"

say "publisher: check the whole repository as a client would"
"$custody" repo verify -C "$repo"
"$custody" repo status -C "$repo"

say "device: trust the root (shipped with the device), refresh, download and verify the update"
device="$work/device"
"$custody" tuf --metadata-dir "$device/metadata" init "$repo/metadata/1.root.json"
"$custody" tuf --metadata-dir "$device/metadata" --metadata-url "file://$repo/metadata" \
    --target-base-url "file://$repo/targets" --target-dir "$device/downloads" \
    --target-name acme-agent/acme-agent-2.4.0.tar.zst download
ls -l "$device/downloads"

say "attacker: replace the package on the mirror; the device refuses it"
rm -r "$device/downloads"
for f in "$repo"/targets/acme-agent/*.acme-agent-2.4.0.tar.zst; do
    rm -f "$f" && printf 'acme-agent 2.4.0 payloaD\n' > "$f"
done
if "$custody" tuf --metadata-dir "$device/metadata" --metadata-url "file://$repo/metadata" \
    --target-base-url "file://$repo/targets" --target-dir "$device/downloads" \
    --target-name acme-agent/acme-agent-2.4.0.tar.zst download; then
    echo "unexpected: the tampered package was accepted" >&2
    exit 1
fi
echo "refused, and nothing was stored: $(ls "$device/downloads" 2>/dev/null | wc -l) files in downloads/"

say "done; the repository and the device's state are in $work"
