#!/usr/bin/env bash
# Builds every cargo-fuzz target (stable toolchain with RUSTC_BOOTSTRAP=1; see fuzz/README.md) and runs each one
# briefly from its seeds, so that CI catches a target that no longer builds or crashes at once.
# FUZZ_SECONDS sets the run time per target (default 10; 0 builds only).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
seconds="${FUZZ_SECONDS:-10}"
[ "$seconds" -gt 0 ] || exit 0
for target in $(cargo fuzz list); do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    echo "fuzz: $target for ${seconds}s"
    cargo fuzz run -O "$target" "$corpus" "fuzz/seeds/$target" -- -max_total_time="$seconds" -timeout=10 \
        -print_final_stats=0 2>&1 | tail -n 3
    test "${PIPESTATUS[0]}" -eq 0
done
