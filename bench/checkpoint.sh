#!/usr/bin/env bash
# Checkpoint benchmark (issue 10): time and bytes uploaded for a first
# checkpoint, an unchanged one and one after +1 MiB of changes; the capture
# pause; restore into a cold and a warm data dir, each beside what a user
# would otherwise run (git clone of the same origin, git worktree add on a
# warm mirror) in the same run. Prints a table and writes JSON.
#
#   bench/checkpoint.sh [--repo PATH] [--out FILE.json]
#
# Without --repo a repository of FILES=1500 files and HISTORY_MB=100 MiB of
# history is generated. Environment: MAKIMA_BIN (default build/makima),
# RUNS=3 (restore repetitions, medians reported), BENCH_TMP, KEEP=1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/bench/results/checkpoint.json"
repo=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo) repo=$(cd "$2" && pwd); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "checkpoint.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
FILES=${FILES:-1500}
HISTORY_MB=${HISTORY_MB:-100}
RUNS=${RUNS:-3}
makima=${MAKIMA_BIN:-$root/build/makima}
[[ -x "$makima" ]] || { echo "checkpoint.sh: no makima at $makima" >&2; exit 2; }
work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/makima-cpbench.XXXXXX")
cleanup() { [[ -n "${KEEP:-}" ]] && echo "kept $work" >&2 || rm -rf "$work"; }
trap cleanup EXIT
log() { printf '[cpbench %s] %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1000, 1))" "$1" "$(now)"; }
export GIT_CONFIG_NOSYSTEM=1 HOME="$work/home"
mkdir -p "$HOME"
git config --global user.name bench
git config --global user.email bench@localhost
git config --global init.defaultBranch main

if [[ -z "$repo" ]]; then
  repo="$work/origin"
  log "generating $FILES files and $HISTORY_MB MiB of history in $repo"
  mkdir -p "$repo"
  git -C "$repo" init -q
  python3 - "$repo" "$FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
random.seed(1)
for i in range(n):
    d = os.path.join(root, "src", "d%02d" % (i % 50))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%04d.txt" % i), "w") as f:
        for j in range(40):
            f.write("line %d of file %d %s\n" % (j, i, random.random()))
EOF
  git -C "$repo" add -A && git -C "$repo" commit -qm "initial"
  per=$(( HISTORY_MB / 25 > 0 ? HISTORY_MB / 25 : 1 ))
  for i in $(seq 1 25); do
    head -c $(( per * 1048576 )) /dev/urandom > "$repo/asset-$i.bin"
    git -C "$repo" add -A && git -C "$repo" commit -qm "asset $i"
    git -C "$repo" rm -q "asset-$i.bin" && git -C "$repo" commit -qm "drop asset $i"
  done
  git -C "$repo" gc -q
fi
files=$(git -C "$repo" ls-files | wc -l)
history_kb=$(du -sk "$repo/.git" | cut -f1)
log "origin: $files files, $((history_kb / 1024)) MiB of .git"

store="$work/store"
a="$work/a"
export MAKIMA_STORE="file://$store"
cas_bytes() { { find "$store/cas" -type f -printf '%s\n' 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'; }
manifest_field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

log "task: changes 30 files, adds 200 untracked ones, fills a state dir"
"$makima" run --quiet --data-dir "$a" --id b1 --repo "$repo" -- sh -c '
  git ls-files | head -30 | while read f; do echo change >> "$f"; done
  mkdir -p new; i=0; while [ $i -lt 200 ]; do echo "file $i" > new/u$i.txt; i=$((i+1)); done
  mkdir -p "$MAKIMA_STATE_DIR/session"; head -c 5000000 /dev/urandom > "$MAKIMA_STATE_DIR/session/blob"
  echo notes > "$MAKIMA_STATE_DIR/notes"; exit 1' || true

declare -A ms bytes pause
checkpoint() { # name
  local before t0 after
  before=$(cas_bytes); t0=$(now)
  local ref; ref=$(MAKIMA_LOG_LEVEL=debug "$makima" task checkpoint --data-dir "$a" b1 2>"$work/checkpoint.err") || { cat "$work/checkpoint.err" >&2; exit 1; }
  ms[$1]=$(since "$t0")
  after=$(cas_bytes)
  local n=${ref#b1/}
  local mf="$store/tasks/b1/checkpoints/$n.json"
  bytes[$1]=$(( after - before + $(stat -c %s "$mf") ))
  pause[$1]=$(manifest_field "$mf" pause_ms)
  grep -h "capture took" "$work/checkpoint.err" >&2 || true
  log "$1 checkpoint $ref: ${ms[$1]} ms, ${bytes[$1]} bytes uploaded, capture ${pause[$1]} ms"
}
checkpoint first
checkpoint unchanged
head -c 1048576 /dev/urandom > "$a/worktrees/b1/plus-1mib.bin"
checkpoint plus_1mib

# Restore: cold (empty data dir) vs git clone of the origin; warm (the
# mirror is there) vs git worktree add on a bare clone.
median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]),1))" "$@"; }
cold=(); clone=(); warm=(); wtadd=()
git clone -q --bare "$repo" "$work/bare.git"
base=$(git -C "$work/bare.git" rev-parse HEAD)
# The file system (ext4 here) creates files much more slowly right after
# many were deleted (its inode allocator scans recently deleted inodes), so
# each pair runs in alternating order and only after a sync and a pause.
settle() { sync; sleep 1; }
for i in $(seq 1 "$RUNS"); do
  d="$work/cold$i"
  pair_cold() { settle; local t0; t0=$(now)
    "$makima" task restore --data-dir "$d" b1 >/dev/null 2>&1
    cold+=("$(since "$t0")"); }
  pair_clone() { settle; local t0; t0=$(now)
    git clone -q "$repo" "$work/clone$i"; clone+=("$(since "$t0")"); }
  pair_warm() { "$makima" task rm --data-dir "$d" b1 >/dev/null 2>&1; settle
    local t0; t0=$(now)
    "$makima" task restore --data-dir "$d" b1 >/dev/null 2>&1
    warm+=("$(since "$t0")"); }
  pair_wtadd() { settle; local t0; t0=$(now)
    git -C "$work/bare.git" worktree add -q "$work/wt$i" -b b$i "$base"
    wtadd+=("$(since "$t0")"); }
  if (( i % 2 )); then pair_cold; pair_clone; pair_warm; pair_wtadd
  else pair_clone; pair_cold; pair_wtadd; pair_warm; fi
  rm -rf "$d" "$work/clone$i" "$work/wt$i"
  git -C "$work/bare.git" worktree prune
done
cold_ms=$(median "${cold[@]}"); clone_ms=$(median "${clone[@]}")
warm_ms=$(median "${warm[@]}"); wtadd_ms=$(median "${wtadd[@]}")
ratio() { python3 -c "import sys; print(round(float(sys.argv[1]) / float(sys.argv[2]), 2))" "$1" "$2"; }
# The median of the paired ratios a_i / b_i (robust to the file system's
# slow phases, which hit both sides of a pair alike).
paired() { python3 -c "
import statistics, sys
a, b = sys.argv[1].split(), sys.argv[2].split()
print(round(statistics.median(float(x) / float(y) for x, y in zip(a, b)), 2))" "$1" "$2"; }
cold_paired=$(paired "${cold[*]}" "${clone[*]}")
warm_paired=$(paired "${warm[*]}" "${wtadd[*]}")

mkdir -p "$(dirname "$out")"
python3 - "$out" <<EOF
import json, sys
r = {
  "repo": {"files": $files, "git_dir_kib": $history_kb},
  "checkpoint": {
    k: {"ms": float(v[0]), "bytes_uploaded": int(v[1]), "capture_ms": int(v[2])}
    for k, v in {"first": ("${ms[first]}", "${bytes[first]}", "${pause[first]}"),
                 "unchanged": ("${ms[unchanged]}", "${bytes[unchanged]}", "${pause[unchanged]}"),
                 "plus_1mib": ("${ms[plus_1mib]}", "${bytes[plus_1mib]}", "${pause[plus_1mib]}")}.items()},
  "restore_ms": {"cold": $cold_ms, "warm": $warm_ms},
  "baseline_ms": {"git_clone": $clone_ms, "git_worktree_add": $wtadd_ms},
  "ratios": {"cold_restore_vs_git_clone": $(ratio "$cold_ms" "$clone_ms"),
             "warm_restore_vs_git_worktree_add": $(ratio "$warm_ms" "$wtadd_ms"),
             "cold_paired_median": $cold_paired,
             "warm_paired_median": $warm_paired},
  "samples_ms": {"cold": "${cold[*]}", "git_clone": "${clone[*]}",
                 "warm": "${warm[*]}", "git_worktree_add": "${wtadd[*]}"},
  "goals": {"unchanged_bytes_max": 4096, "plus_1mib_bytes_max": 1363149,
            "pause_ms_max": 50, "warm_restore_ratio_max": 1.0},
  "runs": $RUNS,
}
json.dump(r, open(sys.argv[1], "w"), indent=2)
print(json.dumps(r, indent=2))
EOF
printf '\n%-34s %12s %14s %12s\n' "checkpoint" "ms" "bytes up" "capture ms"
for k in first unchanged plus_1mib; do
  printf '%-34s %12s %14s %12s\n' "$k" "${ms[$k]}" "${bytes[$k]}" "${pause[$k]}"
done
printf '%-34s %12s   (git clone %s ms: %sx; paired median %sx)\n' "restore, cold data dir" "$cold_ms" "$clone_ms" "$(ratio "$cold_ms" "$clone_ms")" "$cold_paired"
printf '%-34s %12s   (git worktree add %s ms: %sx; paired median %sx)\n' "restore, warm data dir" "$warm_ms" "$wtadd_ms" "$(ratio "$warm_ms" "$wtadd_ms")" "$warm_paired"
log "wrote $out"
