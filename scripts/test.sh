#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and black-box tests of the real binary.
# Usage: scripts/test.sh            (what CI runs, through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are slow on small machines: keep the target directory outside the clone so repeated
# runs build incrementally. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/scaivault-audit/target}"
mkdir -p "$CARGO_TARGET_DIR"

command -v prlimit >/dev/null || { echo "prlimit (util-linux) is required by the disk-full test" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
