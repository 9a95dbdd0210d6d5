// The dashboard's stream logic (web/streams.js) without a browser: a RunStream
// driven by a fake EventSource applies each event once, pauses by closing its
// source and resumes after its last event, closes on a final event, and the
// pool never lets more streams be open than its limit.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runEventsPath } from '../../web/api.js';
import { RunStream, StreamPool, seqOf } from '../../web/streams.js';

/** An EventSource the test drives by hand; readyState as in the HTML standard. */
class FakeEventSource {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.closed = false;
    this.onopen = null;
    this.listeners = new Map();
  }

  addEventListener(type, listener) {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  close() {
    this.closed = true;
    this.readyState = 2;
  }

  dispatch(type, event) {
    for (const listener of this.listeners.get(type) ?? []) listener(event);
  }

  // What the network does.
  open() {
    this.readyState = 1;
    this.onopen?.({ type: 'open' });
  }

  /** One SSE event of the run: `id: {run}:{seq}`, JSON data. */
  emit(type, seq, data, run = 'r1') {
    this.dispatch(type, { type, lastEventId: `${run}:${seq}`, data: JSON.stringify(data) });
  }

  /** The connection dropped; the EventSource reconnects by itself. */
  drop() {
    this.readyState = 0;
    this.dispatch('error', { type: 'error' });
  }

  /** The server ended the stream for good (204, 404, 410, 503). */
  refuse() {
    this.readyState = 2;
    this.dispatch('error', { type: 'error' });
  }
}

/** A RunStream for run `id` on `pool`, with every report it makes recorded. */
function watch(id = 'r1', pool = new StreamPool(4)) {
  const sources = [];
  const seen = { states: [], tokens: [], runs: [], resumed: 0, done: [], failed: [], lost: 0 };
  const stream = new RunStream({
    path: runEventsPath(id),
    createSource: (url) => {
      const source = new FakeEventSource(url);
      sources.push(source);
      return source;
    },
    pool,
    on: {
      state: (state) => seen.states.push(state),
      resumed: () => { seen.resumed += 1; },
      run: (data) => seen.runs.push(data),
      token: (text) => seen.tokens.push(text),
      done: (data) => seen.done.push(data),
      failed: (data) => seen.failed.push(data),
      lost: () => { seen.lost += 1; },
    },
  });
  return { stream, sources, seen, pool, last: () => sources.at(-1) };
}

test('an event id is read as {run_id}:{seq}', () => {
  assert.equal(seqOf('r1:42'), 42);
  assert.equal(seqOf('a:b:7'), 7);
  assert.ok(Number.isNaN(seqOf(undefined)));
});

test('a stream opens its events URL and applies its events in order', () => {
  const { stream, sources, seen } = watch();
  assert.equal(stream.connect(), true);
  assert.equal(sources.length, 1);
  assert.equal(sources[0].url, '/api/runs/r1/events', 'no resume point on a first connect');
  assert.deepEqual(seen.states, ['connecting']);
  sources[0].open();
  assert.deepEqual(seen.states, ['connecting', 'streaming']);
  sources[0].emit('run', 1, { agent: 'sim', created_at: '2025-01-01T00:00:00Z' });
  sources[0].emit('token', 2, { text: 'Hel' });
  sources[0].emit('token', 3, { text: 'lo' });
  assert.deepEqual(seen.runs, [{ agent: 'sim', created_at: '2025-01-01T00:00:00Z' }]);
  assert.deepEqual(seen.tokens, ['Hel', 'lo']);
  assert.equal(stream.lastSeq, 3);
  assert.equal(stream.lastEventId, 'r1:3');
  assert.equal(stream.connect(), false, 'an open stream is not opened twice');
  assert.equal(sources.length, 1);
});

test('after a dropped connection, events already seen are dropped by their sequence', () => {
  const { stream, sources, seen } = watch();
  stream.connect();
  const source = sources[0];
  source.open();
  for (const [seq, text] of [[1, 'a'], [2, 'b'], [3, 'c']]) source.emit('token', seq, { text });
  source.drop();
  assert.equal(seen.states.at(-1), 'reconnecting');
  assert.equal(source.closed, false, 'the EventSource is left to reconnect by itself');
  assert.equal(seen.resumed, 0);
  source.open();
  assert.equal(seen.resumed, 1, 'the reconnect is reported');
  assert.equal(stream.reconnects, 1);
  assert.equal(seen.states.at(-1), 'streaming');
  // The server replays from an earlier point than the page has seen.
  for (const [seq, text] of [[2, 'b'], [3, 'c'], [4, 'd'], [3, 'c'], [5, 'e']]) source.emit('token', seq, { text });
  assert.deepEqual(seen.tokens, ['a', 'b', 'c', 'd', 'e'], 'each token once, in order');
  assert.equal(sources.length, 1, 'no new EventSource for a drop');
});

test('an event with data that is not JSON still counts as seen', () => {
  const { stream, sources, seen } = watch();
  stream.connect();
  sources[0].open();
  sources[0].dispatch('token', { type: 'token', lastEventId: 'r1:1', data: 'not json' });
  sources[0].emit('token', 1, { text: 'again' });
  sources[0].emit('token', 2, { text: 'next' });
  assert.deepEqual(seen.tokens, ['next']);
});

test('pause closes the source; connecting again resumes after the last event seen', () => {
  const { stream, sources, seen, pool } = watch('run one');
  stream.connect();
  sources[0].open();
  sources[0].emit('token', 1, { text: 'x' }, 'run one');
  sources[0].emit('token', 2, { text: 'y' }, 'run one');
  stream.pause();
  assert.equal(sources[0].closed, true);
  assert.equal(stream.isOpen, false);
  assert.equal(seen.states.at(-1), 'paused');
  assert.deepEqual(pool.live, [], 'a paused stream holds no place in the pool');
  // Anything the closed source still says is ignored.
  sources[0].emit('token', 3, { text: 'late' }, 'run one');
  assert.deepEqual(seen.tokens, ['x', 'y']);

  assert.equal(stream.connect(), true);
  assert.equal(sources.length, 2);
  assert.equal(sources[1].url, '/api/runs/run%20one/events?last_event_id=run%20one%3A2');
  assert.equal(seen.states.at(-1), 'reconnecting', 'a resumed stream says so until it opens');
  sources[1].open();
  assert.equal(seen.states.at(-1), 'streaming');
  assert.equal(seen.resumed, 0, 'a resume after a pause is not a dropped connection');
  assert.equal(stream.reconnects, 0);
  sources[1].emit('token', 2, { text: 'y' }, 'run one');
  sources[1].emit('token', 3, { text: 'z' }, 'run one');
  assert.deepEqual(seen.tokens, ['x', 'y', 'z']);
});

test('the done event closes the stream for good', () => {
  const { stream, sources, seen, pool } = watch();
  stream.connect();
  sources[0].open();
  sources[0].emit('token', 1, { text: 'a' });
  const done = { finish_reason: 'stop', usage: { output_tokens: 1 } };
  sources[0].emit('done', 2, done);
  assert.deepEqual(seen.done, [done]);
  assert.equal(sources[0].closed, true);
  assert.equal(stream.state, 'ended');
  assert.deepEqual(pool.live, []);
  sources[0].emit('done', 2, done);
  assert.equal(seen.done.length, 1, 'reported once');
  assert.equal(stream.connect(), false, 'an ended stream is not opened again');
  stream.close();
  assert.equal(stream.connect(), false, 'not even after close');
  assert.equal(sources.length, 1);
});

test("the run's error event closes the stream; a connection error does not", () => {
  const { stream, sources, seen } = watch();
  stream.connect();
  sources[0].open();
  sources[0].drop();
  sources[0].open();
  assert.equal(sources[0].closed, false);
  const error = { code: 'simulated_failure', message: 'the sim failed' };
  sources[0].emit('error', 1, error);
  assert.deepEqual(seen.failed, [error]);
  assert.equal(sources[0].closed, true);
  assert.equal(stream.state, 'ended');
  assert.equal(seen.lost, 0);
  assert.equal(stream.connect(), false);
});

test('a stream the server closed without a final event is lost, and can resume later', () => {
  const { stream, sources, seen, pool } = watch();
  stream.connect();
  sources[0].open();
  sources[0].emit('token', 4, { text: 'd' });
  sources[0].refuse();
  assert.equal(seen.lost, 1);
  assert.equal(sources[0].closed, true);
  assert.equal(stream.isOpen, false);
  assert.deepEqual(pool.live, []);
  assert.equal(stream.connect(), true);
  assert.equal(sources[1].url, '/api/runs/r1/events?last_event_id=r1%3A4');
});

test('the pool pauses the stream viewed least recently to stay within its limit', () => {
  const pool = new StreamPool(2);
  const [a, b, c] = ['a', 'b', 'c'].map((id) => watch(id, pool));
  const open = () => [a, b, c].filter((w) => w.stream.isOpen).length;
  a.stream.connect();
  b.stream.connect();
  assert.equal(open(), 2);
  a.stream.touch(); // a viewed again: b is now the least recent
  c.stream.connect();
  assert.equal(open(), 2);
  assert.equal(b.seen.states.at(-1), 'paused');
  assert.equal(b.last().closed, true, 'closed before the new one was made');
  assert.equal(a.stream.isOpen, true);
  assert.deepEqual(pool.live, [a.stream, c.stream]);

  // Viewing b again resumes it, and pauses a, now the least recent.
  b.last().emit('token', 1, { text: 'b1' }, 'b'); // from a closed source: ignored
  assert.equal(b.stream.connect(), true);
  assert.equal(a.seen.states.at(-1), 'paused');
  assert.equal(open(), 2);
  assert.equal(b.last().url, '/api/runs/b/events', 'b had seen no event: it starts from the beginning');

  // An ended stream gives its place back without pausing anyone.
  c.last().emit('done', 1, {}, 'c');
  a.stream.connect();
  assert.equal(b.stream.isOpen, true);
  assert.equal(open(), 2);
  assert.deepEqual(pool.live, [b.stream, a.stream]);
});

test('closing a stream gives its place back and silences its source', () => {
  const { stream, sources, seen, pool } = watch();
  stream.connect();
  sources[0].open();
  stream.close();
  assert.equal(sources[0].closed, true);
  assert.deepEqual(pool.live, []);
  sources[0].emit('token', 1, { text: 'after close' });
  sources[0].refuse();
  assert.deepEqual(seen.tokens, []);
  assert.equal(seen.lost, 0);
});
