// An HTTPS server and client on Node's `https` (Node's OpenSSL, linked statically into
// /usr/bin/node; TLSWrap feeds it from memory, the socket I/O is libuv's).
//
// usage: node https_node.js COMM server --cert CERT --key KEY
//        node https_node.js COMM client --port P --requests N --connections C
//
// The server listens on 127.0.0.1 (an ephemeral port), prints
// `{"event":"listening","port":P}` and answers, with keep-alive and Content-Length:
// /api/users/<id> 200 `user <id>\n`, /api/fail 500 `fail\n`, anything else 404 `nope\n`, until
// stdin receives a line or closes; then prints `{"event":"done","served":{"STATUS":count}}`.
// The client sends N GETs at once over at most C keep-alive connections (one event loop
// interleaves them), cycling /api/users/<i>, /api/fail, /nope, and prints
// `{"event":"done","statuses":{"STATUS":count},"connections":K}` (K: distinct local ports).
'use strict';

const fs = require('fs');
const https = require('https');
const readline = require('readline');

const COMM = process.argv[2];
if (!COMM || COMM.length > 15) {
  throw new Error(`comm ${COMM} missing or longer than 15 bytes`);
}
// libuv's uv_set_process_title also sets the main thread's comm (prctl PR_SET_NAME).
process.title = COMM;

function emit(event, fields) {
  process.stdout.write(JSON.stringify({ ...fields, event, pid: process.pid }) + '\n');
}

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`);
    opts[argv[i].slice(2)] = argv[i + 1];
  }
  return opts;
}

function server(opts) {
  const served = {};
  const srv = https.createServer(
    { cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key), keepAliveTimeout: 60000 },
    (req, res) => {
      req.resume();
      req.on('end', () => {
        let status = 404;
        let body = 'nope\n';
        if (req.url.startsWith('/api/users/')) {
          status = 200;
          body = `user ${req.url.slice('/api/users/'.length)}\n`;
        } else if (req.url === '/api/fail') {
          status = 500;
          body = 'fail\n';
        }
        served[status] = (served[status] || 0) + 1;
        res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
        res.end(body);
      });
    },
  );
  srv.listen(0, '127.0.0.1', () => emit('listening', { port: srv.address().port, comm: COMM }));
  const stop = () => {
    emit('done', { served });
    process.exit(0);
  };
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', stop);
  rl.on('close', stop);
}

function client(opts) {
  const n = Number(opts.requests);
  const agent = new https.Agent({ keepAlive: true, maxSockets: Number(opts.connections) });
  const statuses = {};
  const ports = new Set();
  const paths = (i) => [`/api/users/${i}`, '/api/fail', '/nope'][i % 3];
  const one = (i) =>
    new Promise((resolve, reject) => {
      const req = https.get(
        { host: '127.0.0.1', port: Number(opts.port), path: paths(i), agent, rejectUnauthorized: false },
        (res) => {
          ports.add(res.socket.localPort);
          res.resume();
          res.on('end', () => {
            statuses[res.statusCode] = (statuses[res.statusCode] || 0) + 1;
            resolve();
          });
        },
      );
      req.on('error', reject);
    });
  Promise.all(Array.from({ length: n }, (_, i) => one(i))).then(
    () => {
      agent.destroy();
      emit('done', { statuses, connections: ports.size });
    },
    (e) => {
      process.stderr.write(`${e.stack}\n`);
      process.exit(1);
    },
  );
}

const [role, ...rest] = process.argv.slice(3);
const opts = parseArgs(rest);
if (role === 'server') server(opts);
else if (role === 'client') client(opts);
else throw new Error(`unknown role ${role}`);
