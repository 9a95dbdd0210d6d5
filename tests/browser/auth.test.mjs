// The dashboard with auth on: it asks for a key once, trades it for the
// session cookie, and then works fully (EventSource sends the cookie itself).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tokenText, useSluiceAndBrowser } from './helpers.mjs';

const KEY = 'dashboard-test-key';
const ctx = useSluiceAndBrowser('the auth dashboard test', {
  config: `[[auth.keys]]\nname = "dash"\nkey = "${KEY}"\n`,
});

test('the dashboard asks for a key, then starts and streams runs with the session cookie', { skip: ctx.skip }, async () => {
  const page = await ctx.browser.newPage();
  const errors = [];
  page.on('console', (msg) => msg.type() === 'error' && errors.push(msg.text()));
  page.on('pageerror', (error) => errors.push(`pageerror: ${error}`));
  await page.goto(`${ctx.sluice.base}/`);
  const dialog = page.getByRole('dialog', { name: 'Sign in' });
  await dialog.waitFor();
  await page.getByLabel('API key').fill('wrong-key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('That key is not valid.').waitFor();
  await page.getByLabel('API key').fill(KEY);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await dialog.waitFor({ state: 'hidden' });
  await page.waitForSelector('#param-tokens');

  await page.getByLabel('Prompt').fill('signed in');
  await page.fill('#param-tokens', '25');
  await page.fill('#param-interval_ms', '10');
  await page.getByLabel('Prompt').press('Control+Enter');
  await page.waitForFunction(() => location.hash.startsWith('#/runs/'));
  const id = await page.evaluate(() => location.hash.split('/').pop());
  await page.waitForFunction(
    (runId) => document.querySelector(`#pane-${runId} [data-role=status]`)?.dataset.status === 'done',
    id,
  );
  const expected = tokenText(await (await fetch(
    `${ctx.sluice.base}/api/agent/stream?prompt=signed%20in&tokens=25&interval_ms=0`,
    { headers: { authorization: `Bearer ${KEY}` } },
  )).text());
  assert.equal(await page.textContent(`#pane-${id} [data-role=output]`), expected);
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === 'sluice_session');
  assert.ok(session?.httpOnly, 'an HttpOnly session cookie');
  assert.equal(session.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '', 'page scripts cannot read it');
  // The browser logs the 401s that made the page ask for a key; nothing else may appear.
  assert.deepEqual(errors.filter((e) => !e.includes('401')), []);
  await page.close();
});
