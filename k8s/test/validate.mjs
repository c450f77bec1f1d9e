// Offline validation of the kustomize manifests in k8s/ (ctest:
// k8s.manifests_render_and_validate; docs/deploy-k8s.md, "What the test
// proves"). For every overlay of k8s/ it
//   1. renders it with `kubectl kustomize`,
//   2. validates each object against the Kubernetes OpenAPI models
//      (kubernetes-models; KEDA's ScaledObject with @kubernetes-models/keda),
//      strictly: a wrong type fails the schema, and a field the schema does
//      not know fails too (see strictValidate),
//   3. checks what the schemas cannot: every variable a container gets is
//      one makima reads (`makima config show --json` lists them per key),
//      probes and Services hit the ports the containers listen on
//      (MAKIMA_SERVER_LISTEN, MAKIMA_DAEMON_HEALTH_LISTEN),
//      terminationGracePeriodSeconds exceeds the daemon's eviction
//      deadline, the ScaledObject's metrics are ones the server's /metrics
//      serves (read from a real `makima server` started here), every
//      secret and config reference resolves, and no secret is committed.
// Then it proves the checks can fail: each mutation of mutations() breaks
// one rendered object in memory and must be caught. Finally it renders the
// user overlay of docs/deploy-k8s.md step 2 (secrets from files) in a
// temporary directory.
//
// Usage: node validate.mjs --makima PATH/TO/makima [--kubectl kubectl]
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const k8sDir = path.resolve(here, "..");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const makimaBin = arg("--makima", process.env.MAKIMA_BINARY);
const kubectl = arg("--kubectl", "kubectl");

function die(msg) {
  console.error(`k8s: ${msg}`);
  process.exit(1);
}

// Imported here, not at the top, to say what is missing.
async function need(mod) {
  try {
    return await import(mod);
  } catch (e) {
    die(`cannot load ${mod} (${e.code}): run \`npm ci\` in k8s/test (bash .ci/test does)`);
  }
}
const YAML = (await need("yaml")).default;
await need("kubernetes-models/v1");
await need("@kubernetes-models/keda/keda.sh/v1alpha1");

// --- what makima reads and serves ------------------------------------------

/// Every variable makima reads, and each key's default value, from the
/// binary itself (`config show --json`), in an empty environment.
function makimaConfig(home) {
  const r = spawnSync(makimaBin, ["config", "show", "--json"], {
    env: { HOME: home, PATH: process.env.PATH },
    encoding: "utf8",
  });
  if (r.error || r.status !== 0)
    throw new Error(`\`${makimaBin} config show --json\` failed: ${r.error ?? r.stderr}`);
  const keys = JSON.parse(r.stdout).keys;
  const env = new Set(["MAKIMA_CONFIG"]); // the config file (operations.md §1)
  const defaults = {};
  for (const k of keys) {
    if (!Array.isArray(k.env))
      throw new Error(`\`makima config show --json\` has no env list for ${k.key}: build makima from this tree`);
    for (const e of k.env) env.add(e);
    defaults[k.key] = k.value;
  }
  return { env, defaults };
}

function get(port, target) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path: target, timeout: 5000 }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

/// The metric names (and each one's label values) a real `makima server`
/// serves on /metrics: started on 127.0.0.1 port 0 in a temporary data
/// dir, stopped with SIGTERM (also when this fails: it throws, never exits).
async function serverMetrics(home) {
  const data = path.join(home, "server");
  const srv = spawn(
    makimaBin,
    ["server", "--no-auth", "--listen", "127.0.0.1:0", "--data-dir", data],
    { env: { HOME: home, PATH: process.env.PATH }, stdio: ["ignore", "ignore", "pipe"] },
  );
  let err = "";
  const port = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(0), 15000);
    srv.stderr.on("data", (d) => {
      err += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    srv.on("exit", () => resolve(0));
  });
  try {
    if (!port) throw new Error(`makima server did not start: ${err}`);
    const r = await get(port, "/metrics");
    if (r.status !== 200) throw new Error(`GET /metrics: ${r.status}`);
    const metrics = new Map(); // name -> Map(label -> Set(values))
    for (const line of r.body.split("\n")) {
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? /.exec(line);
      if (!m) continue;
      if (!metrics.has(m[1])) metrics.set(m[1], new Map());
      for (const l of (m[3] ?? "").matchAll(/(\w+)="([^"]*)"/g)) {
        const labels = metrics.get(m[1]);
        if (!labels.has(l[1])) labels.set(l[1], new Set());
        labels.get(l[1]).add(l[2]);
      }
    }
    return metrics;
  } finally {
    srv.kill("SIGTERM");
    await new Promise((resolve) => (srv.exitCode !== null ? resolve() : srv.on("exit", resolve)));
  }
}

// --- rendering and schemas -------------------------------------------------

function render(dir) {
  const r = spawnSync(kubectl, ["kustomize", dir], { encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`cannot run ${kubectl}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`kubectl kustomize ${dir}: ${r.stderr}`);
  const docs = YAML.parseAllDocuments(r.stdout);
  for (const d of docs) if (d.errors.length) throw new Error(`${dir}: ${d.errors[0].message}`);
  return docs.map((d) => d.toJSON()).filter(Boolean);
}

const models = new Map();
async function modelOf(obj) {
  const id = `${obj.apiVersion}/${obj.kind}`;
  if (!models.has(id)) {
    const mod = obj.apiVersion === "keda.sh/v1alpha1"
      ? "@kubernetes-models/keda/keda.sh/v1alpha1"
      : `kubernetes-models/${obj.apiVersion}`;
    let cls;
    try {
      cls = (await import(mod))[obj.kind];
    } catch {
      cls = undefined;
    }
    models.set(id, cls);
  }
  return models.get(id);
}

/// Wraps `value` so that every own property the validator reads is
/// recorded in `seen`; `all` gets every property there is.
function track(value, where, seen, all) {
  if (value === null || typeof value !== "object") return value;
  if (!Array.isArray(value)) for (const k of Object.keys(value)) all.add(`${where}.${k}`);
  return new Proxy(value, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof prop !== "string" || !Object.prototype.hasOwnProperty.call(target, prop)) return v;
      const sub = Array.isArray(target) ? `${where}[${prop}]` : `${where}.${prop}`;
      seen.add(sub);
      return track(v, sub, seen, all);
    },
  });
}

/// The model's validate() (its OpenAPI schema compiled by ajv), made
/// strict like `kubectl apply --validate=strict`: Kubernetes' schemas
/// allow unknown properties, so a misspelt field would pass. The schema's
/// validator reads every property it knows (including every entry of a
/// map such as labels), so a property it never read is one the schema
/// does not have.
async function strictValidate(obj) {
  const cls = await modelOf(obj);
  if (!cls) return [`no Kubernetes model for ${obj.apiVersion} ${obj.kind}`];
  const seen = new Set();
  const all = new Set();
  const errors = [];
  try {
    cls.prototype.validate.call(track(obj, "", seen, all));
  } catch (e) {
    errors.push(e.message);
  }
  for (const p of all) if (!seen.has(p)) errors.push(`unknown field ${p.slice(1)}`);
  return errors;
}

// --- the checks of makima's own rules -------------------------------------

function portOf(hostPort) {
  const m = /:(\d+)$/.exec(hostPort ?? "");
  return m ? Number(m[1]) : NaN;
}

function workloads(objs) {
  return objs.filter((o) => ["StatefulSet", "Deployment", "DaemonSet", "Job"].includes(o.kind));
}

function find(objs, kind, name) {
  return objs.find((o) => o.kind === kind && o.metadata?.name === name);
}

/// The plain environment of a container: its env values and the data of
/// the ConfigMaps it takes whole (Secrets hold no settings we check).
function effectiveEnv(objs, c) {
  const env = {};
  for (const src of c.envFrom ?? [])
    if (src.configMapRef) Object.assign(env, find(objs, "ConfigMap", src.configMapRef.name)?.data ?? {});
  for (const e of c.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  return env;
}

/// What a container runs: "server", "daemon" or another makima command.
function commandOf(c) {
  return (c.args ?? [])[0] ?? "daemon"; // the image's CMD is ["daemon"]
}

function checkRules(objs, cfg, metrics) {
  const errs = [];
  const where = (o, c) => `${o.kind}/${o.metadata.name}${c ? ` container ${c.name}` : ""}`;

  for (const o of objs) {
    // No secret is committed: every value of every Secret is empty.
    if (o.kind === "Secret") {
      for (const [k, v] of Object.entries({ ...(o.data ?? {}), ...(o.stringData ?? {}) }))
        if (v !== "") errs.push(`${where(o)}: ${k} has a committed value (leave it empty, docs/deploy-k8s.md step 2)`);
    }
  }

  for (const w of workloads(objs)) {
    const pod = w.spec.template.spec;
    for (const c of [...(pod.initContainers ?? []), ...pod.containers]) {
      const at = where(w, c);
      // Every variable is one makima reads.
      const names = [];
      for (const e of c.env ?? []) names.push(e.name);
      for (const src of c.envFrom ?? []) {
        const ref = src.configMapRef ?? src.secretRef;
        const kind = src.configMapRef ? "ConfigMap" : "Secret";
        const from = find(objs, kind, ref.name);
        if (!from) {
          errs.push(`${at}: envFrom names ${kind} ${ref.name}, which is not in the manifests`);
          continue;
        }
        names.push(...Object.keys({ ...(from.data ?? {}), ...(from.stringData ?? {}) }).map((k) => (src.prefix ?? "") + k));
      }
      for (const n of names) if (!cfg.env.has(n)) errs.push(`${at}: ${n} is not a variable makima reads`);
      // Every key reference resolves.
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef;
        if (!ref) continue;
        const kind = e.valueFrom.secretKeyRef ? "Secret" : "ConfigMap";
        const from = find(objs, kind, ref.name);
        if (!from) errs.push(`${at}: ${e.name} reads ${kind} ${ref.name}, which is not in the manifests`);
        else if (!(ref.key in { ...(from.data ?? {}), ...(from.stringData ?? {}) }))
          errs.push(`${at}: ${e.name} reads key ${ref.key}, which ${kind} ${ref.name} does not have`);
      }
      // The image is the one the kustomize `images:` entry names.
      if (!/^([^/]+\/)*makima(:[^/]+)?(@sha256:[0-9a-f]+)?$/.test(c.image ?? ""))
        errs.push(`${at}: image ${c.image} is not makima`);

      // Probes on the port makima listens on, at the paths it serves.
      const env = effectiveEnv(objs, c);
      const cmd = commandOf(c);
      let listen;
      if (cmd === "server") listen = env.MAKIMA_SERVER_LISTEN ?? cfg.defaults["server.listen"];
      else if (cmd === "daemon") {
        listen = env.MAKIMA_DAEMON_HEALTH_LISTEN;
        if (!listen && (c.livenessProbe || c.readinessProbe))
          errs.push(`${at}: probes without MAKIMA_DAEMON_HEALTH_LISTEN: the daemon serves no /healthz`);
        if (env.MAKIMA_DAEMON_POOL !== "k8s") errs.push(`${at}: MAKIMA_DAEMON_POOL is ${env.MAKIMA_DAEMON_POOL}, not k8s`);
        // Eviction: SIGTERM -> final checkpoints -> exit within the deadline.
        const deadline = Number(env.MAKIMA_EVICTION_DEADLINE ?? cfg.defaults["daemon.eviction_deadline"]);
        const grace = pod.terminationGracePeriodSeconds ?? 30;
        if (!(grace > deadline))
          errs.push(`${at}: terminationGracePeriodSeconds ${grace} is not above the eviction deadline ${deadline}`);
      }
      const port = portOf(listen);
      const named = (p) => (typeof p === "number" ? p : (c.ports ?? []).find((cp) => cp.name === p)?.containerPort);
      const want = { livenessProbe: "/healthz", startupProbe: "/healthz", readinessProbe: "/readyz" };
      for (const [probe, p] of Object.entries(want)) {
        const g = c[probe]?.httpGet;
        if (!g) continue;
        if (named(g.port) !== port)
          errs.push(`${at}: ${probe} port ${g.port} (${named(g.port)}) is not the listen port ${port} (${listen})`);
        if (g.path !== p) errs.push(`${at}: ${probe} path ${g.path}, makima serves ${p}`);
      }
      if (cmd === "server" || cmd === "daemon") {
        if (!c.livenessProbe || !c.readinessProbe) errs.push(`${at}: needs a liveness and a readiness probe`);
        for (const cp of c.ports ?? [])
          if (cp.containerPort !== port) errs.push(`${at}: port ${cp.name} ${cp.containerPort} is not the listen port ${port}`);
      }
    }
  }

  // Services reach a port a selected container has.
  for (const s of objs.filter((o) => o.kind === "Service")) {
    const sel = s.spec.selector ?? {};
    const pods = workloads(objs).filter((w) =>
      Object.entries(sel).every(([k, v]) => w.spec.template.metadata?.labels?.[k] === v));
    if (!pods.length) errs.push(`Service/${s.metadata.name}: selects no workload`);
    for (const sp of s.spec.ports ?? []) {
      const t = sp.targetPort ?? sp.port;
      const ok = pods.some((w) => w.spec.template.spec.containers.some((c) =>
        (c.ports ?? []).some((cp) => cp.name === t || cp.containerPort === t)));
      if (!ok) errs.push(`Service/${s.metadata.name}: targetPort ${t} is no container port`);
    }
  }
  // An Ingress points at a Service port that exists.
  for (const ing of objs.filter((o) => o.kind === "Ingress"))
    for (const r of ing.spec.rules ?? [])
      for (const p of r.http?.paths ?? []) {
        const svc = find(objs, "Service", p.backend.service?.name);
        const port = p.backend.service?.port;
        if (!svc || !svc.spec.ports.some((sp) => sp.name === port?.name || sp.port === port?.number))
          errs.push(`Ingress/${ing.metadata.name}: ${p.path} goes to no Service port`);
      }

  // The ScaledObject scales the daemons on metrics the server serves.
  const known = {
    prometheus: ["serverAddress", "query", "threshold", "activationThreshold", "ignoreNullValues",
      "namespace", "customHeaders", "queryParameters", "unsafeSsl", "timeout"],
    "metrics-api": ["url", "format", "valueLocation", "targetValue", "activationTargetValue",
      "unsafeSsl", "authMode", "method", "keyParamName"],
  };
  const required = { prometheus: ["serverAddress", "query", "threshold"], "metrics-api": ["url", "valueLocation", "targetValue"] };
  for (const so of objs.filter((o) => o.kind === "ScaledObject")) {
    const at = `ScaledObject/${so.metadata.name}`;
    const ref = so.spec.scaleTargetRef;
    const target = find(objs, ref.kind ?? "Deployment", ref.name);
    if (!target) errs.push(`${at}: scales ${ref.kind} ${ref.name}, which is not in the manifests`);
    const daemon = target?.spec.template.spec.containers.find((c) => commandOf(c) === "daemon");
    if (target && !daemon) errs.push(`${at}: ${ref.name} runs no makima daemon`);
    const maxTasks = daemon && Number(effectiveEnv(objs, daemon).MAKIMA_MAX_TASKS ?? cfg.defaults["daemon.max_tasks"]);
    for (const t of so.spec.triggers) {
      const md = t.metadata ?? {};
      if (!known[t.type]) {
        errs.push(`${at}: trigger type ${t.type}: use prometheus or metrics-api on the server's /metrics`);
        continue;
      }
      for (const k of Object.keys(md)) if (!known[t.type].includes(k)) errs.push(`${at}: ${t.type} has no parameter ${k}`);
      for (const k of required[t.type]) if (!(k in md)) errs.push(`${at}: ${t.type} needs ${k}`);
      const expr = t.type === "prometheus" ? md.query ?? "" : md.valueLocation ?? "";
      const used = [...expr.matchAll(/\b(makima_[a-z_]+)(\{([^}]*)\})?/g)];
      if (!used.length) errs.push(`${at}: ${t.type} trigger uses no makima_ metric`);
      for (const u of used) {
        if (!metrics.has(u[1])) {
          errs.push(`${at}: ${u[1]} is not a metric of the server's /metrics`);
          continue;
        }
        for (const l of (u[3] ?? "").matchAll(/(\w+)\s*(=~|=|!=|!~)\s*"([^"]*)"/g)) {
          const values = metrics.get(u[1]).get(l[1]);
          if (!values) errs.push(`${at}: ${u[1]} has no label ${l[1]}`);
          else for (const v of l[3].split("|")) if (!values.has(v)) errs.push(`${at}: ${u[1]}{${l[1]}} has no value ${v}`);
        }
      }
      // One daemon per MAKIMA_MAX_TASKS tasks.
      const thr = Number(t.type === "prometheus" ? md.threshold : md.targetValue);
      if (maxTasks && thr !== maxTasks)
        errs.push(`${at}: threshold ${thr} is not the daemons' MAKIMA_MAX_TASKS ${maxTasks}`);
    }
  }
  return errs;
}

async function validateAll(objs, cfg, metrics) {
  const errs = [];
  for (const o of objs)
    for (const e of await strictValidate(o)) errs.push(`${o.kind}/${o.metadata?.name}: ${e}`);
  return errs.concat(checkRules(objs, cfg, metrics));
}

// --- the validator must catch each of these -------------------------------

function mutations() {
  const ss = (objs, name) => find(objs, "StatefulSet", name);
  const ctr = (objs, name) => ss(objs, name).spec.template.spec.containers[0];
  const so = (objs) => objs.find((o) => o.kind === "ScaledObject");
  return [
    ["a misspelt field", /unknown field .*readinessProbe\.httpGet\.pathh/,
      (o) => { const g = ctr(o, "makima-daemon").readinessProbe.httpGet; g.pathh = g.path; delete g.path; }],
    ["a field of the wrong type", /replicas must be integer/,
      (o) => { ss(o, "makima-server").spec.replicas = "1"; }],
    ["a misspelt ScaledObject field", /unknown field spec\.minReplicaCont/,
      (o) => { so(o).spec.minReplicaCont = 1; }],
    ["a ScaledObject field of the wrong type", /maxReplicaCount must be integer/,
      (o) => { so(o).spec.maxReplicaCount = "20"; }],
    ["a variable makima does not read", /MAKIMA_EVICTON_DEADLINE is not a variable/,
      (o) => { ctr(o, "makima-daemon").env.push({ name: "MAKIMA_EVICTON_DEADLINE", value: "25" }); }],
    ["a ConfigMap entry makima does not read", /MAKIMA_POOL is not a variable/,
      (o) => { o.find((x) => x.kind === "ConfigMap" && /daemon-config/.test(x.metadata.name)).data.MAKIMA_POOL = "k8s"; }],
    ["a probe on another port", /livenessProbe port 9999/,
      (o) => { ctr(o, "makima-daemon").livenessProbe.httpGet.port = 9999; }],
    ["a server listening elsewhere than its probes", /readinessProbe port http \(7420\) is not the listen port 8080/,
      (o) => { o.find((x) => x.kind === "ConfigMap" && /server-config/.test(x.metadata.name)).data.MAKIMA_SERVER_LISTEN = "0.0.0.0:8080"; }],
    ["a grace period below the eviction deadline", /terminationGracePeriodSeconds 20 is not above the eviction deadline 25/,
      (o) => { ss(o, "makima-daemon").spec.template.spec.terminationGracePeriodSeconds = 20; }],
    ["a metric the server does not serve", /makima_queue_depht is not a metric/,
      (o) => { const t = so(o).spec.triggers[0]; t.metadata.query = t.metadata.query.replace("makima_queue_depth", "makima_queue_depht"); }],
    ["a task state the server does not report", /has no value runing/,
      (o) => { const t = so(o).spec.triggers[0]; t.metadata.query = t.metadata.query.replace("running", "runing"); }],
    ["a committed secret", /has a committed value/,
      (o) => { o.find((x) => x.kind === "Secret").data["daemon-key"] = "c2VjcmV0"; }],
    ["a reference to a missing secret key", /reads key daemon-kee/,
      (o) => { ctr(o, "makima-daemon").env.find((e) => e.name === "MAKIMA_API_KEY").valueFrom.secretKeyRef.key = "daemon-kee"; }],
  ];
}

// --- main ------------------------------------------------------------------

const kc = spawnSync(kubectl, ["version", "--client"], { encoding: "utf8" });
if (kc.error)
  die(`kubectl is missing (${kc.error.code}): it renders the overlays (\`kubectl kustomize\`). ` +
    "Debian 12 does not package it: install it from the Kubernetes packages, or a standalone " +
    "kustomize and pass --kubectl (.ci/setup checks for it)");
if (!makimaBin) die("usage: node validate.mjs --makima PATH/TO/makima [--kubectl kubectl]");

const home = fs.mkdtempSync(path.join(os.tmpdir(), "makima-k8s-test-"));
let failed = 0;
let passed = 0;
function report(name, errs) {
  if (errs.length) {
    failed++;
    console.log(`FAIL ${name}`);
    for (const e of errs) console.log(`  ${e}`);
  } else {
    passed++;
    console.log(`ok   ${name}`);
  }
}

try {
  const cfg = makimaConfig(home);
  let metrics;
  try {
    metrics = await serverMetrics(home);
  } catch (e) {
    throw new Error(`the server's /metrics: ${e.message}`);
  }
  const overlays = fs.readdirSync(k8sDir).filter((d) =>
    d !== "base" && fs.existsSync(path.join(k8sDir, d, "kustomization.yaml"))).sort();
  if (!overlays.includes("k8s-only") || !overlays.includes("hybrid")) throw new Error(`overlays missing: found ${overlays}`);
  const rendered = {};
  for (const o of overlays) {
    let objs;
    try {
      objs = render(path.join(k8sDir, o));
    } catch (e) {
      report(`${o}: kubectl kustomize renders`, [e.message]);
      continue;
    }
    rendered[o] = objs;
    report(`${o}: kubectl kustomize renders (${objs.length} objects: ${[...new Set(objs.map((x) => x.kind))].join(", ")})`, []);
    report(`${o}: schemas and makima's rules`, await validateAll(objs, cfg, metrics));
  }
  // What each overlay must contain.
  const has = (objs, kind, name) => (find(objs, kind, name) ? [] : [`no ${kind} ${name}`]);
  for (const o of Object.keys(rendered)) {
    const objs = rendered[o];
    report(`${o}: server, daemons, PDB, ScaledObject, NetworkPolicies`, [
      ...has(objs, "StatefulSet", "makima-server"), ...has(objs, "StatefulSet", "makima-daemon"),
      ...has(objs, "Service", "makima-server"), ...has(objs, "PodDisruptionBudget", "makima-daemon"),
      ...has(objs, "ScaledObject", "makima-daemon"), ...has(objs, "NetworkPolicy", "makima-server"),
      ...has(objs, "NetworkPolicy", "makima-daemon"),
      ...(find(objs, "StatefulSet", "makima-server")?.spec.replicas === 1 ? [] : ["the server is not one replica"]),
      ...["makima-server", "makima-daemon"].flatMap((n) =>
        find(objs, "StatefulSet", n)?.spec.volumeClaimTemplates?.length ? [] : [`${n} has no PVC`]),
    ]);
  }
  if (rendered.hybrid) {
    const h = rendered.hybrid;
    const srv = find(h, "StatefulSet", "makima-server").spec.template.spec.containers[0];
    const keys = srv.env.find((e) => e.name === "MAKIMA_SERVER_DAEMON_KEYS")?.valueFrom?.secretKeyRef?.key;
    report("hybrid: Ingress to /ws/daemon, server takes every pool's daemon keys", [
      ...(h.some((x) => x.kind === "Ingress" && x.spec.rules.some((r) => r.http.paths.some((p) => p.path === "/ws/daemon")))
        ? [] : ["no Ingress for /ws/daemon"]),
      ...(keys === "daemon-keys" ? [] : [`MAKIMA_SERVER_DAEMON_KEYS reads ${keys}, not daemon-keys`]),
    ]);
  }

  // The validator catches each broken copy.
  const base = rendered["k8s-only"];
  if (base) {
    const missed = [];
    for (const [what, expect, mutate] of mutations()) {
      const copy = structuredClone(base);
      mutate(copy);
      const errs = await validateAll(copy, cfg, metrics);
      if (!errs.some((e) => expect.test(e)))
        missed.push(`${what}: not caught (want ${expect}; got ${errs.length ? errs.join("; ") : "no error"})`);
    }
    report(`the validator catches ${mutations().length} broken copies`, missed);
  }

  // docs/deploy-k8s.md step 2: an overlay of the user's own with the
  // secrets from files renders, and the pods read those Secrets.
  const user = path.join(home, "my-fleet");
  fs.mkdirSync(path.join(user, "secrets"), { recursive: true });
  for (const f of ["user-keys", "daemon-key", "aws-access-key-id", "aws-secret-access-key", "checkpoint-key"])
    fs.writeFileSync(path.join(user, "secrets", f), `test-${f}`);
  fs.writeFileSync(path.join(user, "kustomization.yaml"), YAML.stringify({
    apiVersion: "kustomize.config.k8s.io/v1beta1",
    kind: "Kustomization",
    resources: [path.relative(user, path.join(k8sDir, "k8s-only"))],
    images: [{ name: "makima", newName: "registry.example/makima", newTag: "1.0" }],
    secretGenerator: [
      { name: "makima-keys", behavior: "replace",
        files: ["user-keys=secrets/user-keys", "daemon-key=secrets/daemon-key"] },
      { name: "makima-store", behavior: "replace",
        files: ["aws-access-key-id=secrets/aws-access-key-id",
          "aws-secret-access-key=secrets/aws-secret-access-key", "checkpoint-key=secrets/checkpoint-key"] },
    ],
  }));
  try {
    const objs = render(user);
    const errs = (await validateAll(objs, cfg, metrics)).filter((e) => !/has a committed value/.test(e));
    const secrets = objs.filter((x) => x.kind === "Secret");
    for (const s of secrets)
      for (const [k, v] of Object.entries(s.data))
        if (Buffer.from(v, "base64").toString() !== `test-${k}`) errs.push(`${s.metadata.name}: ${k} is not the file's`);
    const images = new Set(workloads(objs).flatMap((w) => w.spec.template.spec.containers.map((c) => c.image)));
    if ([...images].join() !== "registry.example/makima:1.0") errs.push(`images: ${[...images]}`);
    report("a user overlay with secrets from files and an image of its own (docs step 2)", errs);
  } catch (e) {
    report("a user overlay with secrets from files and an image of its own (docs step 2)", [e.message]);
  }
} catch (e) {
  report("the test itself", [e.message]);
} finally {
  fs.rmSync(home, { recursive: true, force: true });
}
console.log(`k8s: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
