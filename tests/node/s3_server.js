// A local S3 server for tests/runtime/object_store_test.cpp: the npm package
// @20minutes/s3rver (it verifies SigV4 signatures), listening on 127.0.0.1
// on a free port, with the bucket(s) named on the command line.
//   node s3_server.js DIR BUCKET...
// Prints the port as one line on stdout, then serves until stdin closes.
// With S3RVER_REQUEST_LOG set, appends "METHOD URL" of every request to that
// file (tests check which requests a call made).
// Credentials: S3RVER / S3RVER (the package's built-in account), plus the
// pair in S3RVER_ACCESS_KEY / S3RVER_SECRET_KEY when both are set.
// Needs NODE_OPTIONS=--openssl-legacy-provider on Node 20 (its list
// continuation tokens use DES).
'use strict';
const fs = require('node:fs');
const S3rver = require('@20minutes/s3rver');
const { DUMMY_ACCOUNT } = require('@20minutes/s3rver/lib/models/account');

const [dir, ...buckets] = process.argv.slice(2);
if (!dir || buckets.length === 0) {
  console.error('usage: node s3_server.js DIR BUCKET...');
  process.exit(2);
}
if (process.env.S3RVER_ACCESS_KEY && process.env.S3RVER_SECRET_KEY) {
  DUMMY_ACCOUNT.createKeyPair(process.env.S3RVER_ACCESS_KEY, process.env.S3RVER_SECRET_KEY);
}
const server = new S3rver({
  address: '127.0.0.1',
  port: 0,
  silent: true,
  directory: dir,
  vhostBuckets: false,
  configureBuckets: buckets.map((name) => ({ name })),
});
server.run().then(
  (addr) => {
    const log = process.env.S3RVER_REQUEST_LOG;
    if (log) {
      server.httpServer.on('request', (req) => {
        fs.appendFileSync(log, `${req.method} ${req.url}\n`);
      });
    }
    process.stdout.write(`${addr.port}\n`);
    process.stdin.on('data', () => {});
    process.stdin.on('end', () => process.exit(0));
    process.stdin.on('error', () => process.exit(0));
  },
  (err) => {
    console.error(`s3_server: ${err.message}`);
    process.exit(1);
  }
);
