#!/usr/bin/env bash
# Benchmark: (1) empty directory -> healthy 3-member local cluster (`pgbaton up` wall time,
# which includes initdb, two base backups and waiting for streaming), repeated RUNS times;
# (2) an idle agent's resident memory and CPU use over WINDOW seconds, from SETTLE seconds
# after the last `up` (PostgreSQL writes WAL for a while after a start, and members report
# their positions as they move).
#   bash bench/up-and-idle.sh [RUNS] [WINDOW] [SETTLE]   (defaults: 5 runs, 30 s, 5 s)
# Prints a Markdown table for the README. Uses a release build and ports from 25432.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
RUNS="${1:-5}"; WINDOW="${2:-30}"; SETTLE="${3:-5}"
cargo build --release --locked -p pgbaton >/dev/null 2>&1
BIN="$PWD/target/release/pgbaton"
WORK="$(mktemp -d /tmp/pgbaton-bench-XXXXXX)"; chmod 755 "$WORK"
cleanup() { [ -f "$WORK/c/pgbaton.toml" ] && "$BIN" down --dir "$WORK/c" --purge >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

times=()
for i in $(seq 1 "$RUNS"); do
  t0=$(date +%s.%N)
  "$BIN" up --dir "$WORK/c" --nodes 3 --port-base 25432 --timeout 120 >/dev/null 2>&1
  t1=$(date +%s.%N)
  times+=("$(echo "$t1 - $t0" | bc)")
  if [ "$i" -lt "$RUNS" ]; then "$BIN" down --dir "$WORK/c" --purge >/dev/null; fi
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
min=$(echo "$sorted" | head -1); max=$(echo "$sorted" | tail -1)

# Idle agents of the last cluster: RSS now, CPU ticks over the window.
sleep "$SETTLE"
hz=$(getconf CLK_TCK)
declare -A t_start
pids=()
for n in n1 n2 n3; do pid=$(cat "$WORK/c/$n/agent.pid"); pids+=("$pid")
  t_start[$pid]=$(awk '{print $14+$15}' "/proc/$pid/stat"); done
sleep "$WINDOW"
rss_max=0; cpu_max=0
for pid in "${pids[@]}"; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  t_end=$(awk '{print $14+$15}' "/proc/$pid/stat")
  cpu=$(echo "scale=3; ($t_end - ${t_start[$pid]}) * 100 / $hz / $WINDOW" | bc)
  echo "agent pid $pid: cpu $cpu % of a core, rss $((rss / 1024)) MB" >&2
  [ "$rss" -gt "$rss_max" ] && rss_max=$rss
  if [ "$(echo "$cpu > $cpu_max" | bc)" -eq 1 ]; then cpu_max=$cpu; fi
done

echo "| measure | result |"
echo "| --- | --- |"
printf '| empty dir -> healthy 3-member cluster (`pgbaton up`), %s runs | median %.2f s (min %.2f, max %.2f) |\n' "$RUNS" "$median" "$min" "$max"
printf '| idle agent resident memory (largest of 3) | %.1f MB |\n' "$(echo "$rss_max / 1024" | bc -l)"
printf '| idle agent CPU over %s s (largest of 3) | %s %% of a core |\n' "$WINDOW" "$cpu_max"
