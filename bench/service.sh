#!/bin/sh
# Issue 4 benchmarks: the update service and the agent against nginx, curl and openssl on this machine, in one run.
#
#   bench/service.sh            # all four comparisons; prints each table with ratios
#   bench/service.sh content    # only 1.: the content origin, 1 GiB and 64 KiB
#
# 1. content origin, 32 concurrent clients (wrk), 1 GiB and 64 KiB files: custody server vs nginx
#    (cargo bench -p custody-server --bench service)
# 2. scan load: no-change scans on a new pinned TLS connection each: custody server vs nginx (same bench)
# 3. the agent downloading and verifying 1 GiB from nginx vs curl -o + openssl dgst -sha256, and its peak memory
#    (cargo bench -p custody-agent --bench download)
# 4. hashing: ArtifactWriter vs openssl speed -evp sha256 (cargo bench -p custody-install --bench hash)
#
# Installs nothing. Needs (Debian): nginx wrk curl openssl. Everything listens on 127.0.0.1 only; every load run is
# bounded in count and time. Rounds and durations: the environment variables SERVICE_ARGS, DOWNLOAD_ARGS, HASH_ARGS (see below).
set -eu
cd "$(dirname "$0")/.."

missing=""
for tool in nginx wrk curl openssl cargo; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "missing:$missing" >&2
    echo "install with: apt-get install -y nginx wrk curl openssl   (cargo: rustup)" >&2
    exit 2
fi

SERVICE_ARGS=${SERVICE_ARGS:-"--rounds 3 --seconds 8 --scans 10000"}
ONLY=${1:-all}
case "$ONLY" in
    all) ;;
    content) SERVICE_ARGS="$SERVICE_ARGS --only content" ;;
    *) echo "usage: bench/service.sh [content]" >&2; exit 2 ;;
esac
DOWNLOAD_ARGS=${DOWNLOAD_ARGS:-"--mib 1024 --rounds 3"}
HASH_ARGS=${HASH_ARGS:-""}

echo "== building (release)"
cargo bench -p custody-server --bench service --no-run
if [ "$ONLY" = all ]; then
    cargo bench -p custody-agent --bench download --no-run
    cargo bench -p custody-install --bench hash --no-run
fi

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== nginx: $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), $(openssl version)"

echo
echo "== 1+2. content origin and scan load: custody server vs nginx"
# shellcheck disable=SC2086
cargo bench -q -p custody-server --bench service -- $SERVICE_ARGS

[ "$ONLY" = all ] || exit 0

echo
echo "== 3. agent download + verify vs curl -o + openssl dgst -sha256"
# shellcheck disable=SC2086
cargo bench -q -p custody-agent --bench download -- $DOWNLOAD_ARGS

echo
echo "== 4. hashing vs openssl speed -evp sha256"
# shellcheck disable=SC2086
cargo bench -q -p custody-install --bench hash -- $HASH_ARGS

echo
echo "goals: content >= 0.90x nginx; agent <= 0.60x (curl + openssl) time and <= 50 MiB peak;"
echo "       hashing >= 0.95x openssl; no-change scans >= 0.90x nginx and >= 5000/s on 2 cores"
