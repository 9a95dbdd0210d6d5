// format=ai-sdk and the AI SDK chat transport (SPEC 11.1, 11.3), read by
// the `ai` package's own code, which Sluice did not write: its SSE parser
// with its UI message chunk schema, readUIMessageStream to build the message,
// DefaultChatTransport (send, cut, reconnect, stop), and the Chat that
// useChat runs (AbstractChat with an in-memory state: a page reload resumes).
// The last test puts the AI SDK's own chat route (streamText +
// toUIMessageStreamResponse) behind Sluice as an `http` agent, body = "request".
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { AbstractChat, DefaultChatTransport, parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema } from 'ai';
import { CHAT_WORDS, POST as chatRoute, model as chatModel } from './apps/ai-sdk-chat-route.mjs';
import { POSTWithTools as toolsRoute } from './apps/ai-sdk-route.mjs';
import { serveRoutes } from './apps/serve.mjs';
import { cuttingProxy, missing, startSluice } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const why = missing();
if (why && process.env.CI === 'true') throw new Error(`the ai-sdk tests cannot run under CI=true: ${why}`);
if (why) console.error(`\n!!! SKIPPING the ai-sdk tests: ${why} !!!\n`);
const skip = why ?? false;

const KEY_A = 'ai-sdk-test-key-a';
const KEY_B = 'ai-sdk-test-key-b';

let app;
let sluice;
let secured;

function writeConfig(name, text) {
  const dir = path.join(root, 'target/e2e');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  writeFileSync(file, text);
  return file;
}

before(async () => {
  if (skip) return;
  app = await serveRoutes({ 'POST /api/chat': chatRoute, 'POST /api/chat-tools': toolsRoute });
  sluice = await startSluice(['--config', writeConfig('ai-sdk.toml', `
[server]
keep_alive_secs = 1

[agents.app]
kind = "http"
url = "${app.base}/api/chat"
body = "request"

[agents.tools]
kind = "http"
url = "${app.base}/api/chat-tools"

[agents.events]
kind = "command"
command = [${JSON.stringify(process.execPath)}, ${JSON.stringify(path.join(here, 'apps/events-agent.mjs'))}]
protocol = "jsonl"
`)]);
  secured = await startSluice(['--config', writeConfig('ai-sdk-keys.toml', `
[[auth.keys]]
name = "a"
key = "${KEY_A}"

[[auth.keys]]
name = "b"
key = "${KEY_B}"
`)]);
});

after(async () => {
  await secured?.stop();
  await sluice?.stop();
  await app?.close();
});

// ---------------------------------------------------------------- helpers

/**
 * The fields the UI message stream protocol defines for each chunk type
 * Sluice sends: AI SDK 5's strict schema refuses any other.
 */
const FIELDS = {
  start: ['type', 'messageId', 'messageMetadata'],
  'start-step': ['type'],
  'text-start': ['type', 'id', 'providerMetadata'],
  'text-delta': ['type', 'id', 'delta', 'providerMetadata'],
  'text-end': ['type', 'id', 'providerMetadata'],
  'finish-step': ['type'],
  finish: ['type', 'finishReason', 'messageMetadata'],
  abort: ['type', 'reason'],
  error: ['type', 'errorText'],
  'reasoning-start': ['type', 'id', 'providerMetadata'],
  'reasoning-delta': ['type', 'id', 'delta', 'providerMetadata'],
  'reasoning-end': ['type', 'id', 'providerMetadata'],
  'tool-input-available': ['type', 'toolCallId', 'toolName', 'input', 'providerExecuted', 'providerMetadata',
    'toolMetadata', 'dynamic', 'title'],
  'tool-output-available': ['type', 'toolCallId', 'output', 'providerExecuted', 'providerMetadata', 'toolMetadata',
    'dynamic', 'preliminary'],
  'data-*': ['type', 'id', 'data', 'transient'],
};

/** An SSE body parsed by the ai package's own parser and chunk schema; every chunk must validate. */
async function parseChunks(body) {
  const chunks = [];
  const results = parseJsonEventStream({ stream: new Response(body).body, schema: uiMessageChunkSchema });
  for await (const result of results) {
    assert.ok(result.success, `the ai package rejects a chunk: ${result.error} (raw: ${JSON.stringify(result.rawValue)})`);
    const allowed = FIELDS[result.value.type.startsWith('data-') ? 'data-*' : result.value.type];
    assert.ok(allowed, `a chunk type Sluice should not send here: ${JSON.stringify(result.value)}`);
    for (const key of Object.keys(result.rawValue)) {
      assert.ok(allowed.includes(key), `field ${key} is not in the protocol's ${result.value.type}: ${JSON.stringify(result.rawValue)}`);
    }
    chunks.push(result.value);
  }
  return chunks;
}

/** The UIMessage readUIMessageStream builds from `chunks`, and the errors it reports. */
async function assemble(chunks) {
  const errors = [];
  const stream = new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  let message;
  for await (const snapshot of readUIMessageStream({ stream, onError: (error) => errors.push(error) })) message = snapshot;
  return { message, errors: errors.map((e) => e.message) };
}

/** A message's parts without their ids (which each stream names its own way) or unset fields. */
const partsOf = (message) => JSON.parse(JSON.stringify(message.parts)).map(({ id, ...part }) => part);

const textOf = (message) => message.parts.filter((p) => p.type === 'text').map((p) => p.text).join('');
const types = (chunks) => chunks.map((c) => c.type);

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

async function snapshot(base, id, headers = {}) {
  const response = await fetch(`${base}/api/runs/${id}`, { headers });
  assert.equal(response.status, 200);
  return response.json();
}

/** An SSE response read frame by frame (a frame ends with a blank line). */
function frameReader(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const frames = [];
  let buffer = '';
  return {
    frames,
    /** Reads until `stop(frames)`; false when the body ended first. */
    async until(stop) {
      while (!stop(frames)) {
        const { value, done } = await reader.read();
        if (done) return false;
        buffer += decoder.decode(value, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          frames.push(buffer.slice(0, end + 2));
          buffer = buffer.slice(end + 2);
        }
      }
      return true;
    },
    async toEnd() {
      await this.until(() => false);
      return frames.join('') + buffer;
    },
    cancel: () => reader.cancel().catch(() => {}),
  };
}

const frameId = (frame) => frame.split('\n').find((line) => line.startsWith('id: '))?.slice(4);
const seqOf = (id) => Number(id.slice(id.lastIndexOf(':') + 1));

/**
 * A DefaultChatTransport on `base + /api/chat + query`; its fetch is the
 * global one, only watched, to learn each answer's status and X-Run-Id.
 */
function chatTransport(base, query = '', headers = undefined) {
  const calls = [];
  const transport = new DefaultChatTransport({
    api: `${base}/api/chat${query}`,
    headers,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      calls.push({
        url: String(url),
        method: init?.method,
        body: init?.body,
        status: response.status,
        runId: response.headers.get('x-run-id'),
        uiStream: response.headers.get('x-vercel-ai-ui-message-stream'),
      });
      return response;
    },
  });
  return { transport, calls };
}

const userMessage = (text) => ({ id: `u-${randomUUID()}`, role: 'user', parts: [{ type: 'text', text }] });

/** The first chunks of a transport stream, up to and including the n-th text-delta. */
async function readDeltas(reader, n) {
  const chunks = [];
  while (chunks.filter((c) => c.type === 'text-delta').length < n) {
    const { value, done } = await reader.read();
    assert.ok(!done, `the stream ended after ${JSON.stringify(chunks)}`);
    chunks.push(value);
  }
  return chunks;
}

/** The chat useChat runs, with a plain in-memory state (as the vanilla Chat has it). */
class MemoryChat extends AbstractChat {
  constructor({ messages = [], ...init }) {
    const state = {
      status: 'ready',
      error: undefined,
      messages,
      pushMessage(message) { this.messages = this.messages.concat(message); },
      popMessage() { this.messages = this.messages.slice(0, -1); },
      replaceMessage(index, message) { this.messages = this.messages.with(index, message); },
      snapshot: (thing) => structuredClone(thing),
    };
    super({ ...init, state });
  }
}

async function waitFor(what, condition, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

// ------------------------------------------------------------------ tests

test('format=ai-sdk is read by the ai package: every chunk validates, one message, id = X-Run-Id, text = snapshot', { skip }, async () => {
  const tokens = 30;
  const response = await fetch(`${sluice.base}/api/agent/stream?prompt=${encodeURIComponent('read me with ai')}&format=ai-sdk&tokens=${tokens}&interval_ms=0`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^text\/event-stream/);
  assert.equal(response.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  const runId = response.headers.get('x-run-id');
  assert.ok(runId);
  const body = await response.text();
  assert.ok(body.endsWith('data: [DONE]\n\n'), `the stream ends with [DONE]: ${JSON.stringify(body.slice(-80))}`);

  const chunks = await parseChunks(body);
  assert.deepEqual(types(chunks), [
    'start', 'start-step', 'text-start', ...Array(tokens).fill('text-delta'), 'text-end', 'finish-step', 'finish',
  ]);
  assert.deepEqual(chunks[0], { type: 'start', messageId: runId });
  const partIds = new Set(chunks.filter((c) => c.id !== undefined).map((c) => c.id));
  assert.equal(partIds.size, 1, 'one text part, one id');

  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, []);
  assert.equal(message.id, runId, 'the message id is the run id');
  assert.equal(message.role, 'assistant');
  assert.deepEqual(message.parts.map((p) => p.type), ['step-start', 'text']);
  assert.equal(message.parts[1].state, 'done');
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'done');
  assert.equal(textOf(message), snap.text);
  assert.ok(snap.text.length > tokens, 'real words');
});

test('format=ai-sdk resumed mid-run with Last-Event-ID: both bodies together are ONE valid stream', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?prompt=${encodeURIComponent('cut me')}&format=ai-sdk&tokens=40&interval_ms=50`);
  assert.equal(response.status, 200);
  const runId = response.headers.get('x-run-id');
  const first = frameReader(response);
  assert.ok(await first.until((frames) => frames.some((f) => frameId(f) && seqOf(frameId(f)) >= 5)), 'the run goes on');
  await first.cancel(); // the connection is cut
  // The body as a client keeps it: up to the last frame that carried an id.
  const lastWithId = first.frames.findLastIndex((f) => frameId(f));
  const prefix = first.frames.slice(0, lastWithId + 1).join('');
  const lastEventId = frameId(first.frames[lastWithId]);
  assert.ok(lastEventId.startsWith(`${runId}:`));
  assert.equal((await snapshot(sluice.base, runId)).status, 'running', 'cut mid-run');

  const resumed = await fetch(`${sluice.base}/api/runs/${runId}/events?format=ai-sdk`, {
    headers: { 'last-event-id': lastEventId },
  });
  assert.equal(resumed.status, 200);
  assert.equal(resumed.headers.get('x-vercel-ai-ui-message-stream'), 'v1');
  const rest = await resumed.text();

  const before = await parseChunks(prefix);
  const after = await parseChunks(rest);
  assert.equal(before.at(-1).type, 'text-delta', 'cut while the text part is open');
  const partId = before.find((c) => c.type === 'text-start').id;
  assert.equal(after[0].type, 'text-delta', `the resumed body continues the open part: ${JSON.stringify(after[0])}`);
  assert.ok(!after.some((c) => c.type === 'start' || c.type === 'start-step' || c.type === 'text-start'),
    'no second opening chunk');
  assert.deepEqual(new Set(after.filter((c) => c.id !== undefined).map((c) => c.id)), new Set([partId]),
    'the text part id continues');

  const whole = await parseChunks(prefix + rest);
  assert.equal(whole.filter((c) => c.type === 'start').length, 1);
  assert.equal(whole.filter((c) => c.type === 'text-delta').length, 40, 'no gap, no duplicate');
  assert.equal(whole.at(-1).type, 'finish');
  assert.ok(rest.endsWith('data: [DONE]\n\n'));
  const { message, errors } = await assemble(whole);
  assert.deepEqual(errors, [], 'readUIMessageStream accepts the joined stream');
  assert.equal(message.id, runId);
  assert.equal(message.parts.filter((p) => p.type === 'text').length, 1, 'one text part, not two');
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'done');
  assert.equal(textOf(message), snap.text);
});

/**
 * Cuts the finished run's whole ai-sdk `body` after each frame that carries
 * an id and resumes there with last_event_id: each joined stream must parse
 * to the same chunks as the whole one; after the last event, 204.
 */
async function assertResumesAtEveryBoundary(runId, body) {
  const whole = await parseChunks(body);
  const frames = body.split(/(?<=\n\n)/);
  const ids = frames.map(frameId);
  assert.ok(ids.filter(Boolean).length > 3);
  for (let i = 0; i < frames.length; i += 1) {
    if (!ids[i]) continue;
    const resumed = await fetch(`${sluice.base}/api/runs/${runId}/events?format=ai-sdk&last_event_id=${encodeURIComponent(ids[i])}`);
    if (i === frames.length - 1) {
      assert.equal(resumed.status, 204, 'nothing after the last event');
      continue;
    }
    assert.equal(resumed.status, 200);
    const joined = await parseChunks(frames.slice(0, i + 1).join('') + (await resumed.text()));
    assert.deepEqual(joined, whole, `resumed after ${ids[i]}`);
  }
}

test('format=ai-sdk resumed at every event boundary gives the same chunks as the whole stream; after the end, 204', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?prompt=boundaries&format=ai-sdk&tokens=6&interval_ms=0`);
  await assertResumesAtEveryBoundary(response.headers.get('x-run-id'), await response.text());
});

test('every kind of run event in format=ai-sdk: reasoning, text, a tool call and its result, a data part', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?agent=events&prompt=weather&format=ai-sdk`);
  assert.equal(response.status, 200);
  const runId = response.headers.get('x-run-id');
  const body = await response.text();
  const chunks = await parseChunks(body);
  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, []);
  assert.equal(message.id, runId);
  assert.deepEqual(partsOf(message), [
    { type: 'step-start' },
    { type: 'reasoning', text: 'The user wants the weather.', state: 'done' },
    { type: 'text', text: 'Let me look that up.', state: 'done' },
    {
      type: 'tool-weather', toolCallId: 'c1', state: 'output-available',
      input: { city: 'Paris' }, output: { city: 'Paris', temperature: 21 },
    },
    { type: 'data-progress', data: { pct: 50 } },
    { type: 'text', text: 'It is 21 °C in Paris ✓', state: 'done' },
  ]);
  const snap = await snapshot(sluice.base, runId);
  assert.equal(textOf(message), snap.text);
  // Resumed inside the reasoning, inside each text part, between parts.
  await assertResumesAtEveryBoundary(runId, body);
});

test("a real AI SDK route's reasoning and tool call, relayed by Sluice, read back as the message the route itself streams", { skip }, async () => {
  const prompt = 'Weather in Paris?';
  const direct = await toolsRoute(new Request('http://app.test/api/chat-tools', {
    method: 'POST',
    body: JSON.stringify({ messages: [{ role: 'user', content: prompt }] }),
  }));
  const straight = await assemble(await parseChunks(await direct.text()));
  assert.deepEqual(straight.errors, []);

  const response = await fetch(`${sluice.base}/api/agent/stream?agent=tools&format=ai-sdk&prompt=${encodeURIComponent(prompt)}`);
  assert.equal(response.status, 200);
  const relayed = await assemble(await parseChunks(await response.text()));
  assert.deepEqual(relayed.errors, []);
  assert.equal(relayed.message.id, response.headers.get('x-run-id'));
  assert.deepEqual(partsOf(relayed.message), partsOf(straight.message));
  assert.deepEqual(partsOf(relayed.message).map((p) => p.type), ['step-start', 'reasoning', 'tool-weather']);
});

test('a jsonl tool_call line in the README\'s flat shape keeps its tool name and input in format=ai-sdk and openai', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?agent=events&prompt=${encodeURIComponent('flat tool call')}&format=ai-sdk`);
  const chunks = await parseChunks(await response.text());
  const call = chunks.find((c) => c.type === 'tool-input-available');
  assert.deepEqual(call, { type: 'tool-input-available', toolCallId: 'c1', toolName: 'weather', input: { city: 'Paris' } });
  const openai = await (await fetch(`${sluice.base}/api/agent/stream?agent=events&prompt=${encodeURIComponent('flat tool call')}&format=openai`)).text();
  const calls = openai.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)))
    .flatMap((c) => c.choices?.[0]?.delta?.tool_calls ?? []);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].id, 'c1');
  assert.equal(calls[0].function.name, 'weather');
  assert.deepEqual(JSON.parse(calls[0].function.arguments), { city: 'Paris' });
});

test('keep-alive comments in format=ai-sdk pass through the ai package unseen', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?prompt=idle&format=ai-sdk&tokens=2&interval_ms=1600`);
  const runId = response.headers.get('x-run-id');
  const body = await response.text();
  assert.match(body, /^: keep-alive$/m, 'idle seconds sent keep-alives (keep_alive_secs = 1)');
  const chunks = await parseChunks(body);
  assert.deepEqual(types(chunks), ['start', 'start-step', 'text-start', 'text-delta', 'text-delta', 'text-end', 'finish-step', 'finish']);
  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, []);
  assert.equal(textOf(message), (await snapshot(sluice.base, runId)).text);
});

test('DefaultChatTransport: send, cut, reconnectToStream replays the running run; after the end and for an unknown chat, null', { skip }, async () => {
  const query = '?tokens=40&interval_ms=50';
  const { transport, calls } = chatTransport(sluice.base, query);
  const chatId = `chat-${randomUUID()}`;
  const messages = [userMessage('hello')];
  const abort = new AbortController();
  const stream = await transport.sendMessages({
    chatId, messages, trigger: 'submit-message', messageId: undefined, abortSignal: abort.signal,
  });
  assert.equal(calls[0].status, 200);
  assert.equal(calls[0].uiStream, 'v1');
  const runId = calls[0].runId;
  assert.ok(runId, 'X-Run-Id');
  const reader = stream.getReader();
  const beforeCut = await readDeltas(reader, 3);
  abort.abort(); // the page goes away: the connection is cut
  await reader.cancel().catch(() => {});
  assert.deepEqual(beforeCut[0], { type: 'start', messageId: runId });
  const running = await snapshot(sluice.base, runId);
  assert.equal(running.status, 'running', 'a cut is a disconnect, not a stop');
  assert.equal(running.prompt, 'hello');

  const resumed = await transport.reconnectToStream({ chatId });
  assert.ok(resumed, 'a stream while the run runs');
  assert.equal(calls[1].method, 'GET');
  assert.equal(calls[1].url, `${sluice.base}/api/chat/${chatId}/stream${query}`);
  assert.equal(calls[1].runId, runId);
  const chunks = await collect(resumed);
  assert.deepEqual(chunks.slice(0, beforeCut.length), beforeCut, 'from the run\'s first event');
  assert.equal(chunks.filter((c) => c.type === 'start').length, 1);
  assert.equal(chunks.filter((c) => c.type === 'text-delta').length, 40);
  assert.equal(chunks.at(-1).type, 'finish');
  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, []);
  assert.equal(message.id, runId);
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'done');
  assert.equal(textOf(message), snap.text);

  assert.equal(await transport.reconnectToStream({ chatId }), null, 'the run has ended');
  assert.equal(calls.at(-1).status, 204);
  assert.equal(await transport.reconnectToStream({ chatId: `unknown-${randomUUID()}` }), null, 'an unknown chat');
  assert.equal(calls.at(-1).status, 204);
});

test("useChat's Chat: a page closed mid-answer, reopened with resume, shows the whole answer once", { skip }, async () => {
  const { transport, calls } = chatTransport(sluice.base, '?tokens=40&interval_ms=50');
  const chatId = `reload-${randomUUID()}`;
  const page1 = new MemoryChat({ id: chatId, transport });
  const sending = page1.sendMessage({ text: 'hello from useChat' });
  await waitFor('streamed text', () => page1.lastMessage?.role === 'assistant' && textOf(page1.lastMessage).length > 0);
  await page1.stop(); // the page goes away: its request is aborted
  await sending;
  const runId = calls[0].runId;
  const persisted = structuredClone(page1.messages);
  assert.deepEqual(persisted.map((m) => m.role), ['user', 'assistant']);
  assert.equal(persisted[1].id, runId);
  const partial = textOf(persisted[1]);
  assert.equal((await snapshot(sluice.base, runId)).status, 'running');

  const finished = [];
  const page2 = new MemoryChat({ id: chatId, messages: persisted, transport, onFinish: (event) => finished.push(event) });
  await page2.resumeStream(); // what useChat({ resume: true }) calls on mount
  assert.equal(page2.status, 'ready');
  assert.equal(page2.error, undefined);
  assert.deepEqual(page2.messages.map((m) => m.role), ['user', 'assistant'], 'one answer, not two');
  assert.equal(page2.messages[0].parts[0].text, 'hello from useChat');
  const answer = page2.messages[1];
  assert.equal(answer.id, runId);
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'done');
  assert.equal(textOf(answer), snap.text);
  assert.ok(snap.text.startsWith(partial) && snap.text.length > partial.length);
  assert.equal(finished.length, 1);
  assert.equal(finished[0].isAbort, false);
  assert.equal(finished[0].isError, false);

  // Reopened once more after the end: nothing to resume, nothing changes.
  const page3 = new MemoryChat({ id: chatId, messages: structuredClone(page2.messages), transport });
  await page3.resumeStream();
  assert.equal(page3.status, 'ready');
  assert.deepEqual(page3.messages, page2.messages);
  assert.equal(calls.at(-1).status, 204);
});

test('DELETE /api/chat/{id}/stream stops a running chat: 202, the reader sees abort, the run is cancelled; then 204', { skip }, async () => {
  const { transport, calls } = chatTransport(sluice.base, '?tokens=400&interval_ms=50');
  const chatId = `stop-${randomUUID()}`;
  const stream = await transport.sendMessages({
    chatId, messages: [userMessage('stop me')], trigger: 'submit-message', messageId: undefined,
  });
  const runId = calls[0].runId;
  const chunks = [];
  const reading = (async () => { for await (const chunk of stream) chunks.push(chunk); })();
  await waitFor('some text', () => chunks.some((c) => c.type === 'text-delta'));

  const stop = await fetch(`${sluice.base}/api/chat/${encodeURIComponent(chatId)}/stream`, { method: 'DELETE' });
  assert.equal(stop.status, 202);
  await reading; // the stream ends by itself
  assert.deepEqual(types(chunks).slice(-3), ['text-end', 'finish-step', 'abort']);
  assert.ok(chunks.filter((c) => c.type === 'text-delta').length < 400, 'stopped early');
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'cancelled');
  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, []);
  assert.equal(textOf(message), snap.text, 'the text up to the stop');

  const again = await fetch(`${sluice.base}/api/chat/${encodeURIComponent(chatId)}/stream`, { method: 'DELETE' });
  assert.equal(again.status, 204, 'nothing running any more');
  assert.equal(await transport.reconnectToStream({ chatId }), null);
  const unknown = await fetch(`${sluice.base}/api/chat/unknown-${randomUUID()}/stream`, { method: 'DELETE' });
  assert.equal(unknown.status, 204);
});

test('chat ids are scoped per key: the same chat id under another key is another chat', { skip }, async () => {
  const chatId = `shared-${randomUUID()}`;
  const query = '?tokens=200&interval_ms=50';
  const a = chatTransport(secured.base, query, { Authorization: `Bearer ${KEY_A}` });
  const b = chatTransport(secured.base, query, { Authorization: `Bearer ${KEY_B}` });
  const anonymous = chatTransport(secured.base, query);
  const first = async (stream) => {
    const reader = stream.getReader();
    const { value } = await reader.read();
    await reader.cancel();
    return value;
  };

  const abort = new AbortController();
  const sentA = await a.transport.sendMessages({
    chatId, messages: [userMessage('from A')], trigger: 'submit-message', messageId: undefined, abortSignal: abort.signal,
  });
  const runA = a.calls[0].runId;
  assert.deepEqual(await first(sentA), { type: 'start', messageId: runA });
  abort.abort();

  assert.equal(await b.transport.reconnectToStream({ chatId }), null, "key B does not see key A's chat");
  assert.equal(b.calls.at(-1).status, 204);
  const stopByB = await fetch(`${secured.base}/api/chat/${chatId}/stream`, {
    method: 'DELETE', headers: { Authorization: `Bearer ${KEY_B}` },
  });
  assert.equal(stopByB.status, 204, "key B cannot stop key A's chat");
  await assert.rejects(anonymous.transport.reconnectToStream({ chatId }), 'no key: refused');
  assert.equal(anonymous.calls.at(-1).status, 401);
  const resumedA = await a.transport.reconnectToStream({ chatId });
  assert.ok(resumedA, "key A resumes its chat: B's stop did nothing");
  assert.deepEqual(await first(resumedA), { type: 'start', messageId: runA });

  // Key B starts its own chat under the same id: each key resumes its own run.
  const sentB = await b.transport.sendMessages({
    chatId, messages: [userMessage('from B')], trigger: 'submit-message', messageId: undefined,
  });
  const runB = b.calls.at(-1).runId;
  assert.notEqual(runB, runA);
  await first(sentB);
  assert.deepEqual(await first(await b.transport.reconnectToStream({ chatId })), { type: 'start', messageId: runB });
  assert.deepEqual(await first(await a.transport.reconnectToStream({ chatId })), { type: 'start', messageId: runA });
  assert.equal((await snapshot(secured.base, runA, { Authorization: `Bearer ${KEY_A}` })).prompt, 'from A');
  assert.equal((await snapshot(secured.base, runB, { Authorization: `Bearer ${KEY_B}` })).prompt, 'from B');

  for (const key of [KEY_A, KEY_B]) {
    const stop = await fetch(`${secured.base}/api/chat/${chatId}/stream`, {
      method: 'DELETE', headers: { Authorization: `Bearer ${key}` },
    });
    assert.equal(stop.status, 202, 'each key stops its own chat');
  }
});

test('a failed run in format=ai-sdk: an error chunk with the error message, then [DONE]', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?prompt=fail&format=ai-sdk&tokens=6&interval_ms=0&fail_after=2`);
  assert.equal(response.status, 200);
  const runId = response.headers.get('x-run-id');
  const body = await response.text();
  assert.ok(body.endsWith('data: [DONE]\n\n'), 'the stream ends');
  const chunks = await parseChunks(body);
  assert.equal(chunks.filter((c) => c.type === 'text-delta').length, 2);
  const last = chunks.at(-1);
  assert.equal(last.type, 'error');
  assert.ok(!chunks.some((c) => c.type === 'finish'));

  // The same run in Sluice's own format says what the error chunk must say.
  const own = await (await fetch(`${sluice.base}/api/runs/${runId}/events`)).text();
  const errorEvent = own.split('\n\n').find((block) => block.includes('event: error'));
  const { code, message: errorMessage } = JSON.parse(errorEvent.split('\n').find((l) => l.startsWith('data: ')).slice(6));
  assert.equal(code, 'simulated_failure');
  assert.equal(last.errorText, errorMessage);

  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, [errorMessage], "readUIMessageStream reports the run's error");
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'error');
  assert.equal(textOf(message), snap.text, 'the text before the failure');
});

test("useChat's Chat shows a failed run as its error, with the text before it", { skip }, async () => {
  const { transport, calls } = chatTransport(sluice.base, '?tokens=6&interval_ms=0&fail_after=3');
  const errors = [];
  const chat = new MemoryChat({ id: `fail-${randomUUID()}`, transport, onError: (error) => errors.push(error.message) });
  await chat.sendMessage({ text: 'fail please' });
  const runId = calls[0].runId;
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'error');
  assert.equal(chat.status, 'error');
  assert.match(chat.error.message, /fail_after/, 'the agent\'s own words');
  assert.deepEqual(errors, [chat.error.message]);
  assert.equal(chat.lastMessage.id, runId);
  assert.equal(textOf(chat.lastMessage), snap.text);
});

test('a run cancelled with DELETE /api/runs/{id} in format=ai-sdk: an abort chunk, then [DONE]', { skip }, async () => {
  const response = await fetch(`${sluice.base}/api/agent/stream?prompt=cancel&format=ai-sdk&tokens=400&interval_ms=50`);
  const runId = response.headers.get('x-run-id');
  const reader = frameReader(response);
  assert.ok(await reader.until((frames) => frames.some((f) => f.includes('"text-delta"'))));
  const cancel = await fetch(`${sluice.base}/api/runs/${runId}`, { method: 'DELETE' });
  assert.equal(cancel.status, 202);
  const body = await reader.toEnd();
  assert.ok(body.endsWith('data: [DONE]\n\n'), 'the stream ends');
  const chunks = await parseChunks(body);
  assert.deepEqual(types(chunks).slice(-3), ['text-end', 'finish-step', 'abort']);
  const { message, errors } = await assemble(chunks);
  assert.deepEqual(errors, []);
  const snap = await snapshot(sluice.base, runId);
  assert.equal(snap.status, 'cancelled');
  assert.equal(textOf(message), snap.text);
});

test("end to end: the AI SDK's own chat route behind Sluice, driven by DefaultChatTransport, cut and resumed", { skip }, async () => {
  // Cuts the first POST /api/chat answer after this many bytes (headers
  // included): a few text deltas into an answer of 18 slow ones.
  const proxy = await cuttingProxy(sluice.base, 'POST /api/chat', 1000);
  try {
    const { transport, calls } = chatTransport(proxy.base, '?agent=app');
    const chatId = `e2e-${randomUUID()}`;
    const messages = [
      userMessage('Can a cut connection be resumed? é✓'),
      { id: 'a-1', role: 'assistant', parts: [{ type: 'step-start' }, { type: 'text', text: 'Ask me.', state: 'done' }] },
      userMessage('Tell me'),
    ];
    const seenBefore = app.seen.length;
    const stream = await transport.sendMessages({
      chatId, messages, trigger: 'submit-message', messageId: undefined, body: { style: 'short' },
    });
    const runId = calls[0].runId;
    const beforeCut = [];
    let cut = null;
    try {
      for await (const chunk of stream) beforeCut.push(chunk);
    } catch (error) {
      cut = error;
    }
    assert.ok(cut, 'the connection was cut');
    assert.ok(beforeCut.some((c) => c.type === 'text-delta'), `cut after some text: ${JSON.stringify(beforeCut)}`);
    assert.ok(!beforeCut.some((c) => c.type === 'finish'), 'cut mid-answer');

    const resumed = await transport.reconnectToStream({ chatId });
    assert.ok(resumed, 'the run still runs: a stream, not null');
    const chunks = await collect(resumed);
    assert.deepEqual(chunks.slice(0, beforeCut.length), beforeCut, 'the replay starts with what was seen before the cut');
    assert.deepEqual(chunks.filter((c) => c.type === 'text-delta').map((c) => c.delta), CHAT_WORDS);
    assert.equal(chunks.at(-1).type, 'finish');
    const { message, errors } = await assemble(chunks);
    assert.deepEqual(errors, []);
    assert.equal(message.id, runId);
    assert.equal(textOf(message), CHAT_WORDS.join(''), 'the text the model produced');
    const snap = await snapshot(sluice.base, runId);
    assert.equal(snap.status, 'done');
    assert.equal(snap.text, CHAT_WORDS.join(''), "Sluice's snapshot");
    assert.equal(snap.prompt, 'Tell me');

    // The application got the transport's body as it was sent, once.
    const requests = app.seen.slice(seenBefore);
    assert.equal(requests.length, 1, 'one call to the app for one run');
    assert.equal(requests[0].headers['x-run-id'], runId);
    assert.equal(requests[0].body, calls[0].body, 'byte for byte');
    const received = JSON.parse(requests[0].body);
    assert.equal(received.id, chatId);
    assert.deepEqual(received.messages, messages);
    assert.equal(received.trigger, 'submit-message');
    assert.equal(received.style, 'short');
    // And the AI SDK turned it into the model's prompt.
    const prompt = chatModel.doStreamCalls.at(-1).prompt;
    assert.deepEqual(prompt.filter((m) => m.role === 'user').map((m) => m.content.map((p) => p.text).join('')),
      ['Can a cut connection be resumed? é✓', 'Tell me']);
  } finally {
    proxy.close();
  }
});
