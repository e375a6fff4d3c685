'use strict';
// Shared plumbing for the drivers in this folder (not a test itself).
//
// Contract (mirrors ../sdk_harness.py): exactly ONE JSON line on stdout,
// nothing else is ever written to stdout.
//   success: {"ok":true,...}                                   exit 0
//   failure: {"ok":false,"error":<name>,"message":..,...}      exit 1
//   timeout: {"ok":false,"error":"Timeout","message":..}        exit 1
//   usage:   message on stderr, no JSON                          exit 2
// SDK debug output (the `debug` module) goes to stderr; --verbose enables it.

const fs = require('fs');
const util = require('util');

let emitted = false;

// console.log/info would write to stdout: route them to stderr so the SDK or
// its dependencies can never pollute the result line.
console.log = (...a) => process.stderr.write(util.format(...a) + '\n');
console.info = console.log;

function emitAndExit(obj, code) {
  if (!emitted) {
    emitted = true;
    // fs.writeSync is synchronous for files, pipes and TTYs, so process.exit()
    // cannot truncate the line.
    fs.writeSync(1, JSON.stringify(obj) + '\n');
  }
  // Hard exit: SDK sockets/timers must not keep the process alive.
  process.exit(code);
}

function usage(text, msg) {
  if (msg) process.stderr.write('error: ' + msg + '\n');
  process.stderr.write(text);
  process.exit(2);
}

// Parse argv with util.parseArgs; usage errors exit 2 without JSON.
function parseArgs(options, usageText) {
  options.help = { type: 'boolean', short: 'h' };
  options.verbose = { type: 'boolean' };
  // A driver may pass its own timeout option (other default); 60 s otherwise.
  options.timeout = options.timeout || { type: 'string', default: '60' };
  let values;
  try {
    ({ values } = util.parseArgs({ options, strict: true, allowPositionals: false }));
  } catch (e) {
    usage(usageText, e.message);
  }
  if (values.help) {
    process.stdout.write(usageText);
    process.exit(0);
  }
  const t = Number(values.timeout);
  if (!Number.isFinite(t) || t <= 0) usage(usageText, '--timeout must be a positive number of seconds');
  values.timeout = t;
  if (values.verbose) {
    // The SDKs log through `debug`, which reads DEBUG when first required; so
    // this must run before any SDK module is loaded (callers require lazily).
    process.env.DEBUG = process.env.DEBUG || 'azure*';
  }
  return values;
}

function errName(e) {
  if (e === null || e === undefined) return String(e);
  if (typeof e !== 'object') return typeof e;
  if (e.name && e.name !== 'Error') return e.name;
  if (e.constructor && e.constructor.name) return e.constructor.name;
  return e.name || 'Error';
}

function errMessage(e) {
  if (e && typeof e === 'object' && 'message' in e) return String(e.message);
  return String(e);
}

// HTTP status of a transport-level failure, when the SDK kept it:
// http-base errors carry `.response` (IncomingMessage); DPS MQTT errors carry
// `.transportObject = {topic: '$dps/registrations/res/<status>/?$rid=..'}`.
function transportStatus(e) {
  if (!e || typeof e !== 'object') return null;
  if (e.response && typeof e.response.statusCode === 'number') return e.response.statusCode;
  const t = e.transportObject;
  if (t && typeof t.statusCode === 'number') return t.statusCode;
  if (t && typeof t.topic === 'string') {
    const m = /^\$dps\/registrations\/res\/(\d+)\//.exec(t.topic);
    if (m) return Number(m[1]);
  }
  return null;
}

// Error body the server sent, parsed when it is JSON.
function errorBody(e) {
  if (!e || typeof e !== 'object') return null;
  if (e.result !== undefined && e.result !== null && e.result !== '') return e.result;
  if (typeof e.responseBody === 'string' && e.responseBody.length) {
    try { return JSON.parse(e.responseBody); } catch (_) { return e.responseBody; }
  }
  return null;
}

// AMQP error object ({condition, description, info}, rhea's decoded `error`
// composite): either passed through unchanged (azure-iot-provisioning-device-amqp
// hands a rejected register request's error to register()'s callback as is), or
// kept by the SDK's translateError as `err.amqpError`.
function amqpErrorOf(e) {
  if (!e || typeof e !== 'object') return null;
  if (typeof e.condition === 'string') return e;
  const inner = e.amqpError;
  if (inner && typeof inner === 'object' && typeof inner.condition === 'string') return inner;
  return null;
}

// The error class the SDK's translateError picks for a raw AMQP error.
function amqpErrorName(a) {
  try {
    const { translateError } = require('azure-iot-amqp-base');
    return errName(translateError(String(a.description || a.condition), a));
  } catch (_) {
    return 'AmqpError';
  }
}

function errorJson(e, extra) {
  const httpStatus = transportStatus(e);
  let body = errorBody(e);
  const amqp = amqpErrorOf(e);
  const description = amqp && typeof amqp.description === 'string' ? amqp.description : null;
  if (body === null && description !== null) {
    // DPS over AMQP: the description is the JSON error body ({"errorCode":401002,..}).
    try {
      const parsed = JSON.parse(description);
      if (parsed && typeof parsed === 'object') body = parsed;
    } catch (_) { /* plain text */ }
  }
  let errorCode = body && typeof body === 'object' && body.errorCode !== undefined ? body.errorCode : null;
  if (errorCode === null && description !== null) {
    const m = /"?errorCode"?\s*[:=]\s*"?(\d+)/i.exec(description);
    if (m) errorCode = Number(m[1]);
  }
  const raw = amqp !== null && amqp === e && !(e instanceof Error);
  const out = {
    ok: false,
    error: raw ? amqpErrorName(e) : errName(e),
    message: raw ? (description !== null ? description : String(e.condition)) : errMessage(e),
    status: errorCode !== null ? errorCode : httpStatus,
    httpStatus: httpStatus,
    body: body,
    code: e && typeof e === 'object' && e.code !== undefined ? e.code : null,
  };
  if (amqp !== null) {
    // Only for AMQP errors, so the MQTT/HTTP lines keep their shape.
    out.errorCode = errorCode;
    out.amqpCondition = amqp.condition;
    out.amqpDescription = description;
    out.amqpInfo = amqp.info === undefined ? null : amqp.info;
  }
  return Object.assign(out, extra || {});
}

// Run async fn() under a --timeout deadline and print its result.
// fn resolves to the success object (without "ok") or throws.
function run(timeoutSeconds, fn, onError) {
  const timer = setTimeout(() => {
    emitAndExit({
      ok: false,
      error: 'Timeout',
      message: 'no result within ' + timeoutSeconds + 's',
      status: null,
    }, 1);
  }, Math.round(timeoutSeconds * 1000));
  const fail = (e) => emitAndExit(onError ? onError(e) : errorJson(e), 1);
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
  Promise.resolve()
    .then(fn)
    .then((res) => {
      clearTimeout(timer);
      emitAndExit(Object.assign({ ok: true }, res), 0);
    }, fail);
}

module.exports = { parseArgs, usage, run, errorJson, errName, errMessage, transportStatus, errorBody, emitAndExit, amqpErrorOf };
