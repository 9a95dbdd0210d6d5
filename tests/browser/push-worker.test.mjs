// The Node push worker example (examples/push-worker.mjs: the built-in fetch
// with a ReadableStream body) run for real against the release binary with
// an API key (SPEC 12): it publishes a whole run, it survives its streamed
// publish being cut mid-body by retrying with Sluice-Offset (every word
// exactly once), it takes a 409 run_finished after a lost answer for the
// success it was, and it stops, saying so, when the run is cancelled under
// it. No browser: only the binary is needed. Without it the tests skip
// loudly, except under CI=true, where that is a failure.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { cuttingProxy, startSluice } from './helpers.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const WORKER = path.join(root, 'examples/push-worker.mjs');
const BINARY = process.env.SLUICE_BIN || path.join(root, 'target/release/sluice');
const KEY = 'worker-test-key';
const auth = { Authorization: `Bearer ${KEY}` };
// A worker publishes for a few seconds; a slow, busy machine gets far more.
const TIMEOUT_MS = 120_000;

const why = existsSync(BINARY) ? null : `no sluice binary at ${BINARY} (cargo build --release)`;
if (why && process.env.CI === 'true') throw new Error(`the push worker tests cannot run under CI=true: ${why}`);
if (why) console.error(`\n!!! SKIPPING the push worker tests: ${why} !!!\n`);
const skip = why ?? false;

let sluice;
before(async () => {
  if (skip) return;
  const dir = path.join(root, 'target/e2e');
  mkdirSync(dir, { recursive: true });
  const config = path.join(dir, 'push-worker.toml');
  writeFileSync(config, `[[auth.keys]]\nname = "worker"\nkey = "${KEY}"\n`);
  sluice = await startSluice(['--config', config]);
});
after(async () => {
  await sluice?.stop();
});

/** The text a worker with `--words n` publishes, one token each. */
const words = (n) => Array.from({ length: n }, (_, i) => `${i ? ' ' : ''}word${i + 1}`);

/**
 * Starts the worker; `runId()` resolves to the id it prints first, `exit`
 * to { code, stdout, stderr } (killed after TIMEOUT_MS).
 */
function startWorker(args) {
  const child = spawn(process.execPath, [WORKER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let gotId;
  const id = new Promise((resolve) => { gotId = resolve; });
  child.stdout.on('data', (data) => {
    stdout += data;
    const match = stdout.match(/^run (\S+)\n/);
    if (match) gotId(match[1]);
  });
  child.stderr.on('data', (data) => { stderr += data; });
  const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
  const exit = new Promise((resolve) => child.on('close', (code, signal) => {
    clearTimeout(timer);
    gotId(null);
    resolve({ code, signal, stdout, stderr, output: `--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}` });
  }));
  return { runId: () => id, exit };
}

async function api(method, route, body) {
  const response = await fetch(`${sluice.base}${route}`, {
    method,
    headers: { ...auth, 'Content-Type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

/** The token texts and the event ids of a finished run, read as SSE. */
async function readEvents(id) {
  const text = await (await fetch(`${sluice.base}/api/runs/${id}/events`, { headers: auth })).text();
  const ids = text.split('\n').filter((l) => l.startsWith('id: ')).map((l) => l.slice(4));
  ids.forEach((eventId, i) => assert.equal(eventId, `${id}:${i + 1}`, 'contiguous ids'));
  const tokens = text.split('\n').filter((l) => l.startsWith('data: {"text"')).map((l) => JSON.parse(l.slice(6)).text);
  return { ids, tokens };
}

test('the node worker publishes a whole run', { skip }, async () => {
  const worker = startWorker([sluice.base, '--key', KEY, '--words', '25', '--delay', '0.05']);
  const id = await worker.runId();
  const { code, stdout, output } = await worker.exit;
  assert.equal(code, 0, output);
  assert.ok(stdout.endsWith('run done: 26 events published\n'), output);
  const { body: snapshot } = await api('GET', `/api/runs/${id}`);
  assert.equal(snapshot.status, 'done');
  assert.equal(snapshot.text, words(25).join(''));
  assert.equal(snapshot.events, 27);
  const { tokens } = await readEvents(id);
  assert.deepEqual(tokens, words(25));
});

test('a node worker cut off mid-body retries with its offset; each word once', { skip }, async () => {
  // The application creates the run; the worker only gets its publish URL.
  const { status, body: created } = await api('POST', '/api/runs', { agent: 'push', prompt: 'a job' });
  assert.equal(status, 201);
  assert.match(created.publish_url, /access_token=/);
  // Each line is a chunk of some 39 bytes: the cut falls inside the fifth.
  const proxy = await requestCuttingProxy(sluice.base, 180);
  try {
    const worker = startWorker([proxy.base, '--publish-url', created.publish_url, '--words', '20', '--delay', '0.05']);
    const { code, stdout, stderr, output } = await worker.exit;
    assert.equal(code, 0, output);
    const body = proxy.forwarded().toString('latin1').split('\r\n\r\n').slice(1).join('\r\n\r\n');
    const wholeLines = body.split('}\n').length - 1;
    assert.ok(wholeLines >= 1 && wholeLines < 20 && !body.endsWith('\r\n'), `cut after ${wholeLines} whole lines: ${body}`);
    assert.match(stderr, /connection lost .*; retrying from offset 0/, output);
    assert.ok(stdout.endsWith('run done: 21 events published\n'), output);
    console.error(output);
  } finally {
    proxy.close();
  }
  const { body: snapshot } = await api('GET', `/api/runs/${created.id}`);
  assert.equal(snapshot.status, 'done');
  assert.equal(snapshot.text, words(20).join(''));
  assert.equal(snapshot.events, 22);
  const { tokens, ids } = await readEvents(created.id);
  assert.deepEqual(tokens, words(20), 'each word exactly once');
  assert.equal(ids.length, 22);
});

test('a node worker whose last answer is lost retries and learns its done made it', { skip }, async () => {
  const { body: created } = await api('POST', '/api/runs', { agent: 'push', prompt: 'a job' });
  // The whole body, done included, reaches Sluice; its 200 answer is cut
  // after 20 bytes, so the worker retries a run that has ended.
  const proxy = await cuttingProxy(sluice.base, '/events', 20);
  try {
    const worker = startWorker([proxy.base, '--publish-url', created.publish_url, '--words', '20', '--delay', '0.02']);
    const { code, stdout, stderr, output } = await worker.exit;
    assert.equal(code, 0, output);
    assert.match(stderr, /connection lost/, output);
    assert.ok(stdout.endsWith('run done: 21 events published (only the answer was lost)\n'), output);
    console.error(output);
  } finally {
    proxy.close();
  }
  const { body: snapshot } = await api('GET', `/api/runs/${created.id}`);
  assert.equal(snapshot.status, 'done');
  assert.equal(snapshot.text, words(20).join(''));
  assert.equal(snapshot.events, 22);
});

test('a node worker whose run is cancelled stops and says so', { skip }, async () => {
  // 200 words at 0.1 s: 20 s of work, which the cancel cuts short.
  const worker = startWorker([sluice.base, '--key', KEY, '--words', '200', '--delay', '0.1']);
  const id = await worker.runId();
  if (!id) assert.fail(`the worker printed no run id\n${(await worker.exit).output}`);
  const deadline = Date.now() + 30_000;
  while (!(await api('GET', `/api/runs/${id}`)).body.text.startsWith('word1 word2 word3')) {
    assert.ok(Date.now() < deadline, 'no words published');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const cancelled = Date.now();
  assert.equal((await api('DELETE', `/api/runs/${id}`)).status, 202);
  const { code, stdout, output } = await worker.exit;
  const waited = Date.now() - cancelled;
  assert.equal(code, 3, `the documented exit status\n${output}`);
  assert.ok(waited < 10_000, `stopped ${waited} ms after the cancel\n${output}`);
  const { body: snapshot } = await api('GET', `/api/runs/${id}`);
  assert.equal(snapshot.status, 'cancelled');
  const published = snapshot.usage.output_tokens;
  assert.ok(stdout.endsWith(`run cancelled (not by this worker) after ${published} events: stopping\n`), output);
  assert.equal(snapshot.text, words(published).join(''));
  console.error(output);
});

/**
 * A TCP proxy to `upstream` that cuts its first connection once the client
 * has sent its request head and `cutAfter` bytes of body: a long streamed
 * publish dropped mid-request, as a worker's network would drop it. Later
 * connections pass through whole. `forwarded()` is what the cut connection
 * sent on to the server.
 */
async function requestCuttingProxy(upstream, cutAfter) {
  const target = new URL(upstream);
  let first = true;
  let forwarded = Buffer.alloc(0);
  const server = net.createServer((client) => {
    const up = net.connect(Number(target.port), target.hostname);
    const cutting = first;
    first = false;
    let limit = null;
    let cut = false;
    client.on('data', (data) => {
      if (!cutting) return up.write(data);
      if (cut) return;
      const before = forwarded.length;
      forwarded = Buffer.concat([forwarded, data]);
      const head = forwarded.indexOf('\r\n\r\n');
      if (limit === null && head >= 0) limit = head + 4 + cutAfter;
      if (limit !== null && forwarded.length >= limit) {
        forwarded = forwarded.subarray(0, limit);
        cut = true;
        up.write(forwarded.subarray(before), () => {
          // Both sides closed at once, mid-request.
          client.destroy();
          up.destroy();
        });
        return;
      }
      up.write(data);
    });
    up.on('data', (data) => client.write(data));
    up.on('end', () => client.end());
    client.on('end', () => up.end());
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    forwarded: () => forwarded,
    close: () => server.close(),
  };
}
