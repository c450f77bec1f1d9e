#!/usr/bin/env bash
# Migration benchmark (issue 11): a task evicted by SIGTERM resumes on
# another daemon, warm (it has the repository's mirror) then cold (empty
# data dir): latency SIGTERM → the task's child exec on the new daemon and
# the evicted daemon's exit time, beside re-running from scratch (git clone
# of the same origin + the task's work so far) in the same run; done twice,
# with the origin as a plain path (clones by hard links) and served by
# `git daemon` on loopback (clones by a pack transfer, like a remote) —
# there the cold node seeds its mirror from the store's mirror packs, and a
# third run with them off (MAKIMA_MIRROR_PACKS_INTERVAL=0, another copy of
# the origin) measures the clone they save. Then bytes uploaded per
# periodic checkpoint of an idle and of a busy task, and SIGTERM → daemon
# exit when the task ignores the signal (grace, then SIGKILL). Loopback,
# one server, daemons sharing a file:// store. Prints a table, writes JSON.
#
#   bench/migration.sh [--repo PATH] [--out FILE.json]
#
# Without --repo a repository of FILES=1500 files and HISTORY_MB=100 MiB of
# history is generated. Default out: bench/results/migration-DATE.json.
# Environment: MAKIMA_BIN (or MAKIMA; default build/makima), GRACE=3
# (--eviction-grace), STEPS_A=5 / STEPS_B=4 (1 s steps done on A, on B
# before each eviction), IDLE_S=5, BUSY_S=6, BENCH_TMP, KEEP=1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out="$root/bench/results/migration-$(date -u +%Y-%m-%d).json"
repo=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --repo) repo=$(cd "$2" && pwd); shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "migration.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
FILES=${FILES:-1500}
HISTORY_MB=${HISTORY_MB:-100}
GRACE=${GRACE:-3}
DEADLINE=${DEADLINE:-15}
STEPS_A=${STEPS_A:-5}
STEPS_B=${STEPS_B:-4}
STEPS=${STEPS:-$((STEPS_A + STEPS_B + 4))}
BUSY_S=${BUSY_S:-6}
IDLE_S=${IDLE_S:-5}
makima=${MAKIMA_BIN:-${MAKIMA:-$root/build/makima}}
[[ -x "$makima" ]] || { echo "migration.sh: no makima at $makima" >&2; exit 2; }
makima=$(cd "$(dirname "$makima")" && pwd)/$(basename "$makima")
work=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/makima-migbench.XXXXXX")
log() { printf '[migbench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# Every process started here, killed on exit; the tasks' processes carry
# MIGBENCH=$work in their environment, so that what a daemon leaves behind
# is found by that and killed too.
pids=()
cleanup() {
  local p
  exec 3>&2 2>/dev/null # no "Killed" job notices
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in /proc/[0-9]*; do
    if tr "\0" "\n" 2>/dev/null <"$p/environ" | grep -qxF "MIGBENCH=$work"; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  { wait; } 2>/dev/null || true
  [[ -n "${KEEP:-}" ]] && echo "kept $work" >&3 || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
ms_between() { echo $(( ($2 - $1) / 1000 )).$(( (($2 - $1) % 1000) / 100 )); } # us us -> ms
# wait_until SECONDS CMD...: polls CMD every 50 ms; false after SECONDS.
wait_until() {
  local end=$(( $(now_us) + $1 * 1000000 )); shift
  until "$@"; do
    (( $(now_us) < end )) || return 1
    sleep 0.05
  done
}
export GIT_CONFIG_NOSYSTEM=1 HOME="$work/home"
mkdir -p "$HOME" "$work/marks"
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
history_kb=$(du -sk "$repo/.git" 2>/dev/null | cut -f1 || du -sk "$repo" | cut -f1)
log "origin: $files files, $((history_kb / 1024)) MiB of .git"

# -- server and daemons -------------------------------------------------------
store="$work/store"
export MAKIMA_API_KEY="user-$RANDOM$RANDOM$RANDOM"
daemon_key="daemon-$RANDOM$RANDOM$RANDOM"
"$makima" server --listen 127.0.0.1:0 --data-dir "$work/server" \
  --user-key "$MAKIMA_API_KEY" --daemon-key "$daemon_key" >"$work/server.log" 2>&1 &
pids+=($!)
listening() { grep -q "listening on http://" "$work/server.log"; }
wait_until 20 listening || die "server did not start: $(cat "$work/server.log")"
port=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$work/server.log" | head -1 | sed 's/.*://')
http="http://127.0.0.1:$port"
get() { curl -sf --max-time 10 -H "Authorization: Bearer $MAKIMA_API_KEY" "$http$1"; }
metric() { get /metrics | awk -v n="$1" '$1 == n {print $2}'; }
state() { get "/api/v1/tasks/$1" | jq -r .state; }
in_state() { [[ "$(state "$1")" == "$2" ]]; }
submit() { # ID ARGS... (-- CMD...)
  local id=$1; shift
  "$makima" task submit --server "$http" --id "$id" --max-attempts 9 \
    --env "MIGBENCH=$work" "$@" >/dev/null
}

declare -A dpid
start_daemon() { # NAME MAX_TASKS
  local name=$1
  env ${DAEMON_ENV:-} MAKIMA_LOG_LEVEL=debug MAKIMA_API_KEY="$daemon_key" "$makima" daemon \
    --server "ws://127.0.0.1:$port/ws/daemon" --name "$name" --pool k8s \
    --max-tasks "$2" --heartbeat 1 --data-dir "$work/data-$name" \
    --store "file://$store" --checkpoint-interval 1 \
    --eviction-grace "$GRACE" --eviction-deadline "$DEADLINE" \
    >"$work/$name.log" 2>&1 &
  dpid[$name]=$!
  pids+=($!)
  connected() { grep -q "connected to " "$work/$name.log"; }
  wait_until 20 connected || die "daemon $name did not connect: $(cat "$work/$name.log")"
}
# evict NAME: SIGTERM to the daemon; sets t_term (us) and exit_ms / exit_rc.
evict() {
  local p=${dpid[$1]}
  t_term=$(now_us)
  kill -TERM "$p"
  local end=$(( t_term + (DEADLINE + 10) * 1000000 ))
  while kill -0 "$p" 2>/dev/null && [[ -z "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null | grep -x Z)" ]]; do
    (( $(now_us) < end )) || die "daemon $1 still running $((DEADLINE + 10)) s after SIGTERM"
    sleep 0.02
  done
  local t_exit; t_exit=$(now_us)
  exit_rc=0; wait "$p" || exit_rc=$?
  exit_ms=$(ms_between "$t_term" "$t_exit")
}

# -- 1-3: warm and cold migration, from-scratch baseline ---------------------
# The task: STEPS steps of 1 s; each writes step-$i in the worktree and the
# counter in $MAKIMA_STATE_DIR; on SIGTERM (the eviction signal) it stops
# between two steps. Resumed, its first act is to stamp the time of its
# exec (ns) into marks/ID-ATTEMPT.
task_sh='n="$MAKIMA_STATE_DIR/n"
[ "${MAKIMA_RESUMED:-0}" = 1 ] && date +%s%N > '"$work"'/marks/$MAKIMA_TASK_ID-$MAKIMA_ATTEMPT
i=$(cat "$n" 2>/dev/null || echo 0)
echo "attempt $MAKIMA_ATTEMPT resumed=${MAKIMA_RESUMED:-0} from=$i"
term=; trap "term=1" TERM
while [ "$i" -lt '"$STEPS"' ]; do
  echo "step $i" > "step-$i"; echo "step $i"
  i=$((i + 1)); echo "$i" > "$n"
  [ -n "$term" ] && { echo saved; exit 143; }
  sleep 1
  [ -n "$term" ] && { echo saved; exit 143; }
done
echo finished'
output() { # ID: the task's output at the server
  local from=0 j
  for _ in $(seq 1 1000); do
    j=$(get "/api/v1/tasks/$1/output?from=$from") || return 0
    [[ $(jq '.chunks | length' <<<"$j") -gt 0 ]] || return 0
    jq -r '.chunks[].data' <<<"$j" | while read -r c; do base64 -d <<<"$c"; done
    from=$(jq -r .next <<<"$j")
  done
}
has_output() { output "$1" | grep -qx "$2"; }
checkpointed() { [[ -n "$(get "/api/v1/tasks/$1" | jq -r '.checkpoint // empty')" ]]; }
marked() { [[ -s "$work/marks/$1" ]]; }
settle() { sync; sleep 1; }
# The history of ID from SIGTERM T (us) of attempt A to the first
# `running` of attempt A+1, in ms after T.
history_after() { # ID T_US A
  get "/api/v1/tasks/$1?history=1" | jq -c --argjson t "$(( $2 / 1000 ))" --argjson a "$3" '
    [.history[] | select(.at >= $t - 5 and .attempt >= $a)] as $h
    | ($h | map(.attempt == $a + 1 and .state == "running") | index(true)) as $i
    | $h[: (($i // ($h | length)) + 1)] | map({state, attempt, ms: (.at - $t), detail})'
}

# chain TAG URL: task mig-TAG of URL starts on a-TAG; b-TAG gets the mirror
# (a short task of URL); SIGTERM a-TAG → warm resume on b-TAG; c-TAG starts
# with an empty data dir; SIGTERM b-TAG → cold resume on c-TAG, which
# finishes it. Writes $work/chain-TAG.json.
chain() {
  local tag=$1 url=$2 id="mig-$1" a="a-$1" b="b-$1" c="c-$1"
  log "[$tag] origin $url; daemon $a (1 slot) runs task $id"
  start_daemon "$a" 1
  submit "$id" --repo "$url" -- sh -c "$task_sh"
  wait_until 60 has_output "$id" "step 0" || die "$id did not start on $a: $(tail -20 "$work/$a.log")"
  log "[$tag] daemon $b (1 slot) runs a short task of the repo: it gets the mirror (warm)"
  start_daemon "$b" 1
  local t; t=$(now_us)
  submit "warmup-$tag" --repo "$url" -- true
  wait_until 60 in_state "warmup-$tag" succeeded || die "warmup-$tag did not succeed: $(get "/api/v1/tasks/warmup-$tag")"
  local warmup_ms; warmup_ms=$(ms_between "$t" "$(now_us)")
  [[ "$(get "/api/v1/tasks/warmup-$tag" | jq -r .worktree)" == "$work/data-$b/"* ]] ||
    die "warmup-$tag did not run on $b: $(get "/api/v1/tasks/warmup-$tag")"
  log "[$tag] warm-up task on $b (mirror clone + checkout + run), submit → succeeded: $warmup_ms ms"
  wait_until 60 has_output "$id" "step $((STEPS_A - 1))" || die "$id did not reach step $((STEPS_A - 1))"
  wait_until 10 checkpointed "$id" || die "no periodic checkpoint of $id"
  local -A lat exitms exitrc tterm
  migrate() { # FROM ATTEMPT
    evict "$1"
    exitms[$2]=$exit_ms; exitrc[$2]=$exit_rc; tterm[$2]=$t_term
    wait_until 60 marked "$id-$2" || die "attempt $2 of $id did not start: $(get "/api/v1/tasks/$id?history=1")"
    local ns; ns=$(cat "$work/marks/$id-$2")
    lat[$2]=$(ms_between "$t_term" "$(( ns / 1000 ))")
    log "[$tag] SIGTERM $1 → exec of attempt $2: ${lat[$2]} ms; $1 exited $exit_rc after $exit_ms ms"
  }
  log "[$tag] SIGTERM $a after $STEPS_A steps (warm resume on $b)"
  migrate "$a" 2
  wait_until 60 has_output "$id" "step $((STEPS_A + STEPS_B - 1))" || die "$id did not go on on $b"
  log "[$tag] daemon $c (empty data dir, 1 slot)"
  start_daemon "$c" 1
  log "[$tag] SIGTERM $b after $STEPS_B more steps (cold resume on $c)"
  migrate "$b" 3
  wait_until $((STEPS + 30)) in_state "$id" succeeded ||
    die "$id did not succeed on $c: $(get "/api/v1/tasks/$id?history=1")"
  local o; o=$(output "$id")
  local from2 from3
  from2=$(grep -o '^attempt 2 resumed=1 from=[0-9]*' <<<"$o" | sed 's/.*=//') || true
  from3=$(grep -o '^attempt 3 resumed=1 from=[0-9]*' <<<"$o" | sed 's/.*=//') || true
  [[ -n "$from2" && -n "$from3" ]] || die "attempts 2 and 3 of $id did not resume: $o"
  local ok=true i
  for i in $(seq 0 $((STEPS - 1))); do
    [[ $(grep -cx "step $i" <<<"$o") == 1 ]] || ok=false
    [[ -f "$work/data-$c/worktrees/$id/step-$i" ]] || ok=false
  done
  [[ $(grep -cx finished <<<"$o") == 1 ]] || ok=false
  log "[$tag] $id succeeded on $c; every step once in the output, every file in $c's worktree: $ok"
  evict "$c" # idle now
  local restore_b restore_c
  restore_b=$(grep -h "task $id: restored in" "$work/$b.log" | tail -1 | sed "s/.*task $id: //")
  restore_c=$(grep -h "task $id: restored in" "$work/$c.log" | tail -1 | sed "s/.*task $id: //")
  log "[$tag] $b: $restore_b"; log "[$tag] $c: $restore_c"
  # From scratch: a fresh clone of the same origin, then the work done so
  # far (steps of 1 s) again.
  settle; t=$(now_us); git clone -q "$url" "$work/scratch-$tag"
  local clone_ms; clone_ms=$(ms_between "$t" "$(now_us)")
  log "[$tag] git clone $url: $clone_ms ms; scratch = that + $from2 s (warm), + $from3 s (cold)"
  R_TAG=$tag R_URL=$url R_OK=$ok R_WARMUP=$warmup_ms R_CLONE=$clone_ms \
  R_LAT2=${lat[2]} R_LAT3=${lat[3]} R_EX2=${exitms[2]} R_EX3=${exitms[3]} \
  R_RC2=${exitrc[2]} R_RC3=${exitrc[3]} R_FROM2=$from2 R_FROM3=$from3 \
  R_RB="$restore_b" R_RC="$restore_c" \
  R_HB="$(grep -h "task $id: restored $id/" "$work/$b.log" | tail -1 | sed "s/.*task $id: //")" \
  R_HC="$(grep -h "task $id: restored $id/" "$work/$c.log" | tail -1 | sed "s/.*task $id: //")" \
  R_FA="$(grep -h "task $id: checkpoint $id/" "$work/$a.log" | tail -1 | sed "s/.*task $id: //")" \
  R_FB="$(grep -h "task $id: checkpoint $id/" "$work/$b.log" | tail -1 | sed "s/.*task $id: //")" \
  R_H2="$(history_after "$id" "${tterm[2]}" 1)" R_H3="$(history_after "$id" "${tterm[3]}" 2)" \
  python3 - "$work/chain-$tag.json" <<'EOF'
import json, os, re, sys
e = os.environ
def split(line):
    m = re.search(r"restored in (\d+) ms \(manifests and blobs (\d+), state dir and mirror (\d+), worktree (\d+), records (\d+)\)", line)
    return dict(zip(["total", "manifests_and_blobs", "state_dir_and_mirror", "worktree", "records"],
                    map(int, m.groups()))) if m else line
def leg(n, restore, final, how):
    lat, steps = float(e["R_LAT" + n]), int(e["R_FROM" + n])
    scratch = float(e["R_CLONE"]) + steps * 1000
    return {"sigterm_to_exec_ms": lat, "steps_kept": steps,
            "evicted_daemon_exit_ms": float(e["R_EX" + n]), "evicted_daemon_rc": int(e["R_RC" + n]),
            "final_checkpoint": final, "restore_ms": split(restore), "restore_log": how,
            "history_ms_after_sigterm": json.loads(e["R_H" + n]),
            "scratch_ms": scratch, "ratio_vs_scratch": round(lat / scratch, 3)}
json.dump({"origin": e["R_URL"], "warmup_task_ms": float(e["R_WARMUP"]),
           "git_clone_ms": float(e["R_CLONE"]),
           "warm": leg("2", e["R_RB"], e["R_FA"], e["R_HB"]),
           "cold": leg("3", e["R_RC"], e["R_FB"], e["R_HC"]),
           "task_complete_after_two_migrations": e["R_OK"] == "true"},
          open(sys.argv[1], "w"), indent=2)
EOF
}
chain path "$repo"
# The same origin served by `git daemon` on loopback: a clone is a pack
# transfer, as from a remote (a path or a file:// URL clones by hard links).
gport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# (git-daemon itself: `git daemon` would run it as a child that outlives a kill)
# Two bare copies of the origin (hard links): one per run, so that the
# run without mirror packs finds none of the other's in the store.
mkdir -p "$work/served"
git clone -q --bare "$repo" "$work/served/origin.git"
git clone -q --bare "$repo" "$work/served/noseed.git"
"$(git --exec-path)/git-daemon" --reuseaddr --listen=127.0.0.1 --port="$gport" --export-all \
  --base-path="$work/served" "$work/served" >"$work/git-daemon.log" 2>&1 &
pids+=($!)
git_url="git://127.0.0.1:$gport/origin.git"
serving() { git ls-remote "$git_url" HEAD >/dev/null 2>&1; }
wait_until 20 serving || die "git daemon did not serve $git_url: $(cat "$work/git-daemon.log")"
chain git "$git_url"
DAEMON_ENV=MAKIMA_MIRROR_PACKS_INTERVAL=0 chain noseed "git://127.0.0.1:$gport/noseed.git"

# -- 4: bytes per periodic checkpoint -----------------------------------------
# Daemon d runs an idle task (sleep; it ignores SIGTERM, for 5) and, after
# its first checkpoint and IDLE_S seconds, a busy one (1 MiB of random bytes
# per second).
start_daemon d 2
ckpt_lines() { grep -h "task $1: checkpoint $1/" "$work/d.log" || true; }
nothing_lines() { grep -h "task $1: nothing changed since" "$work/d.log" || true; }
cas_bytes() { { find "$store/cas" -type f -printf '%s\n' 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'; }
has_ckpt() { [[ -n "$(ckpt_lines "$1")" ]]; }
log "idle task (sleep) on d for $IDLE_S s after its first checkpoint"
submit idle --repo "$repo" -- sh -c "trap '' TERM; echo idle; exec sleep 300"
wait_until 30 has_ckpt idle || die "no checkpoint of idle: $(tail "$work/d.log")"
sleep 0.3
n0=$(metric makima_checkpoints_total); b0=$(metric makima_checkpoint_bytes_total); s0=$(cas_bytes)
k0=$(ckpt_lines idle | wc -l); z0=$(nothing_lines idle | wc -l)
sleep "$IDLE_S"
n1=$(metric makima_checkpoints_total); b1=$(metric makima_checkpoint_bytes_total); s1=$(cas_bytes)
k1=$(ckpt_lines idle | wc -l); z1=$(nothing_lines idle | wc -l)
idle_new=$((k1 - k0)); idle_skipped=$((z1 - z0))
idle_metric_new=$(python3 -c "print(int($n1 - $n0))"); idle_metric_bytes=$(python3 -c "print(int($b1 - $b0))")
idle_store_bytes=$((s1 - s0))
log "idle: $idle_new new checkpoints ($idle_skipped skipped: nothing changed), server counted $idle_metric_new, $idle_metric_bytes bytes; store +$idle_store_bytes bytes"

log "busy task on d: 1 MiB of random bytes per second for $BUSY_S s"
n0=$(metric makima_checkpoints_total); b0=$(metric makima_checkpoint_bytes_total)
submit busy --repo "$repo" -- sh -c "i=0; while [ \$i -lt $BUSY_S ]; do head -c 1048576 /dev/urandom > data-\$i.bin; i=\$((i + 1)); sleep 1; done"
wait_until $((BUSY_S + 30)) in_state busy succeeded || die "busy did not succeed: $(get /api/v1/tasks/busy)"
sleep 1.5 # the last report reaches the server
n1=$(metric makima_checkpoints_total); b1=$(metric makima_checkpoint_bytes_total)
busy_lines=$(ckpt_lines busy)
busy_n=$(grep -c . <<<"$busy_lines" || true)
busy_bytes=$(sed 's/.* blobs, \([0-9]*\) bytes uploaded.*/\1/' <<<"$busy_lines" | tr '\n' ' ')
busy_pause=$(sed 's/.*paused \([0-9]*\) ms.*/\1/' <<<"$busy_lines" | tr '\n' ' ')
busy_metric_n=$(python3 -c "print(int($n1 - $n0))"); busy_metric_bytes=$(python3 -c "print(int($b1 - $b0))")
log "busy: $busy_n checkpoints, bytes each: $busy_bytes; pauses ms: $busy_pause; server counted $busy_metric_n, $busy_metric_bytes bytes"

# -- 5: SIGTERM → exit when the task ignores the signal ------------------------
log "SIGTERM d while idle ignores SIGTERM (SIGKILL after the $GRACE s grace)"
evict d
log "d exited $exit_rc after $exit_ms ms"
final_d=$(grep -h "task idle: checkpoint idle/" "$work/d.log" | tail -1 | sed 's/.*task idle: //')

# -- results -----------------------------------------------------------------
mkdir -p "$(dirname "$out")"
export R_WORK=$work R_FILES=$files R_KB=$history_kb R_GRACE=$GRACE R_STEPS=$STEPS \
  R_EXD=$exit_ms R_RCD=$exit_rc R_FD="$final_d" \
  R_IN=$idle_new R_IS=$idle_skipped R_IMN=$idle_metric_new \
  R_IMB=$idle_metric_bytes R_ISB=$idle_store_bytes R_IDLE_S=$IDLE_S \
  R_BN=$busy_n R_BB="$busy_bytes" R_BP="$busy_pause" R_BMN=$busy_metric_n R_BMB=$busy_metric_bytes \
  R_BUSY_S=$BUSY_S R_HEAD="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo ?)" \
  R_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'EOF'
import datetime, json, os, sys
e = os.environ
ints = lambda k: [int(x) for x in e[k].split()]
busy = ints("R_BB")
chains = {t: json.load(open(os.path.join(e["R_WORK"], "chain-%s.json" % t))) for t in ("path", "git", "noseed")}
grace = int(e["R_GRACE"])
r = {
  "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  "commit": e["R_HEAD"], "load_after": e["R_LOAD"], "cpus": os.cpu_count(),
  "repo": {"files": int(e["R_FILES"]), "git_dir_kib": int(e["R_KB"])},
  "eviction_grace_s": grace, "step_s": 1,
  "origin_path": chains["path"], "origin_git_daemon": chains["git"],
  "origin_git_daemon_without_mirror_packs": chains["noseed"],
  "cold_git_seeded_vs_cloned": round(chains["git"]["cold"]["sigterm_to_exec_ms"]
                                     / chains["noseed"]["cold"]["sigterm_to_exec_ms"], 3),
  "idle": {"window_s": int(e["R_IDLE_S"]), "new_checkpoints": int(e["R_IN"]),
           "skipped_nothing_changed": int(e["R_IS"]),
           "server_checkpoints_delta": int(e["R_IMN"]), "server_bytes_delta": int(e["R_IMB"]),
           "store_cas_bytes_delta": int(e["R_ISB"])},
  "busy": {"seconds": int(e["R_BUSY_S"]), "write_per_s": 1048576,
           "checkpoints": int(e["R_BN"]), "bytes_each": busy, "pause_ms_each": ints("R_BP"),
           "bytes_median": sorted(busy)[len(busy) // 2] if busy else 0,
           "server_checkpoints_delta": int(e["R_BMN"]), "server_bytes_delta": int(e["R_BMB"])},
  "ignoring_task": {"sigterm_to_daemon_exit_ms": float(e["R_EXD"]), "rc": int(e["R_RCD"]),
                    "final_checkpoint": e["R_FD"]},
  "goals": {"warm_ms_max": 1500, "cold_ms_max": 3000, "idle_uploads": 0,
            "daemon_exit_ms_max": (grace + 2) * 1000},
}
json.dump(r, open(sys.argv[1], "w"), indent=2)
g = r["goals"]
met = lambda ok: "met" if ok else "NOT met"
def rs(x):
    return x if isinstance(x, str) else "%d ms: blobs %d, state+mirror %d, worktree %d, records %d" % (
        x["total"], x["manifests_and_blobs"], x["state_dir_and_mirror"], x["worktree"], x["records"])
rows = [("repo", "%d files, %d MiB .git" % (r["repo"]["files"], r["repo"]["git_dir_kib"] // 1024), "")]
for tag, c in (("path", chains["path"]), ("git://", chains["git"]),
               ("git://, mirror packs off", chains["noseed"])):
    rows.append(("origin as %s: git clone" % tag, "%.0f ms" % c["git_clone_ms"], ""))
    for leg, goal, who in (("warm", 1500, "A → B"), ("cold", 3000, "B → C")):
        x = c[leg]
        rows += [
          ("  %s: SIGTERM → exec (%s)" % (leg, who), "%.0f ms" % x["sigterm_to_exec_ms"],
           "≤ %d ms: %s" % (goal, met(x["sigterm_to_exec_ms"] <= goal))),
          ("    restore", rs(x["restore_ms"]), ""),
          ("    how", x["restore_log"][x["restore_log"].find("bytes"):], ""),
          ("    from scratch (clone + %d s of steps)" % x["steps_kept"],
           "%.0f ms; resume / scratch %.2f" % (x["scratch_ms"], x["ratio_vs_scratch"]), ""),
          ("    SIGTERM → evicted daemon exit", "%.0f ms, rc %d (task obeys SIGTERM)" % (
              x["evicted_daemon_exit_ms"], x["evicted_daemon_rc"]),
           "≤ %d ms: %s" % (g["daemon_exit_ms_max"], met(x["evicted_daemon_exit_ms"] <= g["daemon_exit_ms_max"]))),
        ]
    rows.append(("  task complete after 2 migrations", str(c["task_complete_after_two_migrations"]), ""))
rows.append(("cold git://: seeded / cloned (same run)", "%.2f" % r["cold_git_seeded_vs_cloned"], ""))
i, b, d = r["idle"], r["busy"], r["ignoring_task"]
rows += [
  ("idle: new checkpoints in %d s" % i["window_s"], "%d (%d skipped), server +%d / +%d B, store +%d B" % (
      i["new_checkpoints"], i["skipped_nothing_changed"], i["server_checkpoints_delta"],
      i["server_bytes_delta"], i["store_cas_bytes_delta"]),
   "0 uploads: " + met(i["new_checkpoints"] == 0 and i["store_cas_bytes_delta"] == 0)),
  ("busy (1 MiB/s): bytes per checkpoint", "median %d B over %d (server: %d, %d B)" % (
      b["bytes_median"], b["checkpoints"], b["server_checkpoints_delta"], b["server_bytes_delta"]), ""),
  ("  pauses", " ".join(str(x) for x in b["pause_ms_each"]) + " ms", ""),
  ("SIGTERM → daemon exit, task ignores it", "%.0f ms, rc %d" % (d["sigterm_to_daemon_exit_ms"], d["rc"]),
   "≤ %d ms: %s" % (g["daemon_exit_ms_max"], met(d["sigterm_to_daemon_exit_ms"] <= g["daemon_exit_ms_max"]))),
]
print()
for a, v, c in rows:
    print("%-44s %-62s %s" % (a, v, c))
for tag, c in chains.items():
    for leg in ("warm", "cold"):
        print("\n%s %s, history after SIGTERM (ms): %s" % (tag, leg, " | ".join(
            "%d %s#%d %s" % (h["ms"], h["state"], h["attempt"], h["detail"]) for h in c[leg]["history_ms_after_sigterm"])))
EOF
log "wrote $out"
