// Run webhooks (SPEC 13) checked from Node with the official
// `standardwebhooks` package, against the release binary: each test starts
// its own Sluice with a [webhooks] config and its own receiver on a free
// port. Runs that end done, with an error and cancelled each get exactly one
// delivery that the library verifies, with the run's snapshot and whole text;
// a 500 then a timeout then a 200 make three attempts with one webhook-id; a
// 410 stops at once and a retry delivers it; and the example receiver
// (examples/webhook-receiver.mjs) handles each run once, a retry included,
// and refuses forged requests. No browser: only the binary is needed.
// Without it the tests skip loudly, except under CI=true, where that is a
// failure.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Webhook } from 'standardwebhooks';
import { cuttingProxy, startSluice } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const EXAMPLE = path.join(root, 'examples/webhook-receiver.mjs');
const BINARY = process.env.SLUICE_BIN || path.join(root, 'target/release/sluice');
/** Made for these tests: `whsec_` and 24 random bytes in base64. */
const SECRET = 'whsec_q3GwM1x9k7H0bT2cR5vYzP4uE8nJ6aLd';
const OTHER_SECRET = 'whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
/** Each wait: runs of a second or two and retries a second apart; a slow, busy machine gets far more. */
const DEADLINE_MS = 20_000;

const why = existsSync(BINARY) ? null : `no sluice binary at ${BINARY} (cargo build --release)`;
if (why && process.env.CI === 'true') throw new Error(`the webhooks tests cannot run under CI=true: ${why}`);
if (why) console.error(`\n!!! SKIPPING the webhooks tests: ${why} !!!\n`);
const skip = why ?? false;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits for `check()` to give something truthy; fails naming `what` after DEADLINE_MS. */
async function until(what, check, detail = () => '') {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}\n${await detail()}`);
    await sleep(50);
  }
}

/**
 * A receiver on 127.0.0.1:0 that keeps every request it gets, verified by
 * the library as it arrives, and answers `respond(n)` for the n-th (from 0):
 * a status, or { status, holdMs } to answer only after holdMs.
 */
async function startReceiver(respond) {
  const webhook = new Webhook(SECRET);
  const received = [];
  const server = http.createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const raw = Buffer.concat(chunks);
      const got = {
        at: Date.now(),
        path: request.url,
        headers: request.headers,
        id: request.headers['webhook-id'],
        timestamp: request.headers['webhook-timestamp'],
        signature: request.headers['webhook-signature'],
        body: raw.toString(),
        payload: null,
        unverified: null,
        closedAt: null,
      };
      try {
        got.payload = webhook.verify(raw, request.headers);
      } catch (error) {
        got.unverified = error.message;
      }
      let answer = respond(received.length);
      received.push(got);
      if (typeof answer === 'number') answer = { status: answer };
      got.answered = answer.status;
      response.on('close', () => { got.closedAt = Date.now(); });
      const send = () => { if (!response.destroyed) response.writeHead(answer.status).end(); };
      if (answer.holdMs) setTimeout(send, answer.holdMs);
      else send();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    received,
    close: () => { server.closeAllConnections(); server.close(); },
  };
}

/**
 * A Sluice whose [webhooks] lets it POST under each of `bases`/hooks/, with
 * `settings` (TOML lines) added; stopped and its config removed after `t`.
 */
async function startHooked(t, bases, settings = '') {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sluice-webhooks-'));
  const config = path.join(dir, 'sluice.toml');
  const allowed = bases.map((base) => `"${base}/hooks/"`).join(', ');
  writeFileSync(config, `[webhooks]\nsecret = "${SECRET}"\nallowed_urls = [${allowed}]\n${settings}`);
  const sluice = await startSluice(['--config', config]);
  t.after(async () => {
    await sluice.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const api = async (method, route, body) => {
    const response = await fetch(`${sluice.base}${route}`, {
      method,
      headers: { 'Content-Type': 'application/json' },
      body: body && JSON.stringify(body),
    });
    return { status: response.status, body: await response.json().catch(() => null) };
  };
  return {
    base: sluice.base,
    api,
    /** Starts a sim run with `params` whose webhook goes to `url`; its id. */
    async run(prompt, params, url) {
      const { status, body } = await api('POST', '/api/runs', { agent: 'sim', prompt, params, webhook_url: url });
      assert.equal(status, 201, JSON.stringify(body));
      return body.id;
    },
    /** The run's snapshot once its status is `status`. */
    async ended(id, status) {
      return until(`run ${id} ${status}`, async () => {
        const { body } = await api('GET', `/api/runs/${id}`);
        return body?.status === status && body;
      });
    },
    /** Cancels run `id` once it has some text. */
    async cancelMidRun(id) {
      await until(`tokens of run ${id}`, async () => (await api('GET', `/api/runs/${id}`)).body?.text);
      assert.equal((await api('DELETE', `/api/runs/${id}`)).status, 202);
    },
    async deliveries(status) {
      const query = status ? `?status=${status}&limit=1000` : '?limit=1000';
      const { status: code, body } = await api('GET', `/api/webhooks/deliveries${query}`);
      assert.equal(code, 200, JSON.stringify(body));
      assert.equal(body.enabled, true);
      return body.deliveries;
    },
  };
}

const show = (received) => JSON.stringify(received.map(({ headers, ...got }) => got), null, 1);

/** Asserts what every attempt must be: signed, verified, a run.finished of run `runId`. */
function assertVerified(got, runId) {
  assert.equal(got.unverified, null, `the library refused an attempt: ${got.unverified}\n${got.body}`);
  assert.match(got.id, /^msg_/);
  assert.match(got.timestamp, /^\d+$/);
  assert.match(got.signature, /^v1,/);
  assert.equal(got.headers['content-type'], 'application/json');
  assert.equal(got.payload.type, 'run.finished');
  assert.ok(!Number.isNaN(Date.parse(got.payload.timestamp)), got.payload.timestamp);
  assert.equal(got.payload.data.id, runId);
  // The signature covers this body only, and only with this secret.
  const headers = { 'webhook-id': got.id, 'webhook-timestamp': got.timestamp, 'webhook-signature': got.signature };
  assert.throws(() => new Webhook(OTHER_SECRET).verify(got.body, headers), /No matching signature/);
  assert.throws(() => new Webhook(SECRET).verify(got.body.replace(runId, 'x'), headers), /No matching signature/);
}

test('runs that end done, with an error and cancelled each get one verified delivery with their snapshot', { skip }, async (t) => {
  const receiver = await startReceiver(() => 200);
  t.after(receiver.close);
  const sluice = await startHooked(t, [receiver.base], 'retry_secs = [1, 1, 1]\n');

  const done = await sluice.run('a run that is done', { tokens: 8, interval_ms: 10 }, `${receiver.base}/hooks/done`);
  const failed = await sluice.run('a run that fails', { tokens: 20, interval_ms: 10, fail_after: 4 }, `${receiver.base}/hooks/failed`);
  const cancelled = await sluice.run('a run that is cancelled', { tokens: 2000, interval_ms: 20 }, `${receiver.base}/hooks/cancelled`);
  await sluice.cancelMidRun(cancelled);
  const runs = [[done, 'done', '/hooks/done'], [failed, 'error', '/hooks/failed'], [cancelled, 'cancelled', '/hooks/cancelled']];
  const snapshots = new Map();
  for (const [id, status] of runs) snapshots.set(id, await sluice.ended(id, status));

  const delivered = await until('three delivered deliveries', async () => {
    const list = await sluice.deliveries('delivered');
    return list.length === 3 && list;
  }, async () => `${JSON.stringify(await sluice.deliveries())}\n${show(receiver.received)}`);
  // Past the first retry's wait: nothing more comes.
  await sleep(2000);
  assert.equal(receiver.received.length, 3, `exactly one attempt per run\n${show(receiver.received)}`);

  for (const [id, status, hookPath] of runs) {
    const attempts = receiver.received.filter((got) => got.payload?.data?.id === id);
    assert.equal(attempts.length, 1, `one delivery for run ${id}\n${show(receiver.received)}`);
    const [got] = attempts;
    assertVerified(got, id);
    assert.equal(got.path, hookPath);
    const snapshot = snapshots.get(id);
    assert.equal(got.payload.data.status, status);
    assert.ok(snapshot.text.length > 0, JSON.stringify(snapshot));
    assert.equal(got.payload.data.text, snapshot.text, `run ${id}: the whole text`);
    assert.deepEqual(got.payload.data, (await sluice.api('GET', `/api/runs/${id}`)).body, 'data is the run\'s snapshot');
    const delivery = delivered.find((d) => d.run_id === id);
    assert.equal(delivery?.id, got.id, 'the webhook-id is the delivery\'s id');
    assert.equal(delivery.url, `${receiver.base}${hookPath}`);
    assert.equal(delivery.attempts, 1);
    assert.equal(delivery.last_status, 200);
    assert.equal(delivery.next_attempt_at, null);
  }
  assert.equal(new Set(receiver.received.map((got) => got.id)).size, 3, 'one webhook-id per delivery');
});

test('a 500, then no answer within timeout_secs, then a 200: three attempts with one webhook-id, then delivered', { skip }, async (t) => {
  const HOLD_MS = 3000;
  const receiver = await startReceiver((n) => [500, { status: 200, holdMs: HOLD_MS }][n] ?? 200);
  t.after(receiver.close);
  const sluice = await startHooked(t, [receiver.base], 'timeout_secs = 1\nretry_secs = [1, 1, 1]\n');

  const id = await sluice.run('a run whose receiver struggles', { tokens: 5, interval_ms: 10 }, `${receiver.base}/hooks/runs`);
  const snapshot = await sluice.ended(id, 'done');
  const delivery = await until('the delivery delivered', async () => (await sluice.deliveries('delivered')).find((d) => d.run_id === id),
    async () => `${JSON.stringify(await sluice.deliveries())}\n${show(receiver.received)}`);
  await sleep(2000);
  const { received } = receiver;
  assert.equal(received.length, 3, `three attempts\n${show(received)}`);
  for (const got of received) {
    assertVerified(got, id);
    assert.equal(got.id, delivery.id, 'the same webhook-id on every attempt');
    assert.equal(got.body, received[0].body, 'the same body on every attempt');
    assert.equal(got.payload.data.text, snapshot.text);
  }
  assert.deepEqual(received.map((got) => got.answered), [500, 200, 200]);
  // Sluice gave up on the held attempt (it closed the connection) before
  // the receiver's answer was due, and came back without waiting for it.
  const held = received[1];
  assert.ok(held.closedAt !== null && held.closedAt - held.at < HOLD_MS, `the held attempt was dropped by Sluice\n${show(received)}`);
  assert.ok(received[2].at >= held.closedAt, show(received));
  // Each attempt signed afresh: its own timestamp (unix seconds), within the
  // library's 5-minute tolerance, and 1 s waits plus a 1 s timeout apart.
  const stamps = received.map((got) => Number(got.timestamp));
  assert.ok(stamps[0] <= stamps[1] && stamps[1] <= stamps[2] && stamps[0] < stamps[2], `fresh timestamps: ${stamps}`);
  assert.notEqual(received[0].signature, received[2].signature);
  assert.ok(Math.abs(stamps[2] - Date.now() / 1000) < 300);

  assert.equal(delivery.status, 'delivered');
  assert.equal(delivery.attempts, 3, JSON.stringify(delivery));
  assert.equal(delivery.last_status, 200);
  assert.equal(delivery.next_attempt_at, null);
  assert.equal((await sluice.deliveries('failed')).length, 0);
  assert.equal((await sluice.deliveries('pending')).length, 0);
});

test('a 410 stops at once as failed; a retry then delivers it with the same webhook-id', { skip }, async (t) => {
  let answer = 410;
  const receiver = await startReceiver(() => answer);
  t.after(receiver.close);
  const sluice = await startHooked(t, [receiver.base], 'retry_secs = [1, 1, 1]\n');

  const id = await sluice.run('a run whose receiver is retired', { tokens: 5, interval_ms: 10 }, `${receiver.base}/hooks/runs`);
  await sluice.ended(id, 'done');
  const failed = await until('the failed delivery', async () => (await sluice.deliveries('failed')).find((d) => d.run_id === id),
    async () => `${JSON.stringify(await sluice.deliveries())}\n${show(receiver.received)}`);
  assert.equal(failed.attempts, 1, JSON.stringify(failed));
  assert.equal(failed.last_status, 410);
  assert.equal(failed.next_attempt_at, null);
  assert.match(failed.last_error, /410/);
  // Past the waits of retry_secs: no second attempt.
  await sleep(2500);
  assert.equal(receiver.received.length, 1, `one attempt: 410 stops at once\n${show(receiver.received)}`);
  assertVerified(receiver.received[0], id);
  assert.equal(receiver.received[0].id, failed.id);
  assert.equal((await sluice.deliveries('pending')).length, 0);

  answer = 200;
  const retried = await sluice.api('POST', `/api/webhooks/deliveries/${failed.id}/retry`);
  assert.equal(retried.status, 202, JSON.stringify(retried.body));
  const delivered = await until('the retried delivery delivered', async () => (await sluice.deliveries('delivered')).find((d) => d.id === failed.id),
    async () => `${JSON.stringify(await sluice.deliveries())}\n${show(receiver.received)}`);
  assert.equal(receiver.received.length, 2, show(receiver.received));
  const second = receiver.received[1];
  assertVerified(second, id);
  assert.equal(second.id, failed.id, 'the same webhook-id on the retry');
  assert.equal(second.body, receiver.received[0].body);
  assert.equal(delivered.attempts, 2, JSON.stringify(delivered));
  assert.equal(delivered.last_status, 200);
  assert.equal((await sluice.deliveries('failed')).length, 0);
});

/**
 * examples/webhook-receiver.mjs as a child process on a free port. The file
 * is run from a folder of target/e2e whose node_modules is this folder's,
 * where `standardwebhooks` is installed (as a user's app would have it).
 */
async function startExample(t) {
  const dir = path.join(root, 'target/e2e/webhook-receiver-node');
  mkdirSync(dir, { recursive: true });
  const modules = path.join(dir, 'node_modules');
  try {
    symlinkSync(path.join(here, 'node_modules'), modules, 'dir');
  } catch (error) {
    if (error.code !== 'EEXIST') throw error;
  }
  const script = path.join(dir, 'webhook-receiver.mjs');
  copyFileSync(EXAMPLE, script);
  const child = spawn(process.execPath, [script, '0'], {
    env: { ...process.env, SLUICE_WEBHOOK_SECRET: SECRET },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => child.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (data) => { stderr += data; });
  const output = () => `--- receiver stdout ---\n${stdout}\n--- receiver stderr ---\n${stderr}`;
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the receiver did not start\n${output()}`)), DEADLINE_MS);
    child.once('exit', (code) => reject(new Error(`the receiver exited with ${code}\n${output()}`)));
    child.stdout.on('data', (data) => {
      stdout += data;
      const match = stdout.match(/^listening on (http:\/\/127\.0\.0\.1:\d+)\n/);
      if (match) { clearTimeout(timer); resolve(match[1]); }
    });
  });
  return {
    base,
    output,
    stderr: () => stderr,
    /** Its lines after `listening on …`: one per event it handled. */
    lines: () => stdout.split('\n').slice(1).filter(Boolean),
  };
}

test('the example receiver handles each run once, a retried delivery included, and refuses forgeries', { skip }, async (t) => {
  const receiver = await startExample(t);
  // The done run's webhook goes through a proxy that loses the receiver's
  // first answer: Sluice sends it again with the same webhook-id.
  const proxy = await cuttingProxy(receiver.base, '/hooks/', 0);
  t.after(proxy.close);
  const sluice = await startHooked(t, [receiver.base, proxy.base], 'timeout_secs = 10\nretry_secs = [1, 1]\n');
  const hook = `${receiver.base}/hooks/runs`;

  // Forged requests straight to the receiver: all 400, none handled.
  const body = JSON.stringify({ type: 'run.finished', timestamp: new Date().toISOString(), data: { id: 'forged-run', status: 'done', text: 'forged' } });
  const signed = (secret, id, date, payload = body) => ({
    'webhook-id': id,
    'webhook-timestamp': String(Math.floor(date.getTime() / 1000)),
    'webhook-signature': new Webhook(secret).sign(id, date, payload),
  });
  const now = new Date();
  const forged = [
    ['signed with another secret', signed(OTHER_SECRET, 'msg_forged1', now)],
    ['a body other than the one signed', signed(SECRET, 'msg_forged2', now, '{}')],
    ['signed rightly ten minutes ago (a replay)', signed(SECRET, 'msg_forged3', new Date(now.getTime() - 600_000))],
    ['without the webhook headers', {}],
  ];
  for (const [what, headers] of forged) {
    const response = await fetch(hook, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
    assert.equal(response.status, 400, `a forged POST ${what}\n${receiver.output()}`);
  }

  const done = await sluice.run('a run that is done', { tokens: 8, interval_ms: 10 }, `${proxy.base}/hooks/runs`);
  const failed = await sluice.run('a run that fails', { tokens: 20, interval_ms: 10, fail_after: 4 }, hook);
  const cancelled = await sluice.run('a run that is cancelled', { tokens: 2000, interval_ms: 20 }, hook);
  await sluice.cancelMidRun(cancelled);
  const snapshots = new Map();
  for (const [id, status] of [[done, 'done'], [failed, 'error'], [cancelled, 'cancelled']]) {
    snapshots.set(id, await sluice.ended(id, status));
  }

  const deliveries = await until('three delivered deliveries', async () => {
    const list = await sluice.deliveries('delivered');
    return list.length === 3 && list;
  }, async () => `${JSON.stringify(await sluice.deliveries())}\n${receiver.output()}`);
  // The done run's came twice: the receiver's answer to the second, for an
  // id it had, was 200; the others' first answers were 204.
  for (const [id, attempts, lastStatus] of [[done, 2, 200], [failed, 1, 204], [cancelled, 1, 204]]) {
    const delivery = deliveries.find((d) => d.run_id === id);
    assert.deepEqual([delivery?.attempts, delivery?.last_status], [attempts, lastStatus], `run ${id}: ${JSON.stringify(delivery)}\n${receiver.output()}`);
  }

  await until('three lines', () => receiver.lines().length >= 3, receiver.output);
  await sleep(500);
  const lines = receiver.lines();
  assert.equal(lines.length, 3, `one line per run\n${receiver.output()}`);
  const printed = new Map();
  for (const line of lines) {
    let event;
    try { event = JSON.parse(line); } catch { assert.fail(`not JSON: ${line}\n${receiver.output()}`); }
    assert.ok(!printed.has(event.run_id), `run ${event.run_id} handled twice\n${receiver.output()}`);
    printed.set(event.run_id, event);
  }
  for (const [id, snapshot] of snapshots) {
    const event = printed.get(id);
    assert.ok(event, `no line for run ${id}\n${receiver.output()}`);
    assert.equal(event.id, deliveries.find((d) => d.run_id === id).id, 'the webhook-id is the delivery\'s id');
    assert.equal(event.status, snapshot.status);
    assert.ok(snapshot.text.length > 0);
    assert.equal(event.text, snapshot.text, `run ${id}: the whole text`);
  }
  assert.equal(receiver.stderr().match(/^refused: /gm)?.length, forged.length, receiver.output());
});
