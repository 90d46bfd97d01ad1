// A gRPC server and client on Node's @grpc/grpc-js (pure JavaScript over Node's own HTTP/2), the
// counterpart of grpc_app.py (grpcio): same service, same methods, same plan options, same JSON
// lines. Run through grpc_node.py, which finds node and the module installed by `cargo xtask
// setup`.
//
// usage: node grpc_node.js COMM server [--bind ADDR] [--port P]
//        node grpc_node.js COMM client --port P [--host H] [--unary N] [--codes C,C]
//             [--server-stream N] [--client-stream N] [--bidi N] [--messages K] [--missing N]
//             [--deadline N --sleep-ms MS --timeout-ms MS] [--concurrent N] [--traced N]
//
// The server answers `meshtap.test.Echo` as grpc_app.py does (Unary `ok` / `code:N` /
// `sleep:MS`, ServerStream `n:K`, ClientStream, Bidi); `Missing` is unregistered (UNIMPLEMENTED).
'use strict';

const crypto = require('crypto');
const readline = require('readline');
const grpc = require('@grpc/grpc-js');

const COMM = process.argv[2];
if (!COMM || COMM.length > 15) {
  throw new Error(`comm ${COMM} missing or longer than 15 bytes`);
}
process.title = COMM;

const SERVICE = 'meshtap.test.Echo';
const path = (m) => `/${SERVICE}/${m}`;
const ident = (b) => b;

function emit(event, fields) {
  const out = { ...fields, event, pid: process.pid };
  process.stdout.write(JSON.stringify(out) + '\n');
}

function parseArgs(argv) {
  const opts = {};
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    opts[a.slice(2)] = argv[i + 1];
    i += 1;
  }
  return opts;
}

function serve(opts) {
  const served = {};
  const add = (m) => {
    served[path(m)] = (served[path(m)] || 0) + 1;
  };
  const server = new grpc.Server();
  server.register(path('Unary'), (call, callback) => {
    add('Unary');
    const req = call.request.toString();
    if (req.startsWith('code:')) {
      const code = Number(req.slice(5));
      callback({ code, details: `asked for ${code}` });
    } else if (req.startsWith('sleep:')) {
      setTimeout(() => callback(null, Buffer.from('ok')), Number(req.slice(6)));
    } else {
      callback(null, Buffer.from('ok'));
    }
  }, ident, ident, 'unary');
  server.register(path('ServerStream'), (call) => {
    add('ServerStream');
    const n = Number(call.request.toString().slice(2));
    for (let i = 0; i < n; i += 1) call.write(Buffer.from(`message ${i}`));
    call.end();
  }, ident, ident, 'serverStream');
  server.register(path('ClientStream'), (call, callback) => {
    add('ClientStream');
    let n = 0;
    call.on('data', () => { n += 1; });
    call.on('end', () => callback(null, Buffer.from(String(n))));
  }, ident, ident, 'clientStream');
  server.register(path('Bidi'), (call) => {
    add('Bidi');
    call.on('data', (m) => call.write(m));
    call.on('end', () => call.end());
  }, ident, ident, 'bidi');
  const bind = `${opts.bind || '127.0.0.1'}:${opts.port || 0}`;
  server.bindAsync(bind, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) throw err;
    emit('listening', { port });
  });
  const rl = readline.createInterface({ input: process.stdin });
  const stop = () => {
    rl.close();
    server.tryShutdown(() => {
      emit('done', { served });
      process.exit(0);
    });
  };
  rl.on('line', (line) => { if (line.trim() === 'stop') stop(); });
  rl.on('close', stop);
}

async function client(opts) {
  const n = (k) => Number(opts[k] || 0);
  const messages = Number(opts.messages || 3);
  const calls = {};
  const traced = [];
  const add = (m, code) => {
    const key = path(m);
    calls[key] = calls[key] || {};
    calls[key][String(code)] = (calls[key][String(code)] || 0) + 1;
  };
  // One channel: one HTTP/2 connection; no retries that would add streams.
  const c = new grpc.Client(`${opts.host || '127.0.0.1'}:${opts.port}`,
    grpc.credentials.createInsecure(), { 'grpc.enable_retries': 0 });
  const unary = (m, req, options = {}, metadata = new grpc.Metadata()) => new Promise((resolve) => {
    c.makeUnaryRequest(path(m), ident, ident, Buffer.from(req), metadata, options, (err) => {
      const code = err ? err.code : 0;
      add(m, code);
      resolve(code);
    });
  });
  for (let i = 0; i < n('unary'); i += 1) await unary('Unary', 'ok');
  for (const code of (opts.codes || '').split(',').filter((s) => s)) {
    const got = await unary('Unary', `code:${code}`);
    if (got !== Number(code)) throw new Error(`asked for ${code}, got ${got}`);
  }
  for (let i = 0; i < n('server-stream'); i += 1) {
    await new Promise((resolve, reject) => {
      let got = 0;
      const call = c.makeServerStreamRequest(path('ServerStream'), ident, ident,
        Buffer.from(`n:${messages}`), new grpc.Metadata(), {});
      call.on('data', () => { got += 1; });
      call.on('error', reject);
      call.on('status', (s) => {
        if (s.code !== 0 || got !== messages) reject(new Error(`server stream ${s.code} ${got}`));
        add('ServerStream', s.code);
        resolve();
      });
    });
  }
  for (let i = 0; i < n('client-stream'); i += 1) {
    await new Promise((resolve, reject) => {
      const call = c.makeClientStreamRequest(path('ClientStream'), ident, ident,
        new grpc.Metadata(), {}, (err, resp) => {
          if (err || resp.toString() !== String(messages)) {
            reject(err || new Error(`client stream ${resp}`));
            return;
          }
          add('ClientStream', 0);
          resolve();
        });
      for (let k = 0; k < messages; k += 1) call.write(Buffer.from('m'));
      call.end();
    });
  }
  for (let i = 0; i < n('bidi'); i += 1) {
    await new Promise((resolve, reject) => {
      let got = 0;
      const call = c.makeBidiStreamRequest(path('Bidi'), ident, ident, new grpc.Metadata(), {});
      call.on('data', () => { got += 1; });
      call.on('error', reject);
      call.on('status', (s) => {
        if (s.code !== 0 || got !== messages) reject(new Error(`bidi ${s.code} ${got}`));
        add('Bidi', s.code);
        resolve();
      });
      for (let k = 0; k < messages; k += 1) call.write(Buffer.from('hello'));
      call.end();
    });
  }
  for (let i = 0; i < n('missing'); i += 1) await unary('Missing', 'ok');
  for (let i = 0; i < n('deadline'); i += 1) {
    const deadline = new Date(Date.now() + Number(opts['timeout-ms'] || 100));
    await unary('Unary', `sleep:${opts['sleep-ms'] || 400}`, { deadline });
  }
  await Promise.all(Array.from({ length: n('concurrent') }, () => unary('Unary', 'ok')));
  for (let i = 0; i < n('traced'); i += 1) {
    const trace = crypto.randomBytes(16).toString('hex');
    const span = crypto.randomBytes(8).toString('hex');
    const md = new grpc.Metadata();
    md.set('traceparent', `00-${trace}-${span}-01`);
    const code = await unary('Unary', 'ok', {}, md);
    traced.push({ trace, span, code });
  }
  c.close();
  emit('done', { calls, traced, b3: [] });
}

const mode = process.argv[3];
const opts = parseArgs(process.argv.slice(4));
if (mode === 'server') {
  serve(opts);
} else if (mode === 'client') {
  client(opts).catch((e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exit(1);
  });
} else {
  throw new Error(`mode ${mode}: server or client`);
}
