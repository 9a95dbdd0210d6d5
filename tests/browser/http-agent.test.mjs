// kind = "http" against real applications: a genuine AI SDK route
// (streamText + toUIMessageStreamResponse from the `ai` package) and the
// seed's GET route handler, each served as Next.js would call it. The AI SDK
// route checks Sluice's signature with the official `standardwebhooks`
// package, which Sluice did not write.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Webhook } from 'standardwebhooks';
import { POST as aiSdkRoute, POSTWithTools, WORDS } from './apps/ai-sdk-route.mjs';
import { CHUNKS, GET as seedRoute } from './apps/seed-route.mjs';
import { serveRoutes } from './apps/serve.mjs';
import { missing, startSluice } from './helpers.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const why = missing();
if (why && process.env.CI === 'true') throw new Error(`the http-agent tests cannot run under CI=true: ${why}`);
if (why) console.error(`\n!!! SKIPPING the http-agent tests: ${why} !!!\n`);
const skip = why ?? false;

const verified = [];
let app;
let sluice;

before(async () => {
  if (skip) return;
  const webhook = new Webhook(SECRET);
  app = await serveRoutes({
    // The application checks the signature before it runs its own route.
    'POST /api/chat': async (request) => {
      const body = await request.text();
      try {
        webhook.verify(body, Object.fromEntries(request.headers));
        verified.push(request.headers.get('webhook-id'));
      } catch (error) {
        return new Response(JSON.stringify({ error: { message: `bad signature: ${error.message}` } }), { status: 401 });
      }
      return aiSdkRoute(new Request(request.url, { method: 'POST', headers: request.headers, body }));
    },
    'GET /api/agent': seedRoute,
    'POST /api/chat-tools': POSTWithTools,
  });
  const dir = path.join(root, 'target/e2e');
  mkdirSync(dir, { recursive: true });
  const config = path.join(dir, 'http-agent.toml');
  writeFileSync(config, `
[agents.aisdk]
kind = "http"
url = "${app.base}/api/chat"
signing_secret_env = "SLUICE_E2E_SIGNING_SECRET"

[agents.tools]
kind = "http"
url = "${app.base}/api/chat-tools"

[agents.seed]
kind = "http"
method = "GET"
url = "${app.base}/api/agent"
`);
  process.env.SLUICE_E2E_SIGNING_SECRET = SECRET;
  sluice = await startSluice(['--config', config]);
});

after(async () => {
  await sluice?.stop();
  await app?.close();
});

/** A whole SSE response as [{ id, event, data }]. */
async function read(url) {
  const response = await fetch(url);
  assert.equal(response.status, 200);
  const text = await response.text();
  return text.split('\n\n').filter((block) => block.includes('data:')).map((block) => {
    const field = (name) => block.split('\n').find((line) => line.startsWith(`${name}: `))?.slice(name.length + 2);
    return { id: field('id'), event: field('event'), data: JSON.parse(field('data')) };
  });
}

const tokens = (events) => events.filter((e) => e.event === 'token').map((e) => e.data.text);

test('a genuine AI SDK route streams through Sluice, signed requests verified by standardwebhooks', { skip }, async () => {
  const created = await fetch(`${sluice.base}/api/runs`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      agent: 'aisdk',
      messages: [
        { role: 'user', content: 'Hello' },
        { role: 'assistant', content: 'Hi!' },
        { role: 'user', content: 'Tell me about Sluice' },
      ],
    }),
  });
  assert.equal(created.status, 201);
  const { id, events_url: eventsUrl } = await created.json();
  const events = await read(`${sluice.base}${eventsUrl}`);
  assert.deepEqual(tokens(events), WORDS, 'every text-delta of the real UI message stream, in order, é✓ whole');
  const last = events.at(-1);
  assert.equal(last.event, 'done');
  assert.equal(last.data.finish_reason, 'stop');
  assert.deepEqual(events.map((e) => e.id), events.map((_, i) => `${id}:${i + 1}`), 'contiguous ids');
  assert.deepEqual(verified, [id], 'the application verified the signature of the one request, webhook-id = run id');
  const request = app.seen.find((r) => r.url.endsWith('/api/chat'));
  const body = JSON.parse(request.body);
  assert.equal(body.prompt, 'Tell me about Sluice');
  assert.equal(body.messages.length, 3);
  assert.equal(request.headers['x-run-id'], id);
  const snapshot = await (await fetch(`${sluice.base}/api/runs/${id}`)).json();
  assert.equal(snapshot.text, WORDS.join(''));
});

test("the seed's GET route handler streams through Sluice unchanged", { skip }, async () => {
  const events = await read(`${sluice.base}/api/agent/stream?agent=seed&prompt=a%20story`);
  assert.deepEqual(tokens(events), CHUNKS);
  assert.equal(events.at(-1).event, 'done');
  assert.equal(events.at(-1).data.finish_reason, 'stop', 'a clean end of an SSE body is done stop');
  const request = app.seen.find((r) => r.url.includes('/api/agent?'));
  const query = new URL(request.url).searchParams;
  assert.equal(query.get('prompt'), 'a story');
  assert.equal(query.get('run_id'), events[0].data.run_id);
});

test('reasoning, a tool call and its result from a real AI SDK route map to Sluice events', { skip }, async () => {
  const events = await read(`${sluice.base}/api/agent/stream?agent=tools&prompt=${encodeURIComponent('Weather in Paris?')}`);
  const named = (name) => events.filter((e) => e.event === name).map((e) => e.data);
  assert.deepEqual(named('reasoning'), [{ text: 'The user wants the weather.' }]);
  assert.deepEqual(named('tool_call'), [
    { id: 'call-1', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
  ]);
  assert.deepEqual(named('tool_result'), [{ id: 'call-1', content: { city: 'Paris', temperature: 21 } }]);
  assert.equal(events.at(-1).event, 'done');
  assert.equal(events.at(-1).data.finish_reason, 'tool-calls', "the finish chunk's own reason");
});
