#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and black-box tests of the real binary,
# including the tests that plain `cargo test` ignores because they need a tool from scripts/
# (emulators, kmock, helm/kubectl/kubernetes-validate): this script installs and starts those
# tools and fails when one is missing.
# Usage: scripts/test.sh            (what CI runs, through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are slow on small machines: keep the target directory outside the clone so repeated
# runs build incrementally. Override with CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/scaivault-audit/target}"
mkdir -p "$CARGO_TARGET_DIR"

command -v prlimit >/dev/null || { echo "prlimit (util-linux) is required by the disk-full test" >&2; exit 1; }
for tool in python3 gzip; do
	command -v "$tool" >/dev/null || { echo "$tool is required by the export tests" >&2; exit 1; }
done

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --doc

# helm, kubectl and kubernetes-validate for the chart tests (cached in .tools/).
scripts/k8s-tools.sh install
# shellcheck source=/dev/null
source .tools/k8s-tools.env

# Object-store emulators for the export tests and the Kubernetes API emulator (kmock + our
# shim) for the operator tests, installed into .tools/ on first use and stopped on exit.
log="$(mktemp)"
trap 'rm -f "$log"; scripts/emulators.sh stop; scripts/kmock.sh stop; scripts/cluster.sh stop' EXIT
scripts/emulators.sh start
# shellcheck source=/dev/null
source .tools/emulators.env
scripts/kmock.sh start
# shellcheck source=/dev/null
source .tools/kmock.env
# A three-node NATS JetStream cluster for the clustered mode's tests (docs/cluster.md); tests
# that kill nodes start their own with $SCAIVAULT_TEST_NATS_SERVER.
scripts/cluster.sh start
# shellcheck source=/dev/null
source .tools/cluster.env

# Unit and black-box tests, the ignored ones included (they need the tools started above, and
# fail loudly without them); the closing line sums every test binary's result.
# --no-fail-fast: every test binary runs, so the closing line counts the whole suite.
# The end-to-end operator tests need a real cluster (KUBECONFIG): never here.
cargo test --locked --all-targets --no-fail-fast -- --include-ignored --skip operator_e2e:: 2>&1 | tee "$log"
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed; exit (passed == 0 || failed > 0) }' "$log"
