#!/usr/bin/env node
// aws_stub.js - dependency-free fake of the two AWS token APIs used by
// ngx_aws_token, plus a header-recording "upstream" server.
//
//   node spec/stubs/aws_stub.js --port-file FILE
//
// Listens on 127.0.0.1 only, on two ephemeral ports, then atomically writes
// {"aws":<port>,"upstream":<port>,"pid":<pid>} to FILE (tmp file + rename).
// SIGTERM / SIGINT close both listeners and exit 0.  See README.md next to
// this file for the full interface.  Node >= 18, CommonJS, no npm packages.
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const HOST = '127.0.0.1';
const JSON11 = 'application/x-amz-json-1.1';
const ECR_TARGET = 'AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken';
const ECR_TARGET_PREFIX = 'AmazonEC2ContainerRegistry_V20150921.';
const CA_PATH = '/v1/authorization-token';
const CA_TARGET = 'codeartifact:GetAuthorizationToken';

// ---------------------------------------------------------------- config --

const DEFAULTS = Object.freeze({
  password: 'stub-password-1',   // ECR password; token = base64("AWS:" + password)
  token_length: null,            // exact length of the base64 ECR token, or null
  ttl: 43200,                    // seconds until expiresAt / expiration (12 h)
  expires_at: null,              // absolute epoch seconds; overrides every ttl
  codeartifact_token: 'stub-codeartifact-token-1',
  codeartifact_ttl: null,        // seconds; overrides ?duration when set
  account_id: '012345678910',    // account in proxyEndpoint when no registryIds
  fail: null,                    // {status, code, message, times?}
  delay_ms: 0,                   // sleep before answering a token operation
  empty: false,                  // ECR: 200 with authorizationData: []
  exponent_timestamps: false,    // emit 1.7e9-style numbers like AWS (Coral) does
});

let config = { ...DEFAULTS };
let calls;
let upstreamRequests = [];

function resetCalls() {
  calls = {
    ecr: 0,
    codeartifact: 0,
    unauthenticated: 0,
    last_region: null,
    last_target: null,
    last_query: null,
    last_body: null,
  };
}
resetCalls();

function isNonNegInt(v) {
  return Number.isInteger(v) && v >= 0;
}

// Validate a patch object against the current config; returns [newConfig, err].
function mergeConfig(current, patch) {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) {
    return [null, 'config body must be a JSON object'];
  }
  const next = { ...current };
  for (const [k, v] of Object.entries(patch)) {
    switch (k) {
      case 'password':
      case 'codeartifact_token':
        if (typeof v !== 'string' || v.length === 0) return [null, `${k} must be a non-empty string`];
        break;
      case 'account_id':
        if (typeof v !== 'string' || !/^[0-9]{12}$/.test(v)) return [null, 'account_id must be 12 digits'];
        break;
      case 'token_length':
        if (v !== null && !(Number.isInteger(v) && v >= 8 && v % 4 === 0)) {
          return [null, 'token_length must be null or an integer >= 8 and a multiple of 4 (padded base64)'];
        }
        break;
      case 'ttl':
        if (typeof v !== 'number' || !Number.isFinite(v)) return [null, 'ttl must be a finite number of seconds'];
        break;
      case 'codeartifact_ttl':
      case 'expires_at':
        if (v !== null && (typeof v !== 'number' || !Number.isFinite(v))) return [null, `${k} must be null or a number`];
        break;
      case 'delay_ms':
        if (!isNonNegInt(v)) return [null, 'delay_ms must be a non-negative integer'];
        break;
      case 'empty':
      case 'exponent_timestamps':
        if (typeof v !== 'boolean') return [null, `${k} must be a boolean`];
        break;
      case 'fail':
        if (v !== null) {
          if (typeof v !== 'object' || Array.isArray(v)) return [null, 'fail must be null or an object'];
          const status = v.status === undefined ? 400 : v.status;
          if (!Number.isInteger(status) || status < 400 || status > 599) return [null, 'fail.status must be 400..599'];
          const code = v.code === undefined ? 'ServerException' : v.code;
          if (typeof code !== 'string' || !/^[A-Za-z0-9_.]+$/.test(code)) return [null, 'fail.code must be a word'];
          const message = v.message === undefined ? 'stub injected failure' : v.message;
          if (typeof message !== 'string') return [null, 'fail.message must be a string'];
          if (v.times !== undefined && v.times !== null && !(Number.isInteger(v.times) && v.times > 0)) {
            return [null, 'fail.times must be a positive integer or null'];
          }
          next.fail = { status, code, message, times: v.times == null ? null : v.times };
          continue;
        }
        break;
      default:
        return [null, `unknown config key: ${k}`];
    }
    next[k] = v;
  }
  if (next.token_length !== null) {
    const rawLen = (next.token_length / 4) * 3;           // bytes encoded by the token
    if (Buffer.byteLength('AWS:' + next.password, 'utf8') > rawLen) {
      return [null, 'password too long for token_length'];
    }
  }
  return [next, null];
}

// ECR password actually served.  With token_length = L (multiple of 4) the
// token encodes exactly 3L/4 bytes ("AWS:" + password, no base64 padding), so
// the configured password is extended to 3L/4 - 4 bytes with a deterministic
// filler: "-" followed by hex of sha256(password + ":" + i) for i = 0,1,...
function ecrPassword(cfg) {
  if (cfg.token_length === null) return cfg.password;
  const want = (cfg.token_length / 4) * 3 - 4;
  let pw = cfg.password;
  if (Buffer.byteLength(pw, 'utf8') >= want) return pw; // exact fit (validated)
  let filler = '-';
  for (let i = 0; Buffer.byteLength(pw, 'utf8') + filler.length < want; i++) {
    filler += crypto.createHash('sha256').update(`${cfg.password}:${i}`).digest('hex');
  }
  return pw + filler.slice(0, want - Buffer.byteLength(pw, 'utf8'));
}

function ecrToken(cfg) {
  return Buffer.from('AWS:' + ecrPassword(cfg), 'utf8').toString('base64');
}

function expiry(cfg, ttl) {
  return cfg.expires_at !== null ? cfg.expires_at : Date.now() / 1000 + ttl;
}

// Epoch seconds with millisecond precision, rendered as a JSON number.
// exponent style mimics Java's Double.toString, e.g. 1.700000000123E9.
function epochJson(seconds, exponent) {
  const ms = Math.round(seconds * 1000);
  const plain = (ms / 1000).toString();
  if (!exponent || Math.abs(ms) < 1e10 || plain.includes('e')) return plain;
  const neg = ms < 0 ? '-' : '';
  const [ip, fp = ''] = Math.abs(ms / 1000).toString().split('.');
  const digits = ip + fp;
  const mant = digits.slice(1).replace(/0+$/, '') || '0';
  return `${neg}${digits[0]}.${mant}E${ip.length - 1}`;
}

// ------------------------------------------------------------ http utils --

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 1 << 20) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, contentType, body, extraHeaders) {
  const buf = Buffer.from(body, 'utf8');
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': buf.length,
    'x-amzn-RequestId': crypto.randomUUID(),
    ...(extraHeaders || {}),
  });
  res.end(buf);
}

function sendJson(res, status, obj) {
  send(res, status, 'application/json', JSON.stringify(obj) + '\n');
}

// awsJson 1.1 error (ECR): __type in body, header kept for good measure.
function json11Error(res, status, code, message) {
  send(res, status, JSON11, JSON.stringify({ __type: code, message }), {
    'x-amzn-ErrorType': code,
  });
}

// restJson1 error (CodeArtifact): code in x-amzn-ErrorType, message in body.
function restJsonError(res, status, code, message) {
  send(res, status, 'application/json', JSON.stringify({ message }), {
    'x-amzn-ErrorType': code,
  });
}

// Parse "AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/REGION/SERVICE/aws4_request,
// SignedHeaders=..., Signature=..."; the signature itself is not verified.
function parseSigV4(header) {
  if (typeof header !== 'string') return null;
  const m = /^AWS4-HMAC-SHA256\s+(.*)$/.exec(header.trim());
  if (!m) return null;
  const parts = {};
  for (const p of m[1].split(',')) {
    const i = p.indexOf('=');
    if (i > 0) parts[p.slice(0, i).trim()] = p.slice(i + 1).trim();
  }
  if (!parts.Credential || !parts.SignedHeaders || !parts.Signature) return null;
  const scope = parts.Credential.split('/');
  if (scope.length !== 5 || scope[4] !== 'aws4_request' || !/^\d{8}$/.test(scope[1])) return null;
  return { accessKey: scope[0], date: scope[1], region: scope[2], service: scope[3] };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Returns the failure to inject for this call (and consumes one of "times").
function takeFailure() {
  const f = config.fail;
  if (!f) return null;
  if (f.times !== null) {
    const left = f.times - 1;
    config = { ...config, fail: left > 0 ? { ...f, times: left } : null };
  }
  return f;
}

// ------------------------------------------------------- token operations --

async function handleEcr(req, res, body, sig) {
  const target = req.headers['x-amz-target'];
  if (target !== ECR_TARGET) {
    json11Error(res, 400, 'UnknownOperationException', `Unknown operation ${target}`);
    return;
  }
  if (sig.service !== 'ecr') {
    json11Error(res, 403, 'InvalidSignatureException', "Credential should be scoped to correct service: 'ecr'.");
    return;
  }
  calls.ecr += 1;
  calls.last_region = sig.region;
  calls.last_target = target;
  calls.last_query = null;
  calls.last_body = body;
  const cfg = config;
  if (cfg.delay_ms > 0) await sleep(cfg.delay_ms);

  let input;
  try {
    input = body.trim() === '' ? {} : JSON.parse(body);
    if (input === null || typeof input !== 'object' || Array.isArray(input)) throw new Error('not an object');
  } catch (e) {
    json11Error(res, 400, 'SerializationException', 'Request body is not a JSON object');
    return;
  }
  let ids = input.registryIds;
  if (ids !== undefined && ids !== null) {
    if (!Array.isArray(ids) || ids.some((x) => typeof x !== 'string' || !/^[0-9]{12}$/.test(x))) {
      json11Error(res, 400, 'InvalidParameterException', 'Invalid parameter at \'registryIds\' failed to satisfy constraint: \'Member must satisfy regular expression pattern: [0-9]{12}\'');
      return;
    }
  }
  if (!ids || ids.length === 0) ids = [cfg.account_id];

  const fail = takeFailure();
  if (fail) {
    json11Error(res, fail.status, fail.code, fail.message);
    return;
  }

  const cur = config; // may differ from cfg only by fail.times bookkeeping
  const token = ecrToken(cur);
  const expires = epochJson(expiry(cur, cur.ttl), cur.exponent_timestamps);
  const entries = cur.empty
    ? []
    : ids.map((id) =>
        `{"authorizationToken":${JSON.stringify(token)},"expiresAt":${expires},` +
        `"proxyEndpoint":${JSON.stringify(`https://${id}.dkr.ecr.${sig.region}.amazonaws.com`)}}`);
  send(res, 200, JSON11, `{"authorizationData":[${entries.join(',')}]}`);
}

async function handleCodeArtifact(req, res, url, sig) {
  if (sig.service !== 'codeartifact') {
    restJsonError(res, 403, 'InvalidSignatureException', "Credential should be scoped to correct service: 'codeartifact'.");
    return;
  }
  const q = {};
  for (const [k, v] of url.searchParams) q[k] = v;
  calls.codeartifact += 1;
  calls.last_region = sig.region;
  calls.last_target = CA_TARGET;
  calls.last_query = q;
  calls.last_body = null;
  const cfg = config;
  if (cfg.delay_ms > 0) await sleep(cfg.delay_ms);

  const domain = url.searchParams.get('domain');
  if (!domain) {
    restJsonError(res, 400, 'ValidationException', "1 validation error detected: Value null at 'domain' failed to satisfy constraint: Member must not be null");
    return;
  }
  if (!/^[a-z][a-z0-9-]{0,48}[a-z0-9]$/.test(domain)) {
    restJsonError(res, 400, 'ValidationException', "Value at 'domain' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-z][a-z0-9\\-]{0,48}[a-z0-9]");
    return;
  }
  const owner = url.searchParams.get('domain-owner');
  if (owner !== null && !/^[0-9]{12}$/.test(owner)) {
    restJsonError(res, 400, 'ValidationException', "Value at 'domainOwner' failed to satisfy constraint: Member must satisfy regular expression pattern: [0-9]{12}");
    return;
  }
  let duration = null;
  const d = url.searchParams.get('duration');
  if (d !== null) {
    duration = /^[0-9]+$/.test(d) ? Number(d) : NaN;
    if (!(duration === 0 || (duration >= 900 && duration <= 43200))) {
      restJsonError(res, 400, 'ValidationException', 'durationSeconds must be 0 or between 900 and 43200');
      return;
    }
  }

  const fail = takeFailure();
  if (fail) {
    restJsonError(res, fail.status, fail.code, fail.message);
    return;
  }

  const cur = config;
  const ttl = cur.codeartifact_ttl !== null ? cur.codeartifact_ttl : duration ? duration : cur.ttl;
  const expiration = epochJson(expiry(cur, ttl), cur.exponent_timestamps);
  send(res, 200, 'application/json',
    `{"authorizationToken":${JSON.stringify(cur.codeartifact_token)},"expiration":${expiration}}`);
}

// ------------------------------------------------------------ aws server --

async function handleAws(req, res) {
  const url = new URL(req.url, 'http://stub.invalid');
  const body = await readBody(req);

  // Control plane (plain HTTP, no AWS semantics).
  if (url.pathname.startsWith('/_stub/')) {
    if (url.pathname === '/_stub/config' && req.method === 'POST') {
      let patch;
      try {
        patch = body.trim() === '' ? {} : JSON.parse(body);
      } catch (e) {
        sendJson(res, 400, { error: 'invalid JSON' });
        return;
      }
      const [next, err] = mergeConfig(config, patch);
      if (err) {
        sendJson(res, 400, { error: err });
        return;
      }
      config = next;
      sendJson(res, 200, config);
      return;
    }
    if (url.pathname === '/_stub/config' && req.method === 'GET') {
      sendJson(res, 200, config);
      return;
    }
    if (url.pathname === '/_stub/calls' && req.method === 'GET') {
      sendJson(res, 200, calls);
      return;
    }
    if (url.pathname === '/_stub/reset' && req.method === 'POST') {
      config = { ...DEFAULTS };
      resetCalls();
      sendJson(res, 200, config);
      return;
    }
    sendJson(res, 404, { error: `no control endpoint ${req.method} ${url.pathname}` });
    return;
  }

  const isCodeArtifact = url.pathname === CA_PATH;
  const errorFn = isCodeArtifact ? restJsonError : json11Error;
  const sig = parseSigV4(req.headers.authorization);
  if (!sig) {
    calls.unauthenticated += 1;
    errorFn(res, 403, 'MissingAuthenticationTokenException', 'Missing Authentication Token');
    return;
  }

  if (isCodeArtifact) {
    if (req.method !== 'POST') {
      restJsonError(res, 405, 'MethodNotAllowedException', `${req.method} not allowed on ${CA_PATH}`);
      return;
    }
    await handleCodeArtifact(req, res, url, sig);
    return;
  }
  if (url.pathname === '/' && req.method === 'POST' && req.headers['x-amz-target']) {
    const target = String(req.headers['x-amz-target']);
    if (!target.startsWith(ECR_TARGET_PREFIX)) {
      json11Error(res, 400, 'UnknownOperationException', `Unknown operation ${target}`);
      return;
    }
    await handleEcr(req, res, body, sig);
    return;
  }
  json11Error(res, 404, 'UnknownOperationException', `No operation at ${req.method} ${url.pathname}`);
}

// ------------------------------------------------------- upstream server --

async function handleUpstream(req, res) {
  const url = new URL(req.url, 'http://stub.invalid');
  await readBody(req);
  if (url.pathname === '/_upstream/requests' && req.method === 'GET') {
    sendJson(res, 200, upstreamRequests);
    return;
  }
  if (url.pathname === '/_upstream/reset' && req.method === 'POST') {
    upstreamRequests = [];
    sendJson(res, 200, { ok: true });
    return;
  }
  if (url.pathname.startsWith('/_upstream/')) {
    sendJson(res, 404, { error: `no control endpoint ${req.method} ${url.pathname}` });
    return;
  }
  upstreamRequests.push({
    method: req.method,
    path: req.url,                                  // path plus query string
    authorization: req.headers.authorization === undefined ? null : req.headers.authorization,
    time: Date.now() / 1000,                       // epoch seconds, ms precision
  });
  send(res, 200, 'text/plain', 'upstream ok\n');
}

// ------------------------------------------------------------------ main --

function wrap(handler) {
  return (req, res) => {
    handler(req, res).catch((err) => {
      if (!res.headersSent) {
        try {
          sendJson(res, 500, { error: 'stub internal error' });
        } catch (_) { /* socket gone */ }
      }
      process.stderr.write(`aws_stub: ${err && err.message}\n`);
    });
  };
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port-file' && i + 1 < argv.length) out.portFile = argv[++i];
    else if (argv[i].startsWith('--port-file=')) out.portFile = argv[i].slice('--port-file='.length);
    else {
      process.stderr.write(`aws_stub: unknown argument ${argv[i]}\nusage: node aws_stub.js --port-file FILE\n`);
      process.exit(2);
    }
  }
  if (!out.portFile) {
    process.stderr.write('usage: node aws_stub.js --port-file FILE\n');
    process.exit(2);
  }
  return out;
}

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, HOST, () => resolve(server.address().port));
  });
}

async function main() {
  const { portFile } = parseArgs(process.argv.slice(2));
  const awsServer = http.createServer(wrap(handleAws));
  const upstreamServer = http.createServer(wrap(handleUpstream));
  awsServer.keepAliveTimeout = upstreamServer.keepAliveTimeout = 5000;

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const s of [awsServer, upstreamServer]) {
      s.close();
      if (s.closeAllConnections) s.closeAllConnections();
    }
    setImmediate(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const [awsPort, upstreamPort] = await Promise.all([listen(awsServer), listen(upstreamServer)]);
  const info = { aws: awsPort, upstream: upstreamPort, pid: process.pid };
  const target = path.resolve(portFile);
  const tmp = `${target}.tmp.${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(info) + '\n');
  fs.renameSync(tmp, target);
  process.stdout.write(`aws_stub listening aws=${awsPort} upstream=${upstreamPort} pid=${process.pid}\n`);
}

main().catch((err) => {
  process.stderr.write(`aws_stub: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
