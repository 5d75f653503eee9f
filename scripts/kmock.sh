#!/usr/bin/env bash
# A Kubernetes API emulator for the operator's integration tests: kmock 0.8 (PyPI) with our shim
# tests/k8s_emulator.py (resourceVersion, PUT, finalizer JSON patch, /status isolation, 404
# reasons, TokenReview), installed into the ignored folder .tools/kmock-venv.
# Why kmock and what the shim adds: docs/emulators.md (kmock and the shim).
#
# Usage: scripts/kmock.sh install   install (or verify) the pinned kmock in .tools/kmock-venv
#        scripts/kmock.sh start     install if needed, (re)start on a free port, write
#                                   .tools/kmock.env and .tools/kmock.kubeconfig
#        scripts/kmock.sh stop      stop exactly the process recorded in .tools/kmock.pid
#
# Typical use (scripts/test.sh), one command a line:
#   scripts/kmock.sh start
#   trap 'scripts/kmock.sh stop' EXIT
#   source .tools/kmock.env
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# kmock's internals are used by the shim: pin it and everything it pulls in.
PIP_PINS=(
	"kmock==0.8"
	"aiohttp==3.14.5"
	"attrs==26.1.0"
	"jsonpatch==1.48"
	"jsonpointer==3.12"
	"yarl==1.25.1"
	"multidict==7.2.1"
	"typing_extensions==4.16.0"
)
PYTHON=${PYTHON:-python3}
TOOLS=$ROOT/.tools
VENV=$TOOLS/kmock-venv
LOGS=$TOOLS/logs
ENV_FILE=$TOOLS/kmock.env
PID_FILE=$TOOLS/kmock.pid
KUBECONFIG_FILE=$TOOLS/kmock.kubeconfig
TOKENS_FILE=$TOOLS/kmock-tokens.json
READY_TIMEOUT=30
STOP_TIMEOUT=10

log() { printf 'kmock: %s\n' "$*" >&2; }
die() {
	printf 'kmock: ERROR: %s\n' "$*" >&2
	exit 1
}

venv_ok() {
	[[ -x $VENV/bin/python ]] || return 1
	"$VENV/bin/python" - "${PIP_PINS[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
PY
}

cmd_install() {
	mkdir -p "$LOGS"
	if venv_ok; then
		log "already installed (kmock 0.8 in ${VENV#"$ROOT"/})"
		return 0
	fi
	command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=... to a Python >= 3.11)"
	local pip_log=$LOGS/install-kmock.log
	rm -rf "$VENV"
	"$PYTHON" -m venv "$VENV" >"$pip_log" 2>&1 || die "could not create $VENV (Debian: apt-get install python3-venv)"
	log "pip install ${PIP_PINS[*]}"
	"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --progress-bar off \
		"${PIP_PINS[@]}" >>"$pip_log" 2>&1 || {
		tail -n 20 "$pip_log" >&2
		die "pip install failed (log: ${pip_log#"$ROOT"/})"
	}
	venv_ok || die "the venv does not hold the pinned versions (log: ${pip_log#"$ROOT"/})"
}

pid_ours() {
	[[ -r /proc/$1/cmdline ]] || return 1
	[[ $(tr '\0' ' ' <"/proc/$1/cmdline") == *"$VENV/bin/python"*k8s_emulator.py* ]]
}

cmd_stop() {
	if [[ -f $PID_FILE ]]; then
		local pid
		pid=$(cat "$PID_FILE")
		if [[ $pid =~ ^[0-9]+$ ]] && pid_ours "$pid"; then
			kill -TERM "$pid" 2>/dev/null || true
			local deadline=$((SECONDS + STOP_TIMEOUT))
			while pid_ours "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
			if pid_ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
			log "stopped (pid $pid)"
		fi
	fi
	rm -f "$PID_FILE" "$ENV_FILE" "$KUBECONFIG_FILE"
}

free_port() {
	"$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_start() {
	cmd_install
	cmd_stop
	mkdir -p "$LOGS"
	# ServiceAccount tokens the emulator's TokenReview accepts (tests/it/operator_kmock.rs). The
	# server sends only JWT-shaped tokens whose `iss` is the cluster's to TokenReview, as real
	# ServiceAccount tokens are: the tests wrap these keys in such a JWT (payload
	# {"iss": ..., "kmock_token": KEY}), which the emulator maps back to KEY.
	cat >"$TOKENS_FILE" <<'JSON'
{"kmock-test-sa-token": {"username": "system:serviceaccount:scaivault:reporting", "audiences": ["scaivault-audit"]},
 "kmock-test-other-audience": {"username": "system:serviceaccount:scaivault:reporting", "audiences": ["elsewhere"]},
 "kmock.sa-token.reporting": {"username": "system:serviceaccount:scaivault:reporting", "audiences": ["scaivault-audit"]},
 "kmock.other-audience.reporting": {"username": "system:serviceaccount:scaivault:reporting", "audiences": ["elsewhere"]},
 "kmock.sa-token.unbound": {"username": "system:serviceaccount:scaivault:unbound", "audiences": ["scaivault-audit"]}}
JSON
	local port pid attempt
	for attempt in 1 2 3; do
		port=$(free_port)
		setsid "$VENV/bin/python" "$ROOT/tests/k8s_emulator.py" "$port" --tokens "$TOKENS_FILE" \
			</dev/null >"$LOGS/kmock.log" 2>&1 &
		pid=$!
		echo "$pid" >"$PID_FILE"
		local deadline=$((SECONDS + READY_TIMEOUT))
		while pid_ours "$pid" && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
			((SECONDS < deadline)) || { tail -n 20 "$LOGS/kmock.log" >&2; cmd_stop; die "no answer on :$port in ${READY_TIMEOUT}s"; }
			sleep 0.1
		done
		pid_ours "$pid" && break
		log "emulator exited before listening on :$port (attempt $attempt)"
		tail -n 5 "$LOGS/kmock.log" >&2
		[[ $attempt == 3 ]] && die "could not start the emulator (log: .tools/logs/kmock.log)"
	done
	cat >"$KUBECONFIG_FILE" <<EOF2
apiVersion: v1
kind: Config
clusters:
- name: kmock
  cluster: {server: "http://127.0.0.1:$port"}
users:
- name: kmock
  user: {token: kmock}
contexts:
- name: kmock
  context: {cluster: kmock, user: kmock, namespace: default}
current-context: kmock
EOF2
	cat >"$ENV_FILE" <<EOF2
# Written by scripts/kmock.sh start; removed by scripts/kmock.sh stop.
export SCAIVAULT_TEST_KMOCK_URL=http://127.0.0.1:$port
export SCAIVAULT_TEST_KMOCK_KUBECONFIG=$KUBECONFIG_FILE
EOF2
	log "listening on http://127.0.0.1:$port (pid $pid); source ${ENV_FILE#"$ROOT"/}"
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
*)
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
	exit 2
	;;
esac
