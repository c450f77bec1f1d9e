// Bad input against a real `makima server` from a WebSocket client that is
// not makima's (the npm package `ws`), driven by
// tests/integration/fleet_test.cpp. Usage:
//   node server_probe.js WS_URL DAEMON_KEY USER_KEY
// Runs each case on its own connection, one after the other, and prints
// one JSON line: {"cases": {name: {"close": code, "error": code,
// "refused": status, "welcome": bool}}}.
'use strict';
const WebSocket = require('ws');
const [url, daemonKey, userKey] = process.argv.slice(2);
const out = { cases: {} };
setTimeout(() => {
  out.error = 'timeout';
  console.log(JSON.stringify(out));
  process.exit(2);
}, 20000);

const hello = JSON.stringify({
  v: 1, type: 'hello', daemon_id: 'probe-1', name: 'probe', pool: 'local',
  labels: {}, capacity: 1, free_disk_bytes: 0, cached_repos: [], running: [],
  version: 'probe',
});

// Each case: the key to connect with and the frames to send once open
// (a function gets the socket). Resolves with what happened.
function run(name, key, send) {
  return new Promise((resolve) => {
    const r = {};
    const headers = key ? { Authorization: 'Bearer ' + key } : {};
    const ws = new WebSocket(url, { headers });
    ws.on('unexpected-response', (req, res) => {
      r.refused = res.statusCode;
      resolve((out.cases[name] = r));
    });
    ws.on('open', () => send(ws, r));
    ws.on('message', (data) => {
      let j;
      try { j = JSON.parse(data.toString()); } catch (e) { r.garbled = true; return; }
      if (j.type === 'welcome') {
        r.welcome = true;
        if (r.after_welcome) r.after_welcome(ws);
      }
      if (j.type === 'error') r.error = j.code;
    });
    ws.on('error', (e) => { r.socket_error = String(e.message || e); });
    ws.on('close', (code) => {
      r.close = code;
      delete r.after_welcome;
      resolve((out.cases[name] = r));
    });
  });
}

(async () => {
  await run('no_key', null, () => {});
  await run('user_key', userKey, () => {});
  await run('garbage', daemonKey, (ws) => ws.send('\u0000garbage{'));
  await run('bad_version', daemonKey, (ws) => ws.send('{"v":3,"type":"hello"}'));
  await run('unknown_type', daemonKey, (ws) => {
    ws.send(hello);
    setTimeout(() => ws.send('{"v":1,"type":"teleport"}'), 100);
  });
  await run('before_hello', daemonKey, (ws) => ws.send('{"v":1,"type":"heartbeat"}'));
  await run('binary', daemonKey, (ws) => ws.send(Buffer.from([1, 2, 3])));
  await run('too_big', daemonKey, (ws) => ws.send('x'.repeat(2 * 1024 * 1024)));
  await run('unassigned_event', daemonKey, (ws, r) => {
    r.after_welcome = (s) => s.send(JSON.stringify({
      v: 1, type: 'event', task: 'never-assigned', attempt: 1, seq: 1,
      kind: 'output', at: 0, chunks: [{ seq: 0, stream: 1, data: 'aGkK' }],
    }));
    ws.send(hello);
  });
  console.log(JSON.stringify(out));
  process.exit(0);
})();
