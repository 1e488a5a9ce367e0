// Shared helpers of the Node interop tests: spawning the servers, bounded waits.
'use strict';

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..');

/** Path of the `corelay` binary: $CORELAY_BIN, else target/debug/corelay. */
const CORELAY_BIN = process.env.CORELAY_BIN || path.join(ROOT, 'target', 'debug', 'corelay');

/** Path of the socketio_reference example: $SOCKETIO_REFERENCE_BIN, else target/debug/examples. */
const REFERENCE_BIN =
  process.env.SOCKETIO_REFERENCE_BIN ||
  path.join(path.dirname(CORELAY_BIN), 'examples', 'socketio_reference');

/** Path of the socketcluster_app example: $SOCKETCLUSTER_APP_BIN, else next to the reference. */
const SC_APP_BIN =
  process.env.SOCKETCLUSTER_APP_BIN ||
  path.join(path.dirname(CORELAY_BIN), 'examples', 'socketcluster_app');

const live = new Set();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/**
 * The `stop(sig = 'SIGTERM', ms = 5000)` of a spawned `child` whose exit `exited` resolves:
 * sends `sig` (SIGKILL after `ms`) and resolves with {code, signal}.
 */
function stopper(child, exited) {
  return async (sig = 'SIGTERM', ms = 5000) => {
    if (child.exitCode !== null || child.signalCode !== null) return exited;
    child.kill(sig);
    const t = setTimeout(() => child.kill('SIGKILL'), ms);
    const result = await exited;
    clearTimeout(t);
    return result;
  };
}

/**
 * Spawns `bin args...` and resolves once its stdout prints a line matching `ready`
 * (a regexp whose group 1 is the port). Rejects if it exits first or takes over `ms`.
 */
function spawnServer(bin, args, { env = {}, ready, ms = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr += d;
      if (process.env.INTEROP_VERBOSE) process.stderr.write(d);
    });
    const exited = new Promise((res) => {
      child.on('exit', (code, signal) => {
        live.delete(child);
        res({ code, signal });
      });
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${bin} did not print its listening line within ${ms} ms; stderr:\n${stderr}`));
    }, ms);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin}: ${e.message}`));
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited early (code ${code}, signal ${signal}); stderr:\n${stderr}`));
    });
    const lines = readline.createInterface({ input: child.stdout });
    lines.once('line', (line) => {
      const m = ready.exec(line);
      clearTimeout(timer);
      if (!m) {
        child.kill('SIGKILL');
        reject(new Error(`unexpected first line from ${bin}: ${line}`));
        return;
      }
      const port = Number(m[1]);
      resolve({
        port,
        url: `http://127.0.0.1:${port}`,
        child,
        exited,
        stderr: () => stderr,
        stop: stopper(child, exited),
      });
    });
  });
}

/**
 * `corelay serve` on `port` (0: ephemeral) with `shards` shards, extra CORELAY_* env, and
 * the TOML file `config` (a path) when given.
 */
function startCorelay({ port = 0, shards = 2, env = {}, config } = {}) {
  const args = ['serve', '--listen', `127.0.0.1:${port}`, '--shards', String(shards)];
  if (config) args.push('--config', config);
  return spawnServer(CORELAY_BIN, args, {
    env,
    ready: /^corelay listening on 127\.0\.0\.1:(\d+) /,
  });
}

/** The socketio_reference example on an ephemeral port. */
function startReference() {
  return spawnServer(REFERENCE_BIN, ['--port', '0'], {
    ready: /^socketio_reference listening on 127\.0\.0\.1:(\d+)$/,
  });
}

/** The socketcluster_app example on `port` (0: ephemeral), with extra CORELAY_* env. */
function startScApp({ port = 0, env = {} } = {}) {
  return spawnServer(SC_APP_BIN, ['--port', String(port)], {
    env,
    ready: /^socketcluster_app listening on 127\.0\.0\.1:(\d+)$/,
  });
}

/**
 * Sends one Redis command (its arguments as strings) over a fresh TCP connection to
 * 127.0.0.1:`port` and resolves with the parsed reply, within `ms`. Raw RESP because the
 * tests need only PING and PUBSUB NUMSUB, not a Redis client package.
 */
function redisCommand(port, args, ms = 1000) {
  const request =
    `*${args.length}\r\n` +
    args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('');
  let socket;
  return within(
    ms,
    `redis ${args.join(' ')}`,
    new Promise((resolve, reject) => {
      let buf = Buffer.alloc(0);
      socket = net.connect(port, '127.0.0.1', () => socket.write(request));
      socket.on('error', reject);
      socket.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        const parsed = parseResp(buf, 0);
        if (!parsed) return; // The reply is not complete yet.
        if (parsed.value instanceof Error) reject(parsed.value);
        else resolve(parsed.value);
      });
      socket.on('close', () => reject(new Error(`redis closed before replying to ${args[0]}`)));
    }),
  ).finally(() => socket && socket.destroy());
}

/**
 * One RESP2 reply at `at` in `buf`: {value, end}, or null when `buf` holds only part of it.
 * Errors come back as Error values so that the caller decides.
 */
function parseResp(buf, at) {
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return null;
  const line = buf.toString('utf8', at + 1, eol);
  const next = eol + 2;
  switch (String.fromCharCode(buf[at])) {
    case '+':
      return { value: line, end: next };
    case '-':
      return { value: new Error(`redis: ${line}`), end: next };
    case ':':
      return { value: Number(line), end: next };
    case '$': {
      const len = Number(line);
      if (len < 0) return { value: null, end: next };
      if (buf.length < next + len + 2) return null;
      return { value: buf.toString('utf8', next, next + len), end: next + len + 2 };
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      const items = [];
      let end = next;
      for (let i = 0; i < n; i++) {
        const item = parseResp(buf, end);
        if (!item) return null;
        items.push(item.value);
        end = item.end;
      }
      return { value: items, end };
    }
    default:
      return { value: new Error(`redis: unexpected reply ${JSON.stringify(line)}`), end: next };
  }
}

/** Redis's count of subscribers of `channel` (`PUBSUB NUMSUB`). */
async function numsub(port, channel) {
  const [, count] = await redisCommand(port, ['PUBSUB', 'NUMSUB', channel]);
  return count;
}

/**
 * Debian's `redis-server` on a free port of 127.0.0.1, without persistence, resolved once it
 * answers PING (within `ms`). Killed by PID when the test process exits, like the servers.
 */
async function startRedis({ ms = 10000 } = {}) {
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  live.add(child);
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const exited = new Promise((res) => {
    child.on('exit', (code, signal) => {
      live.delete(child);
      res({ code, signal });
    });
  });
  const spawned = new Promise((_, reject) => {
    child.on('error', (e) => reject(new Error(`cannot start redis-server: ${e.message}`)));
    exited.then(({ code, signal }) =>
      reject(new Error(`redis-server exited early (code ${code}, signal ${signal}): ${stderr}`)),
    );
  });
  // Until it listens, a connection is refused: ask again until it answers or time is up.
  let waiting = true;
  const answers = (async () => {
    while (waiting) {
      try {
        if ((await redisCommand(port, ['PING'], 200)) === 'PONG') return;
      } catch {
        // Not listening yet.
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  try {
    await within(ms, 'redis-server to answer PING', Promise.race([answers, spawned]));
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  } finally {
    waiting = false;
  }
  spawned.catch(() => {}); // Its exit later is the stop we asked for.
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    child,
    stop: stopper(child, exited),
  };
}

/** A currently free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Rejects with `what` after `ms`, else resolves/rejects like `promise`. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The arguments of the next `event` on `emitter` (an array), within `ms`. */
function once(emitter, event, ms = 5000) {
  let handler;
  return within(
    ms,
    `event "${event}"`,
    new Promise((resolve) => {
      handler = (...args) => resolve(args);
      emitter.once(event, handler);
    }),
  ).catch((e) => {
    emitter.off(event, handler);
    throw e;
  });
}

/** Resolves when `socket` (socket.io-client) is connected; rejects on connect_error/timeout. */
function connected(socket, ms = 5000) {
  if (socket.connected) return Promise.resolve();
  let onConnect;
  let onError;
  return within(
    ms,
    'connect',
    new Promise((resolve, reject) => {
      onConnect = () => resolve();
      onError = (err) => reject(new Error(`connect_error: ${err.message}`));
      socket.once('connect', onConnect);
      socket.once('connect_error', onError);
    }),
  ).finally(() => {
    socket.off('connect', onConnect);
    socket.off('connect_error', onError);
  });
}

/** `socket.emitWithAck(...)` bounded by `ms`. */
function ack(socket, ms, ...args) {
  return within(ms, `ack of ${JSON.stringify(args[0])}`, socket.timeout(ms).emitWithAck(...args));
}

/** Resolves once `cond()` holds, re-checked whenever `emitter` emits `event`. */
function until(emitter, event, cond, ms, what) {
  if (cond()) return Promise.resolve();
  let handler;
  return within(
    ms,
    what,
    new Promise((resolve) => {
      handler = () => {
        if (cond()) resolve();
      };
      emitter.on(event, handler);
    }),
  ).finally(() => emitter.off(event, handler));
}

/** A Socket.IO recovery offset as corelay writes it: room tag and number, in hex. */
const OFFSET = /^[0-9a-f]{9,24}$/;

/**
 * The arguments of a room broadcast (an array, as `once` gives them) without the recovery
 * offset that corelay appends as the last one (`[resume] socketio`, on by default), after
 * checking it is there and is one.
 */
function withoutOffset(args) {
  assert.ok(args.length > 0, 'a room broadcast has arguments');
  const offset = args[args.length - 1];
  assert.equal(typeof offset, 'string', `last argument is the offset: ${JSON.stringify(args)}`);
  assert.match(offset, OFFSET);
  return args.slice(0, -1);
}

/**
 * Registers a `corelay serve` for the current test file: started before its tests, stopped
 * after them (asserting a clean exit on SIGTERM), with every socket in `ctx.sockets`
 * disconnected first. Returns `ctx`, whose `server` is set once started.
 */
function useCorelay(options) {
  const { before, after } = require('node:test');
  const ctx = { server: null, sockets: [] };
  before(async () => {
    ctx.server = await startCorelay(options);
  });
  after(async () => {
    for (const s of ctx.sockets) s.disconnect();
    const { code } = await ctx.server.stop();
    assert.equal(code, 0, 'corelay exits 0 on SIGTERM');
  });
  return ctx;
}

module.exports = {
  CORELAY_BIN,
  useCorelay,
  REFERENCE_BIN,
  startCorelay,
  startReference,
  startScApp,
  startRedis,
  redisCommand,
  numsub,
  freePort,
  within,
  once,
  connected,
  ack,
  until,
  OFFSET,
  withoutOffset,
};
