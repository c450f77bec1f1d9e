#!/usr/bin/env bash
# makima benchmarks: start latency (no repo, warm repo vs git worktree add),
# output throughput and RSS, all in one run so ratios share the machine's
# noise. Prints a table and writes JSON. See bench/README.md.
#
#   bench/run.sh [--repo PATH] [--out FILE.json]
#
# Environment:
#   MAKIMA_BIN          makima binary (default: build/makima)
#   MAKIMA_BENCH_CLOCK  timing helper (default: next to makima in
#                       bench/makima_bench_clock, else compiled into the
#                       scratch dir with c++)
#   MAKIMA_BENCH_SPLIT  git split helper (default: bench/makima_bench_git_split
#                       next to makima; that section is skipped without it)
#   RUNS=50 REPO_RUNS=7 REPO_FILES=6000 THROUGHPUT_MB=500 VERIFY_MB=500
#   BENCH_TMP (scratch parent dir, default $TMPDIR or /tmp), KEEP=1 keeps it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/bench/results/latest.json"
extra_repo=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo) extra_repo=$(git -C "$2" rev-parse --show-toplevel) || exit 2; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

RUNS=${RUNS:-50}
REPO_RUNS=${REPO_RUNS:-7}
REPO_FILES=${REPO_FILES:-6000}
THROUGHPUT_MB=${THROUGHPUT_MB:-500}
VERIFY_MB=${VERIFY_MB:-$THROUGHPUT_MB}

makima=${MAKIMA_BIN:-$root/build/makima}
[[ -x "$makima" ]] || { echo "run.sh: no makima at $makima (build it or set MAKIMA_BIN)" >&2; exit 2; }
makima=$(cd "$(dirname "$makima")" && pwd)/$(basename "$makima")
bindir=$(dirname "$makima")

work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/makima-bench.XXXXXX")
cleanup() { [[ -n "${KEEP:-}" ]] && echo "kept $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT
res="$work/results"; mkdir -p "$res"

clock=${MAKIMA_BENCH_CLOCK:-$bindir/bench/makima_bench_clock}
if [[ ! -x "$clock" ]]; then
  clock="$work/makima_bench_clock"
  c++ -std=c++17 -O2 -static -o "$clock" "$here/clock.cpp" 2>/dev/null \
    || c++ -std=c++17 -O2 -o "$clock" "$here/clock.cpp"
fi
split=${MAKIMA_BENCH_SPLIT:-$bindir/bench/makima_bench_git_split}

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
# launch OUT.json CMD... : times CMD (stdout/stderr discarded)
launch() { local o=$1; shift; "$clock" launch --out "$o" -- "$@" >/dev/null 2>&1 </dev/null || true; }

{
  echo "{\"date\":\"$(date -Is)\",\"host\":\"$(hostname)\",\"nproc\":$(nproc),"
  echo "\"kernel\":\"$(uname -r)\",\"loadavg_start\":\"$(cut -d' ' -f1-3 /proc/loadavg)\","
  echo "\"makima\":\"$makima\",\"git\":\"$(git --version | cut -d' ' -f3)\","
  echo "\"repo_head\":\"$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)\","
  echo "\"runs\":$RUNS,\"repo_runs\":$REPO_RUNS,\"throughput_mb\":$THROUGHPUT_MB,\"verify_mb\":$VERIFY_MB}"
} > "$res/meta.json"

# --- 1. no-repo task start ---------------------------------------------------
log "1/4 no-repo start latency ($RUNS runs each, interleaved)"
d1="$work/data-norepo"; mkdir -p "$res/np"
"$makima" run --data-dir "$d1" -- true >/dev/null 2>&1 || true   # creates the DB
for i in $(seq "$RUNS"); do
  launch "$res/np/direct-$i.json" "$clock" stamp "$res/np/direct-$i.stamp"
  launch "$res/np/true-$i.json" /bin/true
  launch "$res/np/version-$i.json" "$makima" --version
  launch "$res/np/mk-$i.json" "$makima" run --id "np-$i" --data-dir "$d1" -- \
    "$clock" stamp "$res/np/mk-$i.stamp"
  launch "$res/np/mktrue-$i.json" "$makima" run --id "npt-$i" --data-dir "$d1" -- true
done
"$makima" task list --json --data-dir "$d1" > "$res/np/tasks.json" 2>/dev/null || true
# The same start inside a running node (no process start, no DB open).
inproc="$(dirname "$makima")/bench/makima_bench_inproc_start"
if [[ -x "$inproc" ]]; then
  mkdir -p "$work/inproc"
  "$inproc" "$work/inproc" "$RUNS" "$res/np/inproc.json" >/dev/null 2>&1 || true
fi

# --- 2. repo task start vs git worktree add ---------------------------------
repo_bench() { # NAME REPO_PATH
  local name=$1 src=$2 dir="$res/repo-$1"
  mkdir -p "$dir"
  local data="$work/data-repo-$name" bare="$work/clone-$name.git"
  git clone -q --bare "$src" "$bare"
  local commit; commit=$(git -C "$bare" rev-parse HEAD)
  git -C "$src" ls-files | wc -l > "$dir/files"
  du -sk "$bare" | cut -f1 > "$dir/bare_kb"
  # warm the mirror (first task clones it)
  launch "$dir/warm.json" "$makima" run --id "warm-$name" --repo "$src" --data-dir "$data" -- true
  for i in $(seq "$REPO_RUNS"); do
    launch "$dir/mk-$i.json" "$makima" run --id "rp-$name-$i" --repo "$src" \
      --data-dir "$data" -- "$clock" stamp "$dir/mk-$i.stamp"
    launch "$dir/git-$i.json" git -C "$bare" worktree add -q "$work/gwt-$name-$i" \
      -b "bench-$i" "$commit"
    # filesystem floor: create as many small files, same dir layout depth
    launch "$dir/fs-$i.json" python3 -c '
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "d%03d" % (i // 100))
    if i % 100 == 0: os.makedirs(d)
    with open(os.path.join(d, "f%05d" % i), "w") as f: f.write("x")
' "$work/fs-$name-$i" "$(cat "$dir/files")"
  done
  "$makima" task list --json --data-dir "$data" > "$dir/tasks.json" 2>/dev/null || true
  if [[ -x "$split" ]]; then
    "$split" "$src" "$data/repos" "$work/split-wt-$name" "$REPO_RUNS" \
      > "$dir/split.jsonl" 2>"$dir/split.err" || true
  fi
  # worktrees stay until the final cleanup: mass deletes make ext4 file
  # creation slow for a while (ext4 recently_deleted inode scan).
}

log "2/4 repo start: generating a $REPO_FILES-file repository"
gen="$work/gen-repo"
python3 - "$gen" "$REPO_FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = 100
for i in range(n):
    d = os.path.join(root, "src", "mod%03d" % (i // per_dir // 10), "pkg%02d" % (i // per_dir % 10))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%05d.c" % i), "w") as f:
        f.write("/* generated file %d */\n" % i)
        f.write("int f%d(int x) { return x * %d + %d; }\n" % (i, i % 97, i % 13) * (1 + i % 20))
EOF
(
  cd "$gen"
  git init -q -b main .
  git config gc.autoDetach false
  git -c user.name=bench -c user.email=bench@localhost add -A
  git -c user.name=bench -c user.email=bench@localhost commit -qm "initial"
  for c in 1 2 3; do
    for f in $(git ls-files | awk -v c=$c 'NR % 50 == c'); do echo "// change $c" >> "$f"; done
    mkdir -p "extra$c"; for k in $(seq 20); do echo "$c $k" > "extra$c/new$k.txt"; done
    git -c user.name=bench -c user.email=bench@localhost add -A
    git -c user.name=bench -c user.email=bench@localhost commit -qm "change $c"
  done
  git gc -q
)
log "2/4 repo start: generated repo ($REPO_RUNS alternating runs)"
repo_bench generated "$gen"
if [[ -n "$extra_repo" ]]; then
  log "2/4 repo start: $extra_repo ($REPO_RUNS alternating runs)"
  echo "$extra_repo" > "$work/extra_repo_path"
  repo_bench extra "$extra_repo"
fi

# --- 3. output throughput -----------------------------------------------------
log "3/4 throughput: ${THROUGHPUT_MB} MB through makima"
payload="$work/payload.bin"
head -c $((THROUGHPUT_MB * 1000000)) /dev/urandom > "$payload"
sha256sum "$payload" | cut -d' ' -f1 > "$res/payload.sha256"
cat "$payload" > /dev/null   # page cache
d3="$work/data-tp"
launch "$res/cat-direct.json" cat "$payload"
"$clock" launch --sample-ms 20 --out "$res/tp.json" -- \
  "$makima" run --id tp-1 --data-dir "$d3" -- cat "$payload" >/dev/null 2>&1 </dev/null || true
du -sb "$d3/db" | cut -f1 > "$res/tp-db-bytes"
log "3/4 throughput: verifying task logs byte-exactness"
if [[ "$VERIFY_MB" == "$THROUGHPUT_MB" ]]; then
  vid=tp-1; vsha=$(cat "$res/payload.sha256")
else
  vp="$work/verify.bin"; head -c $((VERIFY_MB * 1000000)) "$payload" > "$vp"
  vsha=$(sha256sum "$vp" | cut -d' ' -f1); vid=tp-verify
  "$makima" run --id tp-verify --data-dir "$d3" -- cat "$vp" >/dev/null 2>&1 || true
fi
launch "$res/logs.json" sh -c "'$makima' task logs $vid --data-dir '$d3' 2>/dev/null | sha256sum | cut -d' ' -f1 > '$res/logs.sha256'"
echo "$vsha" > "$res/verify.expected"
"$makima" task show tp-1 --json --data-dir "$d3" > "$res/tp-task.json" 2>/dev/null || true
rm -f "$payload"

# --- 4. RSS ---------------------------------------------------------------------
log "4/4 RSS: idle task (sleep 2) and streaming task"
d4="$work/data-rss"
"$makima" run --data-dir "$d4" -- true >/dev/null 2>&1 || true
"$clock" launch --sample-ms 10 --out "$res/rss-idle.json" -- \
  "$makima" run --id rss-idle --data-dir "$d4" -- sleep 2 >/dev/null 2>&1 </dev/null || true
# streaming: 200 MB through the pipe, makima's stdout to /dev/null
"$clock" launch --sample-ms 10 --out "$res/rss-stream.json" -- \
  "$makima" run --id rss-stream --data-dir "$d4" -- sh -c 'head -c 200000000 /dev/zero' \
  >/dev/null 2>&1 </dev/null || true
cut -d' ' -f1-3 /proc/loadavg > "$res/loadavg_end"

mkdir -p "$(dirname "$out")"
python3 "$here/report.py" "$res" "$out"
