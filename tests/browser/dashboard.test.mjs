// The dashboard in Debian's Chromium: start, watch, resume, cancel, share,
// stay within four streams, and show it all without console errors.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { cuttingProxy, startSluice, tokenText, useSluiceAndBrowser } from './helpers.mjs';

const ctx = useSluiceAndBrowser('the dashboard tests');
const skip = ctx.skip;

const SHOTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../target/e2e');

// Counts the EventSources the page holds open at once.
const COUNT_STREAMS = `(() => {
  const Native = window.EventSource;
  const stats = { open: 0, max: 0, created: 0 };
  window.__streams = stats;
  window.EventSource = class extends Native {
    constructor(url, init) {
      super(url, init);
      this.__live = true;
      stats.created += 1;
      stats.open += 1;
      stats.max = Math.max(stats.max, stats.open);
      this.addEventListener('error', () => { if (this.readyState === Native.CLOSED) this.__end(); });
    }
    __end() { if (this.__live) { this.__live = false; stats.open -= 1; } }
    close() { this.__end(); super.close(); }
  };
})();`;

/** A page of `origin` whose console errors and page errors are collected. */
async function openDashboard(origin, { hash = '', colorScheme = 'light', viewport } = {}) {
  const page = await ctx.browser.newPage({ colorScheme, viewport: viewport ?? { width: 1280, height: 800 } });
  const errors = [];
  page.on('console', (msg) => msg.type() === 'error' && errors.push(msg.text()));
  page.on('pageerror', (error) => errors.push(`pageerror: ${error}`));
  await page.addInitScript(COUNT_STREAMS);
  await page.goto(`${origin}/${hash}`);
  await page.waitForSelector('#param-tokens');
  return { page, errors };
}

/** Fills the form and starts a run with Ctrl+Enter; returns its id. */
async function startRun(page, { prompt, tokens, interval }) {
  const tabsBefore = await page.locator('[role=tab]').count();
  await page.getByLabel('Prompt').fill(prompt);
  if (tokens !== undefined) await page.fill('#param-tokens', String(tokens));
  if (interval !== undefined) await page.fill('#param-interval_ms', String(interval));
  await page.getByLabel('Prompt').press('Control+Enter');
  await page.waitForFunction((n) => document.querySelectorAll('[role=tab]').length > n, tabsBefore);
  return page.evaluate(() => location.hash.split('/').pop());
}

const status = (page, id) => page.getAttribute(`#pane-${id} [data-role=status]`, 'data-status');
const output = (page, id) => page.textContent(`#pane-${id} [data-role=output]`);
const stat = (page, id, name) => page.textContent(`#pane-${id} [data-stat=${name}]`);

async function waitStatus(page, id, wanted, timeout = 20000) {
  await page.waitForFunction(
    ([runId, s]) => document.querySelector(`#pane-${runId} [data-role=status]`)?.dataset.status === s,
    [id, wanted],
    { timeout },
  );
}

/** The sim's text for a prompt, fetched without the page. */
async function simText(prompt, tokens) {
  const query = new URLSearchParams({ prompt, tokens: String(tokens), interval_ms: '0' });
  return tokenText(await (await fetch(`${ctx.sluice.base}/api/agent/stream?${query}`)).text());
}

async function snapshot(id) {
  return (await fetch(`${ctx.sluice.base}/api/runs/${id}`)).json();
}

test('a run started from the form renders the sim text, token by token', { skip }, async () => {
  const { page, errors } = await openDashboard(ctx.sluice.base);
  const params = await page.$$eval('#params input', (inputs) => inputs.map((i) => [i.name, i.value]));
  assert.deepEqual(params, [['tokens', ''], ['interval_ms', ''], ['seed', ''], ['fail_after', '']],
    'the form starts from the agent defaults, with no seed');
  const id = await startRun(page, { prompt: 'dashboard one', tokens: 40, interval: 50 });
  await page.waitForFunction((runId) => {
    const text = document.querySelector(`#pane-${runId} [data-role=output]`)?.textContent ?? '';
    return text.length > 0 && document.querySelector(`#pane-${runId} [data-role=status]`)?.dataset.status === 'streaming';
  }, id);
  await waitStatus(page, id, 'done');
  assert.equal(await output(page, id), await simText('dashboard one', 40));
  assert.equal(await stat(page, id, 'tokens'), '40');
  assert.equal(await stat(page, id, 'reconnects'), '0');
  assert.notEqual(await stat(page, id, 'ttft'), '—');
  const item = page.locator(`.run-item[data-run-id="${id}"]`);
  await item.waitFor();
  assert.match(await item.textContent(), new RegExp(`dashboard one[\\s\\S]*${id.slice(0, 8)}`));
  assert.equal(await page.evaluate(() => window.__streams.open), 0, 'the stream is closed on done');
  assert.deepEqual(errors, []);
  await page.close();
});

test('a connection cut mid-stream yields the complete text once, and the reconnect is shown', { skip }, async () => {
  const proxy = await cuttingProxy(ctx.sluice.base, '/events', 1500);
  try {
    const { page, errors } = await openDashboard(proxy.base);
    const id = await startRun(page, { prompt: 'dashboard cut', tokens: 60, interval: 20 });
    await waitStatus(page, id, 'done');
    assert.equal(await output(page, id), await simText('dashboard cut', 60), 'complete, nothing twice');
    assert.equal(await stat(page, id, 'reconnects'), '1');
    assert.match(await page.textContent(`#pane-${id} [data-role=note]`), /resumed/);
    // Chromium reports the cut itself as a network error; nothing else may appear.
    assert.deepEqual(errors.filter((e) => !e.includes('net::ERR_')), []);
    await page.close();
  } finally {
    proxy.close();
  }
});

test('the cancel button cancels the run', { skip }, async () => {
  const { page, errors } = await openDashboard(ctx.sluice.base);
  const id = await startRun(page, { prompt: 'dashboard cancel', tokens: 1000, interval: 30 });
  await page.waitForFunction((runId) => Number(document.querySelector(`#pane-${runId} [data-stat=tokens]`)?.textContent) >= 3, id);
  await page.click(`#pane-${id} [data-role=cancel]`);
  await waitStatus(page, id, 'cancelled');
  const snap = await snapshot(id);
  assert.equal(snap.status, 'cancelled');
  assert.equal(await output(page, id), snap.text);
  assert.ok(snap.usage.output_tokens < 1000);
  assert.ok(await page.isDisabled(`#pane-${id} [data-role=cancel]`));
  assert.deepEqual(errors, []);
  await page.close();
});

test('a shared run URL opened in a second page shows the same text', { skip }, async () => {
  const first = await openDashboard(ctx.sluice.base);
  const id = await startRun(first.page, { prompt: 'dashboard share', tokens: 50, interval: 20 });
  const url = await first.page.getAttribute(`#pane-${id} [data-role=share]`, 'href');
  assert.equal(url, `${ctx.sluice.base}/#/runs/${id}`);
  const second = await ctx.browser.newPage();
  const secondErrors = [];
  second.on('console', (msg) => msg.type() === 'error' && secondErrors.push(msg.text()));
  await second.goto(url);
  await waitStatus(first.page, id, 'done');
  await waitStatus(second, id, 'done');
  const expected = await simText('dashboard share', 50);
  assert.equal(await output(first.page, id), expected);
  assert.equal(await output(second, id), expected);
  assert.equal(await second.textContent(`#pane-${id} [data-role=prompt]`), 'dashboard share');
  assert.deepEqual([...first.errors, ...secondErrors], []);
  await first.page.close();
  await second.close();
});

test('ten open runs never hold more than four streams, and each still completes exactly', { skip }, async () => {
  const { page, errors } = await openDashboard(ctx.sluice.base);
  const ids = [];
  for (let i = 0; i < 10; i += 1) {
    ids.push(await startRun(page, { prompt: `dashboard ten ${i}`, tokens: 200, interval: 40 }));
  }
  const paused = await page.$$eval('[data-role=status][data-status=paused]', (els) => els.length);
  assert.ok(paused >= 6, `runs beyond four are paused (${paused})`);
  for (const id of ids) {
    await page.click(`#tab-${id}`);
    await page.waitForFunction(
      (runId) => ['done', 'cancelled', 'error'].includes(document.querySelector(`#pane-${runId} [data-role=status]`)?.dataset.status),
      id,
      { timeout: 20000 },
    );
    assert.equal(await status(page, id), 'done');
    assert.equal(await output(page, id), (await snapshot(id)).text, `run ${id}`);
  }
  const streams = await page.evaluate(() => window.__streams);
  assert.ok(streams.max <= 4, `at most four EventSources at once, saw ${streams.max}`);
  assert.ok(streams.created >= 4);
  assert.deepEqual(errors, []);
  await page.screenshot({ path: path.join(SHOTS, 'dashboard-ten-runs.png') });
  await page.close();
});

test('an evicted run falls back to its snapshot and says it is gone', { skip }, async () => {
  // A second gateway whose runs are evicted one second after they end.
  const config = path.join(SHOTS, 'retention-1s.toml');
  mkdirSync(SHOTS, { recursive: true });
  writeFileSync(config, '[runs]\nretention_secs = 1\n');
  const brief = await startSluice(['--config', config]);
  try {
    const created = await (await fetch(`${brief.base}/api/runs`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'gone soon', params: { tokens: 3, interval_ms: 0 } }),
    })).json();
    let code = 200;
    for (let i = 0; i < 50 && code === 200; i += 1) {
      await new Promise((r) => setTimeout(r, 100));
      code = (await fetch(`${brief.base}/api/runs/${created.id}`)).status;
    }
    assert.equal(code, 410);
    const { page, errors } = await openDashboard(brief.base, { hash: `#/runs/${created.id}` });
    await waitStatus(page, created.id, 'error');
    assert.match(await page.textContent(`#pane-${created.id} [data-role=note]`), /evicted/);
    assert.equal(await page.evaluate(() => window.__streams.created), 0, 'no stream is opened for a gone run');
    // The browser logs the 410 of the snapshot request itself; nothing else may appear.
    assert.deepEqual(errors.filter((e) => !e.includes('410')), []);
    await page.close();
  } finally {
    await brief.stop();
  }
});

test('the output follows new text until the reader scrolls up, and again once back at the end', { skip }, async () => {
  const { page, errors } = await openDashboard(ctx.sluice.base, { viewport: { width: 1280, height: 700 } });
  const id = await startRun(page, { prompt: 'dashboard scroll', tokens: 3000, interval: 5 });
  const box = `#pane-${id} [data-role=output]`;
  const geometry = () => page.$eval(box, (o) => ({ top: o.scrollTop, bottom: o.scrollHeight - o.clientHeight }));
  await page.waitForFunction((sel) => {
    const o = document.querySelector(sel);
    return o && o.scrollHeight > o.clientHeight + 200;
  }, box);
  let g = await geometry();
  assert.ok(g.bottom - g.top <= 8, `following the end: ${JSON.stringify(g)}`);
  await page.$eval(box, (o) => { o.scrollTop = 0; o.dispatchEvent(new Event('scroll')); });
  const tokensBefore = Number(await stat(page, id, 'tokens'));
  await page.waitForFunction(([runId, n]) => Number(document.querySelector(`#pane-${runId} [data-stat=tokens]`).textContent) > n + 40, [id, tokensBefore]);
  g = await geometry();
  assert.equal(g.top, 0, 'the reader stays where they scrolled');
  await page.$eval(box, (o) => { o.scrollTop = o.scrollHeight; o.dispatchEvent(new Event('scroll')); });
  const heightBefore = await page.$eval(box, (o) => o.scrollHeight);
  await page.waitForFunction(([sel, h]) => document.querySelector(sel).scrollHeight > h + 40, [box, heightBefore]);
  g = await geometry();
  assert.ok(g.bottom - g.top <= 8, `following again: ${JSON.stringify(g)}`);
  await page.click(`#pane-${id} [data-role=cancel]`);
  await waitStatus(page, id, 'cancelled');
  assert.deepEqual(errors, []);
  await page.close();
});

test('a terminal error closes the stream: no reconnect loop', { skip }, async () => {
  const { page, errors } = await openDashboard(ctx.sluice.base);
  await page.fill('#param-fail_after', '5');
  const id = await startRun(page, { prompt: 'dashboard failure', tokens: 20, interval: 10 });
  await page.fill('#param-fail_after', '');
  await waitStatus(page, id, 'error');
  assert.match(await page.textContent(`#pane-${id} [data-role=note]`), /simulated_failure/);
  assert.equal(await stat(page, id, 'tokens'), '5');
  await page.waitForTimeout(1500);
  const streams = await page.evaluate(() => window.__streams);
  assert.equal(streams.open, 0);
  assert.equal(streams.created, 1, 'the EventSource was closed, not left to reconnect');
  assert.deepEqual(errors, []);
  await page.close();
});

test('screenshots: light and dark, wide and phone', { skip }, async () => {
  mkdirSync(SHOTS, { recursive: true });
  await fetch(`${ctx.sluice.base}/api/agent/stream?prompt=${encodeURIComponent('a run started with curl -N')}&tokens=30&interval_ms=0`).then((r) => r.text());
  for (const [name, colorScheme, viewport] of [
    ['dashboard', 'light', { width: 1280, height: 800 }],
    ['dashboard-dark', 'dark', { width: 1280, height: 800 }],
    ['dashboard-phone', 'light', { width: 390, height: 844 }],
  ]) {
    const { page, errors } = await openDashboard(ctx.sluice.base, { colorScheme, viewport });
    if (name === 'dashboard') {
      // Some traffic from elsewhere, so the throughput chart has a history to show.
      for (const [tokens, interval] of [[300, 20], [200, 35]]) {
        await fetch(`${ctx.sluice.base}/api/runs`, {
          method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt: `background ${tokens}`, params: { tokens, interval_ms: interval } }),
        });
      }
      await page.waitForTimeout(6000);
    }
    const id = await startRun(page, { prompt: 'Explain how Server-Sent Events resume after a dropped connection', tokens: 400, interval: 25 });
    await page.waitForFunction((runId) => Number(document.querySelector(`#pane-${runId} [data-stat=tokens]`)?.textContent) >= 80, id);
    await page.waitForTimeout(1200);
    await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
    await page.click(`#pane-${id} [data-role=cancel]`);
    await waitStatus(page, id, 'cancelled');
    assert.deepEqual(errors, []);
    await page.close();
  }
});
