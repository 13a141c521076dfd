#!/usr/bin/env bash
# Issue 5 benchmark: distributing one update from one origin to N devices, custody's peer-to-peer delivery against an
# aria2 BitTorrent swarm with a local tracker, under the same kernel-enforced per-host upload caps, in one run.
#
#   sudo bench/p2p.sh                       # N=16 devices, 256 MiB, origin/seeder 16 MiB/s up, devices 8 MiB/s up
#   N=8 SIZE_MB=64 SEED_UP=8 UP=4 sudo bench/p2p.sh
#
# Everything runs inside a private network namespace (deleted on exit) on its own loopback: the origin (custody's
# service, or aria2's seeder) is 127.0.0.11 and device i is 127.0.0.(11+i); the tracker is 127.0.0.10. An htb class
# per source address caps each host's upload (u_s for the origin/seeder, u_i for the devices); downloads are uncapped.
# custody's devices bind their outgoing peer connections to their own address, aria2 gets --interface, so every
# byte a host sends is shaped by its own class.
#
# Reported, for both systems: time until the last device has the verified file, T* = max(F/u_s, F/d_min,
# N*F/(u_s + sum u_i)) (d_min is unlimited here), the ratio T/T*, bytes the origin/seeder sent (tc counters), and the
# CPU per received GiB of the custody agents (or aria2 leechers) during the download, user and system (the kernel's
# TCP/IP, page cache and scheduling) apart, against `openssl dgst -sha256` over the same bytes.
#
# KEEP_LOGS=DIR keeps the daemons' logs and download reports, AGENT_LOG sets their log filter, PERF_HOOK=CMD runs CMD
# in the background when the custody downloads start (a sampler, a profiler), HTTP_DELAY sets the agents' HTTP delay.
#
# Needs root and (Debian) iproute2 aria2 opentracker mktorrent bc openssl; installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

N=${N:-16}; SIZE_MB=${SIZE_MB:-256}; SEED_UP=${SEED_UP:-16}; UP=${UP:-8}; PIECE_EXP=${PIECE_EXP:-20}
TIMEOUT=${TIMEOUT:-600}; SYSTEMS=${SYSTEMS:-"custody aria2"}

missing=""
for tool in ip tc aria2c opentracker mktorrent bc openssl cargo; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    echo "missing:$missing; install with: apt-get install -y iproute2 aria2 opentracker mktorrent bc openssl" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace and tc)" >&2; exit 2; }

CUSTODY=$REPO/target/release/custody
case " $SYSTEMS " in *" custody "*) echo "== building custody (release)"; cargo build --release -p custody --quiet ;; esac

NS=custodyp2p$$
W=$(mktemp -d -t custody-p2p.XXXX); chmod 755 "$W"
# Each system keeps a copy per device, the payload and the origin's (one system at a time): check the space first, so
# that a full disk does not stop the run halfway (and everything else on the machine with it).
need_mb=$(( (N + 3) * SIZE_MB * 11 / 10 ))
free_mb=$(df -Pm "$W" | awk 'NR == 2 {print $4}')
if [ "$free_mb" -lt "$need_mb" ]; then
    rmdir "$W"
    echo "bench/p2p.sh: $need_mb MiB needed in $(dirname "$W") (set TMPDIR elsewhere), $free_mb MiB free" >&2
    exit 1
fi
PIDS=()
cleanup() {
    local i
    for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT
X() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
X ip link set lo up
X ip link set lo mtu 1500
X tc qdisc add dev lo root handle 1: htb default 99 r2q 1000
X tc class add dev lo parent 1: classid 1:99 htb rate 10gbit
shape() { # $1 = last octet, $2 = MiB/s
    X tc class add dev lo parent 1: classid 1:"$1" htb rate "$2"mibps ceil "$2"mibps burst 64k cburst 64k
    X tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip src 127.0.0."$1"/32 flowid 1:"$1"
}
shape 11 "$SEED_UP"
for i in $(seq 1 "$N"); do shape $((11 + i)) "$UP"; done
sent_mib() { # bytes sent by class 1:$1 so far, MiB
    X tc -s class show dev lo classid 1:"$1" | awk '/Sent/{printf "%.1f", $2/1048576}'
}
sent_bytes() { X tc -s class show dev lo classid 1:"$1" | awk '/Sent/{print $2}'; }

mkdir -p "$W/payload"
head -c "${SIZE_MB}M" /dev/urandom > "$W/payload/payload.bin"
LB=$(echo "scale=3; a=$SIZE_MB/$SEED_UP; b=$N*$SIZE_MB/($SEED_UP+$N*$UP); if (a>b) a else b" | bc)
echo "== N=$N F=${SIZE_MB} MiB u_s=${SEED_UP} MiB/s u_i=${UP} MiB/s piece=2^${PIECE_EXP} T*=${LB} s"
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(aria2c --version | head -1); $(openssl version)"

wait_for_files() { # $1 = glob dir, $2 = count
    local deadline=$(( $(date +%s) + TIMEOUT ))
    while [ "$(find "$1" -maxdepth 1 -name '*.done' | wc -l)" -lt "$2" ]; do
        [ "$(date +%s)" -ge "$deadline" ] && { echo "TIMEOUT after ${TIMEOUT}s" >&2; return 1; }
        sleep 0.1
    done
}

run_aria2() {
    local A=$W/aria2 i
    mkdir -p "$A/seed" "$A/tracker" "$A/marks"
    ln "$W/payload/payload.bin" "$A/seed/payload.bin"
    mktorrent -a http://127.0.0.10:6969/announce -l "$PIECE_EXP" -o "$A/payload.torrent" "$A/seed/payload.bin" >/dev/null
    aria2c -S "$A/payload.torrent" | awk '/^Info Hash:/{print $3}' > "$A/tracker/whitelist.txt"
    chmod 755 "$A" "$A/tracker"; chmod 644 "$A/tracker/whitelist.txt"
    ip netns exec "$NS" opentracker -i 127.0.0.10 -p 6969 -P 6969 -d "$A/tracker" -w whitelist.txt >"$A/tracker.log" 2>&1 &
    PIDS+=($!)
    sleep 0.5
    local common=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false
                  --seed-ratio=0.0 --summary-interval=0 --console-log-level=warn --file-allocation=none
                  --bt-tracker-interval=1 --bt-tracker-timeout=2 --listen-port=6881)
    local seed_before; seed_before=$(sent_bytes 11)
    ip netns exec "$NS" aria2c "${common[@]}" --interface=127.0.0.11 -d "$A/seed" --bt-seed-unverified=true \
        -T "$A/payload.torrent" >"$A/seed.log" 2>&1 &
    PIDS+=($!)
    sleep 0.5
    local t0 leechers=() cpu_before; t0=$(date +%s.%N)
    for i in $(seq 1 "$N"); do
        mkdir -p "$A/l$i"
        printf '#!/bin/sh\ndate +%%s.%%N > %s/marks/l%s.done\n' "$A" "$i" > "$A/hook$i.sh"; chmod +x "$A/hook$i.sh"
        ip netns exec "$NS" aria2c "${common[@]}" --interface=127.0.0.$((11 + i)) -d "$A/l$i" \
            --on-bt-download-complete="$A/hook$i.sh" -T "$A/payload.torrent" >"$A/l$i.log" 2>&1 &
        PIDS+=($!); leechers+=($!)
    done
    cpu_before=$(cpu_ticks "${leechers[@]}")
    wait_for_files "$A/marks" "$N"
    local t1 cpu_after; t1=$(date +%s.%N)
    cpu_after=$(cpu_ticks "${leechers[@]}")
    local ref ok=1; ref=$(sha256sum "$W/payload/payload.bin" | cut -d' ' -f1)
    for i in $(seq 1 "$N"); do [ "$(sha256sum "$A/l$i/payload.bin" | cut -d' ' -f1)" = "$ref" ] || ok=0; done
    local seed_sent=$(( $(sent_bytes 11) - seed_before ))
    ARIA2_T=$(echo "$t1 - $t0" | bc)
    ARIA2_ORIGIN_MIB=$(echo "scale=1; $seed_sent/1048576" | bc)
    echo "aria2:   swarm_time=${ARIA2_T}s ratio=$(echo "scale=2; $ARIA2_T/$LB" | bc) seeder_sent=${ARIA2_ORIGIN_MIB}MiB sha256_ok=$ok"
    local user system openssl_cpu
    read -r user system < <(per_gib $cpu_before $cpu_after)
    openssl_cpu=$(openssl_per_gib)
    echo "aria2:   leechers' CPU per received GiB: user ${user}s, system ${system}s; openssl dgst -sha256 ${openssl_cpu}s/GiB; user/openssl $(echo "scale=2; $user/$openssl_cpu" | bc)"
    # Stop this swarm before the next system runs.
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1; PIDS=()
    rm -rf "$A"
}

cpu_ticks() { # "utime stime" summed over the given PIDs, in clock ticks
    local user=0 system=0 p u s
    for p in "$@"; do
        read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo 0 0)
        user=$((user + u)); system=$((system + s))
    done
    echo "$user $system"
}

# `openssl dgst -<algorithm>` over the payload: CPU seconds per GiB, from the rusage of the (sub)shell's children.
openssl_per_gib() {
    local t_start t_end me=$BASHPID   # (inside $(...) below, $BASHPID would be that subshell's)
    t_start=$(awk '{print $16 + $17}' "/proc/$me/stat")
    openssl dgst -sha256 "$W/payload/payload.bin" >/dev/null
    t_end=$(awk '{print $16 + $17}' "/proc/$me/stat")
    echo "scale=3; ($t_end - $t_start)/$(getconf CLK_TCK)/($SIZE_MB/1024)" | bc
}

# "user system" CPU seconds per received GiB between two cpu_ticks readings.
per_gib() {
    local gib; gib=$(echo "scale=6; $N*$SIZE_MB/1024" | bc)
    echo "$(echo "scale=3; ($3 - $1)/$(getconf CLK_TCK)/$gib" | bc) $(echo "scale=3; ($4 - $2)/$(getconf CLK_TCK)/$gib" | bc)"
}

run_custody() {
    local C=$W/custody i
    mkdir -p "$C/publisher"
    printf '[listen]\nhttps = "127.0.0.11:8443"\nhttp = "127.0.0.11:80"\n[init]\nserver_names = ["127.0.0.11"]\n' > "$C/server.toml"
    ip netns exec "$NS" "$CUSTODY" server --data "$C/data" --config "$C/server.toml" >"$C/server.out" 2>"$C/server.log" &
    PIDS+=($!)
    local deadline=$(( $(date +%s) + 60 ))
    until grep -q "client configuration" "$C/server.out" 2>/dev/null; do
        [ "$(date +%s)" -ge "$deadline" ] && { echo "custody server did not start" >&2; cat "$C/server.log" >&2; return 1; }
        sleep 0.2
    done
    local data=$C/data admin_token key
    admin_token=$(cat "$data/admin-token")
    cp "$data/offline-keys/root.json" "$C/publisher/root.json"
    key=$(ls "$data"/offline-keys/repo-keys/targets.* | head -1)
    cat > "$C/update.toml" <<EOF
id = "6c1f2e3d-4b5a-4978-8a6b-5c4d3e2f1a0b"
revision = 1
title = "Bench OS"
description = "An image for the peer-to-peer benchmark."
kind = "os"
product = "bench-os"
version = "2.0"
release_date = "2026-11-01"
classification = "security"
severity = "critical"
reboot = "required"

[applicability]
os = { family = "custody-bench", version_range = { min = "1.0" } }

[installer]
handler = "os-image"
slot_layout = "a-b"
format = "raw"
EOF
    CUSTODY_TOKEN=$admin_token ip netns exec "$NS" "$CUSTODY" publish "$W/payload/payload.bin" --description "$C/update.toml" \
        --repo "$C/publisher" --key "$key" --piece-size $((1 << PIECE_EXP)) --path bench-os/payload.bin \
        --config "$data/client/custody.toml" --json >/dev/null
    local token
    token=$(CUSTODY_TOKEN=$admin_token ip netns exec "$NS" "$CUSTODY" admin enrollment-tokens create bench --uses "$N" \
        --json --config "$data/client/custody.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    local daemons=()
    for i in $(seq 1 "$N"); do
        local d=$C/d$i ip=127.0.0.$((11 + i))
        mkdir -p "$d"
        printf 'ID=custody-bench\nVERSION_ID="1.0"\n' > "$d/os-release"
        sed -e "s#\"../pki/#\"$data/pki/#g" -e 's#^\[tls\]$#[tls]\nclient_cert = "device-chain.pem"\nclient_key = "device-key.pem"#' \
            "$data/client/custody.toml" > "$d/agent.toml"
        cat >> "$d/agent.toml" <<EOF

[proxy]
from_environment = false

[agent]
state_dir = "state"
trusted_root = "$data/client/root.json"
origin_url = "http://127.0.0.11/targets/"
products = ["bench-os"]
os_release = "os-release"
time_zone = "UTC"

[agent.local_api]
socket = "agent.sock"

[policy]
default = "notify"

[p2p]
listen = "$ip:7680"
advertise = ["$ip/8"]
mdns = false

[p2p.policy]
download_mode = 1
min_file_size = 0
min_ram = 0
min_disk = 0
http_delay_foreground = "${HTTP_DELAY:-0s}"
EOF
        SWARM_TOKEN=$token ip netns exec "$NS" "$CUSTODY" agent enroll --token-env SWARM_TOKEN --hostname "bench-$i" \
            --config "$d/agent.toml" >/dev/null
        ip netns exec "$NS" "$CUSTODY" --log "${AGENT_LOG:-warn}" agent run --config "$d/agent.toml" >/dev/null 2>"$d/daemon.log" &
        PIDS+=($!); daemons+=($!)
    done
    for i in $(seq 1 "$N"); do
        until [ -S "$C/d$i/agent.sock" ]; do sleep 0.1; done
        ip netns exec "$NS" "$CUSTODY" agent scan --config "$C/d$i/agent.toml" >/dev/null || true
    done
    local origin_before cpu_before t0 t1
    origin_before=$(sent_bytes 11)
    cpu_before=$(cpu_ticks "${daemons[@]}")
    t0=$(date +%s.%N)
    [ -n "${PERF_HOOK:-}" ] && "$PERF_HOOK" &
    local waiters=()
    for i in $(seq 1 "$N"); do
        ip netns exec "$NS" "$CUSTODY" agent download --json --config "$C/d$i/agent.toml" > "$C/d$i/download.json" &
        waiters+=($!)
    done
    local w
    for w in "${waiters[@]}"; do
        wait "$w" || { echo "a custody download failed" >&2; cat "$C"/d*/download.json >&2; return 1; }
    done
    t1=$(date +%s.%N)
    local cpu_after origin_sent ok=1 ref
    cpu_after=$(cpu_ticks "${daemons[@]}")
    origin_sent=$(( $(sent_bytes 11) - origin_before ))
    ref=$(sha256sum "$W/payload/payload.bin" | cut -d' ' -f1)
    for i in $(seq 1 "$N"); do
        [ "$(sha256sum "$C/d$i/state/peer-cache/$ref.data" | cut -d' ' -f1)" = "$ref" ] || ok=0
    done
    CUSTODY_T=$(echo "$t1 - $t0" | bc)
    CUSTODY_ORIGIN_MIB=$(echo "scale=1; $origin_sent/1048576" | bc)
    local user system openssl_cpu
    read -r user system < <(per_gib $cpu_before $cpu_after)
    openssl_cpu=$(openssl_per_gib)
    echo "custody: swarm_time=${CUSTODY_T}s ratio=$(echo "scale=2; $CUSTODY_T/$LB" | bc) origin_sent=${CUSTODY_ORIGIN_MIB}MiB ($(echo "scale=2; $origin_sent/1048576/$SIZE_MB" | bc)x F) sha256_ok=$ok"
    echo "custody: agents' CPU per received GiB: user ${user}s, system ${system}s; openssl dgst -sha256 ${openssl_cpu}s/GiB; user/openssl $(echo "scale=2; $user/$openssl_cpu" | bc), (user+system)/openssl $(echo "scale=2; ($user + $system)/$openssl_cpu" | bc)"
    # The install-time whole-file check hashes every byte once more with each signed algorithm (SHA-256, as
    # `custody publish` signs it): the same work as openssl's, which the agents' user time includes.
    local whole=$openssl_cpu
    echo "custody: of which the whole-file check is about ${whole}s/GiB (openssl sha256); the rest $(echo "scale=3; $user - $whole" | bc)s/GiB = $(echo "scale=2; ($user - $whole)/$openssl_cpu" | bc)x openssl"
    if [ -n "${KEEP_LOGS:-}" ]; then   # the daemons' logs, for a closer look (the work directory is removed)
        mkdir -p "$KEEP_LOGS"
        for i in $(seq 1 "$N"); do cp "$C/d$i/daemon.log" "$KEEP_LOGS/d$i.log"; cp "$C/d$i/download.json" "$KEEP_LOGS/d$i.json"; done
    fi
    for w in "${PIDS[@]}"; do kill "$w" 2>/dev/null || true; done
    sleep 1; PIDS=()
    rm -rf "$C"
}

for system in $SYSTEMS; do
    case $system in
        aria2) run_aria2 ;;
        custody) run_custody ;;
    esac
done
if [ -n "${CUSTODY_T:-}" ] && [ -n "${ARIA2_T:-}" ]; then
    echo "custody / aria2 time: $(echo "scale=2; $CUSTODY_T/$ARIA2_T" | bc)"
fi
