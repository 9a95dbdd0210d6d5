// A browser's own EventSource against sluice: it reads the stream as it is,
// and its automatic reconnect resumes the same run instead of starting one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cuttingProxy, tokenText, useSluiceAndBrowser } from './helpers.mjs';

const ctx = useSluiceAndBrowser('the EventSource tests');
const skip = ctx.skip;

/** Runs `new EventSource(path)` in a page of `origin` until done or error. */
async function readInBrowser(origin, path) {
  const page = await ctx.browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  await page.goto(`${origin}/healthz`);
  const seen = await page.evaluate((url) => new Promise((resolve) => {
    const out = { text: '', ids: [], opens: 0, connectionErrors: 0, end: null };
    const source = new EventSource(url);
    const timer = setTimeout(() => { source.close(); resolve(out); }, 20000);
    source.onopen = () => { out.opens += 1; };
    source.addEventListener('run', (e) => out.ids.push(e.lastEventId));
    source.addEventListener('token', (e) => {
      out.ids.push(e.lastEventId);
      out.text += JSON.parse(e.data).text;
    });
    const finish = (name) => (e) => {
      if (name === 'error' && !e.data) { out.connectionErrors += 1; return; }
      out.ids.push(e.lastEventId);
      out.end = { event: name, data: JSON.parse(e.data) };
      clearTimeout(timer);
      source.close();
      resolve(out);
    };
    source.addEventListener('done', finish('done'));
    source.addEventListener('error', finish('error'));
  }), path);
  await page.close();
  return { ...seen, pageErrors };
}

function assertContiguous(ids) {
  const run = ids[0].split(':')[0];
  ids.forEach((id, i) => assert.equal(id, `${run}:${i + 1}`));
  return run;
}

test('EventSource reads the one-shot stream as it is', { skip }, async () => {
  const seen = await readInBrowser(ctx.sluice.base, '/api/agent/stream?prompt=browser&tokens=20&interval_ms=5');
  assert.equal(seen.end.event, 'done');
  assert.equal(seen.end.data.finish_reason, 'stop');
  assert.equal(seen.opens, 1);
  assert.equal(seen.ids.length, 22);
  assertContiguous(seen.ids);
  const body = await (await fetch(`${ctx.sluice.base}/api/agent/stream?prompt=browser&tokens=20&interval_ms=0`)).text();
  assert.equal(seen.text, tokenText(body));
  assert.deepEqual(seen.pageErrors, []);
});

test('a connection cut mid-event is resumed by the browser on the same run', { skip }, async () => {
  const proxy = await cuttingProxy(ctx.sluice.base, '/api/agent/stream', 1200);
  try {
    const prompt = `cut-${Date.now()}`;
    const seen = await readInBrowser(proxy.base, `/api/agent/stream?prompt=${prompt}&tokens=30&interval_ms=20`);
    assert.equal(seen.end?.event, 'done');
    assert.equal(seen.opens, 2, 'one reconnect');
    assert.equal(seen.connectionErrors, 1);
    assert.equal(seen.ids.length, 32, 'every event once');
    const run = assertContiguous(seen.ids);
    const { runs } = await (await fetch(`${ctx.sluice.base}/api/runs`)).json();
    const started = runs.filter((r) => r.prompt === prompt);
    assert.deepEqual(started.map((r) => r.id), [run], 'the reconnect started no second run');
    const body = await (await fetch(`${ctx.sluice.base}/api/agent/stream?prompt=${prompt}&tokens=30&interval_ms=0`)).text();
    assert.equal(seen.text, tokenText(body), 'text identical to an uninterrupted run');
  } finally {
    proxy.close();
  }
});

test('a terminal error event closes the stream without a reconnect loop', { skip }, async () => {
  const seen = await readInBrowser(ctx.sluice.base, '/api/agent/stream?tokens=10&fail_after=4&interval_ms=0');
  assert.equal(seen.end.event, 'error');
  assert.equal(seen.end.data.code, 'simulated_failure');
  assert.equal(seen.opens, 1);
  assert.equal(seen.ids.length, 6);
});
