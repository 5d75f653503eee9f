#!/usr/bin/env bash
# Compares builds with `bench ingest` in alternating rounds (one machine, one session: these
# boxes are noisy, so every round runs each build once, in the order given, then the order is
# reversed for the next round).
#
#   scripts/bench-pairs.sh ROUNDS EVENTS NAME:BINARY NAME:BINARY [...]
#
# Prints one line per run and, at the end, each build's mean HTTP ingest rate, bulk-import
# rate, server CPU per event during HTTP ingest, and disk per event after the import.
# The full output of every run is kept in $BENCH_PAIRS_LOG_DIR (default: a temporary directory).
set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: $0 ROUNDS EVENTS NAME:BINARY NAME:BINARY [...]" >&2
  exit 2
fi
rounds=$1 events=$2
shift 2
builds=("$@")
log_dir=${BENCH_PAIRS_LOG_DIR:-$(mktemp -d)}
mkdir -p "$log_dir"
results="$log_dir/results.tsv"
: >"$results"

run_one() {
  local name=$1 binary=$2 round=$3 log
  log="$log_dir/$name.$round.log"
  "$binary" bench ingest --events "$events" >"$log" 2>&1 || {
    echo "$name round $round failed; see $log" >&2
    exit 1
  }
  local http import cpu disk
  http=$(sed -n 's/^http ingest: .* = \([0-9]*\) events\/s.*/\1/p' "$log")
  import=$(sed -n 's/^bulk import: .* = \([0-9]*\) events\/s.*/\1/p' "$log")
  cpu=$(sed -n 's/^server CPU during ingest: .* = \([0-9.]*\) µs\/event.*/\1/p' "$log")
  disk=$(sed -n 's/^disk after import: .* = \([0-9.]*\) bytes\/event.*/\1/p' "$log")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$http" "$import" "${cpu:--}" "${disk:--}" | tee -a "$results"
}

echo "logs: $log_dir"
printf 'build\tround\thttp_events_per_s\timport_events_per_s\tserver_cpu_us_per_event\tdisk_bytes_per_event\n'
for ((round = 1; round <= rounds; round++)); do
  order=("${builds[@]}")
  if ((round % 2 == 0)); then
    order=()
    for ((i = ${#builds[@]} - 1; i >= 0; i--)); do order+=("${builds[i]}"); done
  fi
  for build in "${order[@]}"; do
    run_one "${build%%:*}" "${build#*:}" "$round"
  done
done

echo
echo "means over $rounds rounds:"
awk -F'\t' '
  { n[$1]++; http[$1] += $3; import[$1] += $4; cpu[$1] += $5; disk[$1] += $6 }
  END {
    for (b in n)
      printf "%s\thttp %.0f events/s\timport %.0f events/s\tserver CPU %.2f µs/event\tdisk %.1f B/event\n",
        b, http[b] / n[b], import[b] / n[b], cpu[b] / n[b], disk[b] / n[b]
  }' "$results"
