#!/usr/bin/env bash
# Fleet benchmarks (issue 3), all in one run: submit -> exec and submit ->
# result latency through `makima server` + `makima daemon` over loopback and
# through `makima local`; sustained throughput of trivial tasks; server RSS
# per idle connected daemon. Prints a table and writes JSON.
#
#   bench/fleet.sh [--out FILE.json]
#
# Environment: MAKIMA_BIN (default build/makima), RUNS=200 (latency
# samples), TASKS=2000 CLIENTS=4 (throughput), DAEMONS=1000 HOLD=5 (idle
# connections), MAX_TASKS=8 (slots of the one daemon), KEEP=1 keeps the
# scratch dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/bench/results/fleet.json"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "fleet.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
RUNS=${RUNS:-200}
TASKS=${TASKS:-2000}
CLIENTS=${CLIENTS:-4}
DAEMONS=${DAEMONS:-1000}
HOLD=${HOLD:-5}
MAX_TASKS=${MAX_TASKS:-8}
makima=${MAKIMA_BIN:-$root/build/makima}
bindir=$(cd "$(dirname "$makima")" && pwd)
load="$bindir/bench/makima_bench_fleet"
clock="$bindir/bench/makima_bench_clock"
for f in "$makima" "$load" "$clock"; do
  [[ -x "$f" ]] || { echo "fleet.sh: missing $f (cmake --build build)" >&2; exit 2; }
done
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/makima-fleet-XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [[ -n "${KEEP:-}" ]] || rm -rf "$tmp"
}
trap cleanup EXIT
export HOME="$tmp/home" MAKIMA_LOG_LEVEL=warn
mkdir -p "$HOME"
ukey=bench-user-key dkey=bench-daemon-key

# Starts `makima ARGS...` in the background, logging to $tmp/NAME.log, and
# waits (bounded) for its "listening on" / "connected to" line.
start() {
  local name=$1 wait_for=$2; shift 2
  "$makima" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do
    grep -q "$wait_for" "$tmp/$name.log" && return 0
    sleep 0.05
  done
  echo "fleet.sh: $name did not start:" >&2; cat "$tmp/$name.log" >&2; exit 1
}
port_of() { grep -o 'listening on http://[0-9.]*:[0-9]*' "$tmp/$1.log" | head -1 | sed 's/.*://'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

echo "== server + daemon over loopback" >&2
start server "listening on" server --listen 127.0.0.1:0 --data-dir "$tmp/server" \
  --user-key "$ukey" --daemon-key "$dkey"
server_pid=${pids[-1]}
sport=$(port_of server)
start daemon "connected to" daemon --server "ws://127.0.0.1:$sport/ws/daemon" \
  --api-key "$dkey" --data-dir "$tmp/daemon" --max-tasks "$MAX_TASKS"
mkdir -p "$tmp/stamps1" "$tmp/stamps2"
"$load" latency --api "http://127.0.0.1:$sport" --key "$ukey" --runs "$RUNS" \
  --stamp "$clock" --dir "$tmp/stamps1" >"$tmp/lat_fleet.json"
"$load" throughput --api "http://127.0.0.1:$sport" --key "$ukey" \
  --tasks "$TASKS" --clients "$CLIENTS" >"$tmp/thr_fleet.json"

echo "== server RSS with $DAEMONS idle daemons" >&2
rss0=$(rss_kb "$server_pid")
"$load" daemons --ws "ws://127.0.0.1:$sport/ws/daemon" --key "$dkey" \
  --count "$DAEMONS" --hold "$HOLD" --ready "$tmp/ready" >"$tmp/idle.json" &
loadpid=$!
for _ in $(seq 1 700); do [[ -s "$tmp/ready" ]] && break; sleep 0.05; done
sleep 1
rss1=$(rss_kb "$server_pid")
curl -s "http://127.0.0.1:$sport/metrics" | grep '^makima_daemons' >"$tmp/daemons.txt" || true
wait "$loadpid"

echo "== makima local" >&2
start local "listening on" local --listen 127.0.0.1:0 --data-dir "$tmp/local" \
  --max-tasks "$MAX_TASKS"
lport=$(port_of local)
"$load" latency --api "http://127.0.0.1:$lport" --runs "$RUNS" \
  --stamp "$clock" --dir "$tmp/stamps2" >"$tmp/lat_local.json"
"$load" throughput --api "http://127.0.0.1:$lport" --tasks "$TASKS" \
  --clients "$CLIENTS" >"$tmp/thr_local.json"

mkdir -p "$(dirname "$out")"
python3 - "$tmp" "$out" "$rss0" "$rss1" "$DAEMONS" <<'PY'
import json, sys, statistics
tmp, out, rss0, rss1, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def load(name): return json.load(open(f"{tmp}/{name}.json"))
def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
res = {}
for mode in ("fleet", "local"):
    lat = load(f"lat_{mode}")
    thr = load(f"thr_{mode}")
    res[mode] = {
        "exec_ms": {"p50": pct(lat["exec_ms"], 50), "p99": pct(lat["exec_ms"], 99)},
        "result_ms": {"p50": pct(lat["result_ms"], 50), "p99": pct(lat["result_ms"], 99)},
        "samples": len(lat["result_ms"]),
        "throughput": thr,
    }
idle = load("idle")
res["idle_daemons"] = {**idle, "server_rss_kb_before": rss0, "server_rss_kb_with": rss1,
                       "kb_per_daemon": (rss1 - rss0) / max(1, idle["welcomed"])}
json.dump(res, open(out, "w"), indent=1)
print(f"{'measure':44} {'result':>22}  goal")
for mode, label in (("fleet", "server+daemon"), ("local", "makima local")):
    r = res[mode]
    print(f"{label+' submit->exec p50/p99 ms':44} {r['exec_ms']['p50']:>10.2f} / {r['exec_ms']['p99']:<9.2f}")
    print(f"{label+' submit->result p50/p99 ms':44} {r['result_ms']['p50']:>10.2f} / {r['result_ms']['p99']:<9.2f}  p50 <= 10")
    t = r["throughput"]
    print(f"{label+' throughput tasks/s':44} {t['tasks_per_s']:>22.0f}  >= 500 ({t['tasks']} tasks, {t['clients']} clients)")
i = res["idle_daemons"]
print(f"{'server RSS per idle daemon KB':44} {i['kb_per_daemon']:>22.1f}  <= 50 ({i['welcomed']} welcomed, {rss0}->{rss1} KB)")
print(f"written to {out}")
PY
