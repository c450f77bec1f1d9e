// A WebSocket client that is not makima's (the npm package `ws`), driven by
// tests/runtime/net_test.cpp. Usage: node ws_probe.js URL KEY OVERSIZE_BYTES
// Prints one JSON line: {"echo": ..., "close": code, "refused": status}.
'use strict';
const WebSocket = require('ws');
const [url, key, oversize] = process.argv.slice(2);
const result = {};
setTimeout(() => {
  result.error = 'timeout';
  console.log(JSON.stringify(result));
  process.exit(2);
}, 10000);

function finish() {
  console.log(JSON.stringify(result));
  process.exit(0);
}

// 1. Authenticated: echo one text frame, then send an oversize one.
const ws = new WebSocket(url, { headers: { Authorization: 'Bearer ' + key } });
ws.on('open', () => ws.send('{"v":1,"type":"heartbeat"}'));
ws.on('message', (data) => {
  result.echo = data.toString();
  ws.send('x'.repeat(Number(oversize)));
});
ws.on('error', (e) => { result.error1 = String(e); });
ws.on('close', (code) => {
  result.close = code;
  // 2. Without a key: the upgrade must be refused.
  const bad = new WebSocket(url);
  bad.on('unexpected-response', (req, res) => {
    result.refused = res.statusCode;
    finish();
  });
  bad.on('open', () => { result.refused = 101; finish(); });
  bad.on('error', (e) => { result.error2 = String(e); finish(); });
});
