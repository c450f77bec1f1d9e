#!/usr/bin/env python3
"""Turns the raw files bench/run.sh collected into a table and a JSON file.

usage: report.py RESULTS_DIR OUT.json
"""
import glob
import json
import os
import statistics
import sys

res, out = sys.argv[1], sys.argv[2]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read(path, conv=str):
    try:
        with open(path) as f:
            return conv(f.read().strip())
    except (OSError, ValueError):
        return None


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"n": len(xs), "p50": pct(xs, 50), "p90": pct(xs, 90),
            "min": min(xs), "max": max(xs)}


def ms(ns):
    return ns / 1e6


def runs(prefix, n):
    """[(launch json, stamp ns or None)] for prefix-1..n"""
    outl = []
    for i in range(1, n + 1):
        j = load(f"{prefix}-{i}.json")
        s = read(f"{prefix}-{i}.stamp", lambda t: int(t.splitlines()[0]))
        outl.append((j, s))
    return outl


def tasks_by_id(path):
    t = load(path) or []
    return {x["id"]: x for x in t}


meta = load(os.path.join(res, "meta.json")) or {}
meta["loadavg_end"] = read(os.path.join(res, "loadavg_end"))
R = meta.get("runs", 50)
RR = meta.get("repo_runs", 7)
report = {"meta": meta}
rows = []  # (section, figure, value, goal)

# --- 1. no-repo start ---------------------------------------------------------
np = os.path.join(res, "np")
direct = runs(os.path.join(np, "direct"), R)
mk = runs(os.path.join(np, "mk"), R)
tasks = tasks_by_id(os.path.join(np, "tasks.json"))
wall = lambda j: ms(j["t1"] - j["t0"]) if j else None
s1 = {
    "direct_spawn_to_exec_ms": summary(
        [ms(s - j["t0"]) for j, s in direct if j and s]),
    "bin_true_wall_ms": summary(
        [wall(j) for j in (load(f"{np}/true-{i}.json") for i in range(1, R + 1))]),
    "makima_version_wall_ms": summary(
        [wall(j) for j in (load(f"{np}/version-{i}.json") for i in range(1, R + 1))]),
    "submit_to_exec_ms": summary([ms(s - j["t0"]) for j, s in mk if j and s]),
    "exec_to_makima_exit_ms": summary([ms(j["t1"] - s) for j, s in mk if j and s]),
    "makima_run_true_wall_ms": summary(
        [wall(j) for j in (load(f"{np}/mktrue-{i}.json") for i in range(1, R + 1))]),
}
# split of submit→exec by makima's own (ms-resolution) timestamps:
# launch → created_at (process start, CLI, config) → started_at (DB open,
# actor system, recovery, create record, scratch dir, spawn)
pre, mid = [], []
for i, (j, s) in enumerate(mk, 1):
    t = tasks.get(f"np-{i}")
    if j and t and t.get("started_at"):
        pre.append(t["created_at"] - j["t0"] / 1e6)
        mid.append(t["started_at"] - t["created_at"])
s1["launch_to_created_at_ms"] = summary(pre)
s1["created_at_to_started_at_ms"] = summary(mid)
inproc = load(os.path.join(np, "inproc.json"))
s1["inproc"] = inproc
report["no_repo_start"] = s1


def f(x, unit="ms", nd=1):
    return "n/a" if x is None else f"{x:.{nd}f} {unit}".strip()


def p5090(s):
    return "n/a" if not s else f"p50 {s['p50']:.1f} / p90 {s['p90']:.1f} ms"


rows += [
    ("1 no-repo start", "submit → child exec (makima run)", p5090(s1["submit_to_exec_ms"]), "p50 ≤ 5 ms"),
    ("", "  of which launch → created_at (exec, dyld, CLI, config)", p5090(s1["launch_to_created_at_ms"]), ""),
    ("", "  of which created_at → started_at (DB open, actors, spawn)", p5090(s1["created_at_to_started_at_ms"]), ""),
    ("", "child exec → makima exit (teardown)", p5090(s1["exec_to_makima_exit_ms"]), ""),
    ("", "makima run -- true, wall", p5090(s1["makima_run_true_wall_ms"]), ""),
    ("", "makima --version, wall (process floor)", p5090(s1["makima_version_wall_ms"]), ""),
    ("", "in a running node: submit → child exec'd + stored",
     "n/a" if not inproc else f"p50 {inproc['start_p50_ms']:.2f} / p90 {inproc['start_p90_ms']:.2f} ms", "p50 ≤ 5 ms"),
    ("", "in a running node: submit → result",
     "n/a" if not inproc else f"p50 {inproc['result_p50_ms']:.2f} / p90 {inproc['result_p90_ms']:.2f} ms", ""),
    ("", "/bin/true spawn, wall (floor)", p5090(s1["bin_true_wall_ms"]), ""),
    ("", "direct spawn → exec of the marker (floor)", p5090(s1["direct_spawn_to_exec_ms"]), ""),
]

# --- 2. repo start --------------------------------------------------------------
report["repo_start"] = {}
extra_path = read(os.path.join(os.path.dirname(res), "extra_repo_path"))
for name in ("generated", "extra"):
    d = os.path.join(res, f"repo-{name}")
    if not os.path.isdir(d):
        continue
    mkr = runs(os.path.join(d, "mk"), RR)
    tk = tasks_by_id(os.path.join(d, "tasks.json"))
    gitw = [wall(load(f"{d}/git-{i}.json")) for i in range(1, RR + 1)]
    fsw = [wall(load(f"{d}/fs-{i}.json")) for i in range(1, RR + 1)]
    sub = [ms(s - j["t0"]) for j, s in mkr if j and s]
    prep = []
    for i in range(1, RR + 1):
        t = tk.get(f"rp-{name}-{i}")
        if t and t.get("started_at"):
            prep.append(t["started_at"] - t["created_at"])
    split = []
    try:
        with open(os.path.join(d, "split.jsonl")) as fh:
            split = [json.loads(l) for l in fh if l.strip()]
    except OSError:
        pass
    it = [x for x in split if "fetch_ms" in x]
    warm = load(os.path.join(d, "warm.json"))
    r = {
        "path": extra_path if name == "extra" else "(generated)",
        "files": read(os.path.join(d, "files"), int),
        "bare_clone_kb": read(os.path.join(d, "bare_kb"), int),
        "first_task_cold_mirror_wall_ms": wall(warm),
        "makima_submit_to_exec_ms": summary(sub),
        "makima_created_to_started_ms": summary(prep),
        "git_worktree_add_ms": summary(gitw),
        "fs_floor_create_files_ms": summary(fsw),
        "inprocess_fetch_ms": summary([x["fetch_ms"] for x in it]),
        "inprocess_resolve_ms": summary([x["resolve_ms"] for x in it]),
        "inprocess_add_worktree_ms": summary([x["add_worktree_ms"] for x in it]),
    }
    a, b = r["makima_submit_to_exec_ms"], r["git_worktree_add_ms"]
    r["ratio_makima_over_git"] = (a["p50"] / b["p50"]) if a and b else None
    mk_by_i = {i: ms(s - j["t0"]) for i, (j, s) in enumerate(mkr, 1) if j and s}
    paired = [mk_by_i[i] / g for i, g in enumerate(gitw, 1) if g and i in mk_by_i]
    r["paired_ratio_makima_over_git"] = summary(paired)
    fm = r["inprocess_fetch_ms"]
    r["fetch_share_of_submit_to_exec"] = (fm["p50"] / a["p50"]) if fm and a else None
    report["repo_start"][name] = r
    label = f"2 repo start ({name}, {r['files']} files)"
    rows += [
        (label, "makima submit → child exec (warm mirror)", p5090(a), ""),
        ("", "git worktree add -b (bare clone)", p5090(b), ""),
        ("", "fs floor: create as many 1-byte files (python)", p5090(r["fs_floor_create_files_ms"]), ""),
        ("", "ratio makima / git (p50)", f(r["ratio_makima_over_git"], "×", 2), "≤ 1.0×"),
        ("", "paired ratio makima_i / git_i (back-to-back runs)",
         "n/a" if not r["paired_ratio_makima_over_git"] else
         f"p50 {r['paired_ratio_makima_over_git']['p50']:.2f}× (min {r['paired_ratio_makima_over_git']['min']:.2f}, max {r['paired_ratio_makima_over_git']['max']:.2f})", "≤ 1.0×"),
        ("", "  created_at → started_at (prepare+spawn)", p5090(r["makima_created_to_started_ms"]), ""),
        ("", "  in-process libgit2 fetch (local origin)", p5090(fm), ""),
        ("", "  in-process resolve", p5090(r["inprocess_resolve_ms"]), ""),
        ("", "  in-process add_worktree (checkout)", p5090(r["inprocess_add_worktree_ms"]), ""),
        ("", "  fetch share of submit → exec (p50s)",
         "n/a" if r["fetch_share_of_submit_to_exec"] is None else f"{100 * r['fetch_share_of_submit_to_exec']:.0f} %", ""),
        ("", "first task (cold mirror: clone + checkout), wall", f(r["first_task_cold_mirror_wall_ms"]), ""),
    ]

# --- 3. throughput --------------------------------------------------------------
mb = meta.get("throughput_mb", 500)
tp = load(os.path.join(res, "tp.json"))
cat = load(os.path.join(res, "cat-direct.json"))
logs = load(os.path.join(res, "logs.json"))
tpt = load(os.path.join(res, "tp-task.json")) or {}
dbb = read(os.path.join(res, "tp-db-bytes"), int)
exp, got = read(os.path.join(res, "verify.expected")), read(os.path.join(res, "logs.sha256"))
s3 = {
    "bytes": mb * 1000000,
    "makima_wall_s": (tp["t1"] - tp["t0"]) / 1e9 if tp else None,
    "task_exit_code": tpt.get("exit_code"),
    "task_running_s": ((tpt["finished_at"] - tpt["started_at"]) / 1e3) if tpt.get("started_at") else None,
    "cat_direct_wall_s": (cat["t1"] - cat["t0"]) / 1e9 if cat else None,
    "db_bytes_after": dbb,
    "verify_mb": meta.get("verify_mb"),
    "verify_ok": (exp is not None and exp == got),
    "task_logs_wall_s": (logs["t1"] - logs["t0"]) / 1e9 if logs else None,
    "makima_peak_rss_kb": tp.get("hwm_kb") if tp else None,
}
s3["persisted_mb_per_s"] = mb / s3["makima_wall_s"] if s3["makima_wall_s"] else None
s3["cat_direct_mb_per_s"] = mb / s3["cat_direct_wall_s"] if s3["cat_direct_wall_s"] else None
s3["task_logs_mb_per_s"] = (meta.get("verify_mb", mb) / s3["task_logs_wall_s"]) if s3["task_logs_wall_s"] else None
report["throughput"] = s3
rows += [
    (f"3 throughput ({mb} MB)", "persisted, makima run wall", f(s3["persisted_mb_per_s"], "MB/s", 0), "≥ 100 MB/s"),
    ("", "  makima run wall / task running time", f"{f(s3['makima_wall_s'], 's', 2)} / {f(s3['task_running_s'], 's', 2)}", ""),
    ("", "cat of the same file (no makima)", f(s3["cat_direct_mb_per_s"], "MB/s", 0), ""),
    ("", "DB size after (du -sb db)", f(dbb / 1e6 if dbb else None, "MB", 0), ""),
    ("", f"task logs | sha256 == source ({s3['verify_mb']} MB)", "OK" if s3["verify_ok"] else f"MISMATCH ({got} != {exp})", "byte-exact"),
    ("", "task logs read rate", f(s3["task_logs_mb_per_s"], "MB/s", 0), ""),
]

# --- 4. RSS ---------------------------------------------------------------------
idle = load(os.path.join(res, "rss-idle.json"))
stream = load(os.path.join(res, "rss-stream.json"))
def mid_samples(j):
    s = (j or {}).get("rss_samples_kb") or []
    n = len(s)
    return s[n // 4: max(n // 4 + 1, 3 * n // 4)]
s4 = {
    "idle_rss_kb_median": statistics.median(mid_samples(idle)) if mid_samples(idle) else None,
    "idle_hwm_kb": (idle or {}).get("hwm_kb"),
    "stream_rss_kb_median": statistics.median(mid_samples(stream)) if mid_samples(stream) else None,
    "stream_rss_kb_max_sampled": (stream or {}).get("rss_max_kb"),
    "stream_hwm_kb": (stream or {}).get("hwm_kb"),
    "stream_bytes": 200000000,
    "stream_wall_s": (stream["t1"] - stream["t0"]) / 1e9 if stream else None,
}
report["rss"] = s4
kb = lambda x: "n/a" if x is None else f"{x / 1024:.1f} MiB"
rows += [
    ("4 RSS (makima process)", "idle task (sleep 2): VmRSS median / VmHWM", f"{kb(s4['idle_rss_kb_median'])} / {kb(s4['idle_hwm_kb'])}", ""),
    ("", "streaming 200 MB: VmRSS median / VmHWM", f"{kb(s4['stream_rss_kb_median'])} / {kb(s4['stream_hwm_kb'])}", ""),
    ("", f"peak VmHWM during the {mb} MB run", kb(s3["makima_peak_rss_kb"]), ""),
]

report["table"] = [{"section": a, "figure": b, "value": c, "goal": d} for a, b, c, d in rows]
with open(out, "w") as fh:
    json.dump(report, fh, indent=2)

w1 = max(len(r[0]) for r in rows)
w2 = max(len(r[1]) for r in rows)
w3 = max(len(r[2]) for r in rows)
print(f"makima bench — {meta.get('date')} — {meta.get('nproc')} CPUs — load {meta.get('loadavg_start')} → {meta.get('loadavg_end')} — repo HEAD {meta.get('repo_head')}")
print(f"{'section':<{w1}}  {'figure':<{w2}}  {'value':<{w3}}  goal")
print("-" * (w1 + w2 + w3 + 16))
for a, b, c, d in rows:
    print(f"{a:<{w1}}  {b:<{w2}}  {c:<{w3}}  {d}")
print(f"\nJSON: {out}")
