// The dashboard's webhooks panel in Debian's Chromium (SPEC 7, 13): a run's
// webhook that a receiver refused with 410 is listed as failed; Retry sends
// it again with the same webhook-id and, once delivered, it leaves the list.
// A gateway with webhooks off shows no panel.
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { Webhook } from 'standardwebhooks';
import { CHROMIUM, CHROMIUM_ARGS, missing, startSluice } from './helpers.mjs';

const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const SHOTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../target/e2e');

const why = missing();
if (why && process.env.CI === 'true') throw new Error(`the webhooks dashboard tests cannot run under CI=true: ${why}`);
if (why) console.error(`\n!!! SKIPPING the webhooks dashboard tests: ${why} !!!\n`);
const skip = why ?? false;

/** Receives run webhooks on 127.0.0.1, answering `answer`; keeps each verified one. */
const receiver = { answer: 410, received: [], server: null, base: null };
let hooked; // a Sluice with webhooks on
let plain; // one with webhooks off
let browser;

before(async () => {
  if (skip) return;
  const webhook = new Webhook(SECRET);
  receiver.server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      let payload = null;
      try { payload = webhook.verify(body, request.headers); } catch (error) { payload = { unverified: error.message }; }
      receiver.received.push({ id: request.headers['webhook-id'], path: request.url, payload, answered: receiver.answer });
      response.writeHead(receiver.answer).end();
    });
  });
  await new Promise((resolve) => receiver.server.listen(0, '127.0.0.1', resolve));
  receiver.base = `http://127.0.0.1:${receiver.server.address().port}`;
  mkdirSync(SHOTS, { recursive: true });
  const config = path.join(SHOTS, 'webhooks-dashboard.toml');
  writeFileSync(config, `[webhooks]
secret = "${SECRET}"
allowed_urls = ["${receiver.base}/hooks/"]
retry_secs = [1]
timeout_secs = 2
`);
  hooked = await startSluice(['--config', config]);
  plain = await startSluice();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
  await hooked?.stop();
  await plain?.stop();
  receiver.server?.close();
});

/** A page of `origin` whose console errors and page errors are collected. */
async function openDashboard(origin, { colorScheme = 'light' } = {}) {
  const page = await browser.newPage({ colorScheme, viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('console', (msg) => msg.type() === 'error' && errors.push(msg.text()));
  page.on('pageerror', (error) => errors.push(`pageerror: ${error}`));
  await page.goto(`${origin}/`);
  await page.waitForSelector('#param-tokens');
  return { page, errors };
}

async function getJson(url, init) {
  const response = await fetch(url, init);
  return { status: response.status, body: await response.json() };
}

/** Starts a short run on `hooked` whose webhook goes to the receiver; returns its id. */
async function hookedRun(prompt) {
  const { status, body } = await getJson(`${hooked.base}/api/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt, params: { tokens: 20, interval_ms: 50 }, webhook_url: `${receiver.base}/hooks/${prompt}` }),
  });
  assert.equal(status, 201, JSON.stringify(body));
  return body.id;
}

const deliveries = async (status) => (await getJson(`${hooked.base}/api/webhooks/deliveries?status=${status}&limit=1000`)).body.deliveries;

async function until(what, check, timeout = 15000) {
  const end = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test('a delivery refused with 410 is listed as failed; Retry sends it again, and once delivered it leaves the list', { skip }, async () => {
  const { page, errors } = await openDashboard(hooked.base);
  const panel = page.getByRole('region', { name: 'Webhooks' });
  await panel.waitFor();
  await panel.getByText('No failed deliveries.').waitFor();

  receiver.answer = 410;
  const runId = await hookedRun('first');
  // Listed once the run ends (the page looks again after a run ends, and every 5 s).
  const row = panel.locator('li.hook-item', { hasText: runId.slice(0, 8) });
  await row.waitFor({ timeout: 15000 });
  const deliveryId = await row.getAttribute('data-delivery-id');
  assert.match(deliveryId, /^msg_/);
  assert.match(await row.textContent(), /410/);
  assert.match(await row.textContent(), /1 attempt\b/);
  assert.equal(await row.locator('[data-role=state]').textContent(), 'failed');
  assert.ok((await row.textContent()).includes(`${receiver.base}/hooks/first`));

  assert.equal(receiver.received.length, 1, 'one attempt: 410 stops at once');
  const [first] = receiver.received;
  assert.equal(first.id, deliveryId);
  assert.equal(first.payload.type, 'run.finished', JSON.stringify(first.payload));
  assert.equal(first.payload.data.id, runId);
  const listed = (await deliveries('failed')).find((d) => d.id === deliveryId);
  assert.equal(listed.attempts, 1);
  assert.equal(listed.last_status, 410);

  // The run id opens the run in the viewer, as the runs list does.
  await row.getByRole('button', { name: runId.slice(0, 8) }).click();
  await page.waitForFunction((id) => document.querySelector(`#pane-${id} [data-role=status]`)?.dataset.status === 'done', runId);
  assert.equal(await page.evaluate(() => location.hash), `#/runs/${runId}`);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-webhooks.png') });

  receiver.answer = 200;
  await row.getByRole('button', { name: 'Retry' }).click();
  await until('the second attempt', () => receiver.received.length >= 2);
  const second = receiver.received[1];
  assert.equal(second.id, deliveryId, 'the same webhook-id on the retry');
  assert.equal(second.payload.data.id, runId, JSON.stringify(second.payload));
  assert.equal(second.answered, 200);

  await row.waitFor({ state: 'detached', timeout: 10000 });
  await panel.getByText(`Delivery ${deliveryId.slice(0, 12)} was delivered.`).waitFor();
  await panel.getByText('No failed deliveries.').waitFor();
  const delivered = (await deliveries('delivered')).find((d) => d.id === deliveryId);
  assert.equal(delivered?.status, 'delivered');
  assert.equal(delivered.attempts, 2);
  assert.equal(delivered.last_status, 200);
  assert.equal((await deliveries('failed')).some((d) => d.id === deliveryId), false);
  assert.equal(receiver.received.length, 2, 'nothing sent after delivery');
  assert.deepEqual(errors, []);
  await page.close();
});

test('a retry the gateway refuses shows its error in the panel', { skip }, async () => {
  receiver.answer = 410;
  const runId = await hookedRun('second');
  const failed = await until('the failed delivery', async () => (await deliveries('failed')).find((d) => d.run_id === runId));

  const { page, errors } = await openDashboard(hooked.base, { colorScheme: 'dark' });
  const panel = page.getByRole('region', { name: 'Webhooks' });
  const row = panel.locator(`li[data-delivery-id="${failed.id}"]`);
  await row.waitFor();
  // The page keeps seeing the delivery as failed while it is sent again behind its back.
  const stale = await getJson(`${hooked.base}/api/webhooks/deliveries?status=failed&limit=100`);
  await page.route('**/api/webhooks/deliveries?*', (route) => route.fulfill({ json: stale.body }));
  receiver.answer = 200;
  const retried = await getJson(`${hooked.base}/api/webhooks/deliveries/${failed.id}/retry`, { method: 'POST' });
  assert.equal(retried.status, 202);
  assert.equal(retried.body.status, 'pending');
  await until('the delivery', async () => (await deliveries('delivered')).some((d) => d.id === failed.id));

  await row.getByRole('button', { name: 'Retry' }).click();
  const alert = panel.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.textContent(), /^Retry of msg_\w+ failed: the delivery is delivered; only a failed delivery is sent again$/);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-webhooks-dark.png') });
  await page.unroute('**/api/webhooks/deliveries?*');
  await row.waitFor({ state: 'detached', timeout: 10000 });
  assert.ok(await alert.isVisible(), 'the refused retry stays shown');
  // The browser logs the 409 of the refused request itself; nothing else may appear.
  assert.deepEqual(errors.filter((e) => !e.includes('409')), []);
  await page.close();
});

test('with webhooks off the panel is not shown', { skip }, async () => {
  const { page, errors } = await openDashboard(plain.base);
  await page.waitForFunction(() => window.sluice?.webhooks?.enabled === false);
  assert.equal(await page.isHidden('#webhooks'), true);
  assert.equal(await page.getByRole('region', { name: 'Webhooks' }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Retry' }).count(), 0);
  assert.deepEqual(errors, []);
  await page.close();
});
