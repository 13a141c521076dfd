#!/usr/bin/env bash
# Issue 4: the CPU of a device's first full scan against a catalog of 100,000 updates in 500 products.
#
#   bench/first_scan.sh            # 3 runs each with 3 and with 10 products, fresh state every time
#
# The catalog is the one `cargo bench -p custody-client --bench catalog -- --only scan` makes and caches in
# bench/out/products-v1-u100000-p500 (500 product roles of 200 updates, snapshot Merkle proofs). The agent reads it
# from file:// (the removable-media path: the same refresh, proofs, product listings and evaluation as over HTTPS,
# without the TLS handshake and HTTP of the service), evaluates every update of its products against its inventory,
# and queues its scan reports on disk (the service is unreachable; reports wait in the queue). Figures: user and
# system CPU of the whole `custody agent scan` process (GNU time), and its peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD/bench/out/products-v1-u100000-p500
[ -f "$REPO/metadata/1.root.json" ] || {
    echo "no catalog at $REPO: run cargo bench -p custody-client --bench catalog -- --only scan (about 3 min)" >&2
    exit 2
}
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 2; }
cargo build --release -p custody --quiet
W=$(mktemp -d -t custody-first-scan.XXXX)
trap 'rm -rf "$W"' EXIT
printf 'ID=debian\nVERSION_ID="12"\n' > "$W/os-release"
for products in '"acme-agent", "acme-browser", "acme-database"' \
    '"acme-agent", "acme-browser", "acme-database", "acme-audio", "acme-camera", "acme-display", "acme-bluetooth", "acme-backup", "acme-bootloader", "acme-antivirus"'; do
    cat > "$W/agent.toml" <<CONF
[service]
url = "https://127.0.0.1:9/"

[proxy]
from_environment = false

[agent]
state_dir = "state"
trusted_root = "$REPO/metadata/1.root.json"
metadata_url = "file://$REPO/metadata/"
origin_url = "http://127.0.0.1:9/targets/"
products = [$products]
os_release = "os-release"
arch = "x86_64"
hardware_ids = []
time_zone = "UTC"
request_timeout = "1s"

[agent.local_api]
socket = "agent.sock"
CONF
    count=$(echo "$products" | tr ',' '\n' | wc -l)
    for run in 1 2 3; do
        rm -rf "$W/state"
        /usr/bin/time -f "products=$count run=$run cpu_user=%U s cpu_sys=%S s wall=%e s peak_rss=%M kB" \
            target/release/custody agent scan --json --config "$W/agent.toml" > "$W/scan.json" 2> "$W/time.txt" || true
        tail -1 "$W/time.txt"
    done
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['result']; print('  evaluated:', len(r['needed']) + len(r['skipped']) + len(r['rejected']), 'updates of', len(r['products']) if isinstance(r['products'], list) else r['products'], 'products')" "$W/scan.json"
done
