// The run event streams, without the DOM: a RunStream reads one run's events
// with an EventSource, applies each event once (by its sequence number), and
// can be paused and opened again after its last event. The StreamPool keeps
// the page within the browser's connection limit.
//
// Browsers allow six HTTP/1.1 connections per origin, shared by every tab of
// the origin. The page therefore never holds more than MAX_STREAMS event
// streams: opening one more pauses the stream of the run viewed least
// recently, and viewing that run again resumes it after its last event
// (`last_event_id`), so no text is lost or repeated.

/** The most event streams the page holds open at once. */
export const MAX_STREAMS = 4;

// EventSource.readyState while it reconnects by itself (HTML standard); named
// here so that an EventSource passed in need not define the constants.
const CONNECTING = 0;

/** The sequence number of an event id `{run_id}:{seq}`. */
export const seqOf = (eventId) => Number(String(eventId).split(':').pop());

/** Limits how many streams are open at once; least recently viewed first out. */
export class StreamPool {
  constructor(limit) {
    this.limit = limit;
    this.live = []; // least recently viewed first
  }

  /** Makes room for `stream`, pausing the least recently viewed ones. */
  acquire(stream) {
    this.live = this.live.filter((s) => s !== stream);
    while (this.live.length >= this.limit) this.live.shift().pause();
    this.live.push(stream);
  }

  release(stream) {
    this.live = this.live.filter((s) => s !== stream);
  }

  /** `stream` was viewed just now: it is paused last. */
  touch(stream) {
    if (this.live.includes(stream)) {
      this.release(stream);
      this.live.push(stream);
    }
  }
}

/**
 * One run's event stream. `path`: its events URL; `createSource(url)`: a new
 * EventSource (the page's, or a fake in tests); `pool`: the StreamPool; `on`:
 * what happens, all optional:
 * - `state(name)`: 'connecting', 'reconnecting', 'streaming' or 'paused';
 * - `resumed()`: a dropped connection is back (just before 'streaming');
 * - `run(data)`, `token(text)`: the run's events, each once;
 * - `done(data)`, `failed(data)`: its final event; the stream is closed;
 * - `lost()`: the server closed the stream without a final event.
 */
export class RunStream {
  constructor({ path, createSource, pool, on = {} }) {
    Object.assign(this, { path, createSource, pool, on });
    this.source = null;
    this.state = 'idle'; // or connecting, reconnecting, streaming, paused, closed, ended
    this.lastSeq = 0;
    this.lastEventId = null;
    this.reconnects = 0; // connections dropped and resumed by the EventSource itself
    this.dropped = false;
  }

  get isOpen() {
    return this.source !== null;
  }

  /**
   * Opens the stream within the pool's limit; after a pause or a lost
   * connection it resumes after the last event seen. False when it is already
   * open or has ended.
   */
  connect() {
    if (this.source || this.state === 'ended') return false;
    this.pool.acquire(this);
    const resume = this.lastEventId ? `?last_event_id=${encodeURIComponent(this.lastEventId)}` : '';
    const source = this.createSource(`${this.path}${resume}`);
    this.source = source;
    this.setState(this.lastSeq ? 'reconnecting' : 'connecting');
    // A closed source says nothing more; the guard keeps it so for any EventSource.
    const current = (handler) => (event) => source === this.source && handler(event);
    source.onopen = current(() => this.opened());
    source.addEventListener('run', current((e) => this.receive(e, (data) => this.on.run?.(data))));
    source.addEventListener('token', current((e) => this.receive(e, (data) => this.on.token?.(data.text))));
    source.addEventListener('done', current((e) => this.receive(e, (data) => this.end('done', data))));
    source.addEventListener('error', current((e) => {
      // The run's own `error` event carries data; a connection error does not.
      if (e.data) this.receive(e, (data) => this.end('failed', data));
      else this.connectionError();
    }));
    return true;
  }

  /** Applies one event once: anything at or before the last seen seq is ignored. */
  receive(event, apply) {
    const seq = seqOf(event.lastEventId);
    if (!(seq > this.lastSeq)) return;
    this.lastSeq = seq;
    this.lastEventId = event.lastEventId;
    let data;
    try { data = JSON.parse(event.data); } catch { return; }
    apply(data);
  }

  opened() {
    if (this.dropped) {
      this.reconnects += 1;
      this.dropped = false;
      this.on.resumed?.();
    }
    this.setState('streaming');
  }

  connectionError() {
    if (this.source.readyState === CONNECTING) {
      // EventSource reconnects by itself, sending Last-Event-ID: the same run resumes.
      this.dropped = true;
      this.setState('reconnecting');
      return;
    }
    // Closed for good: the server answered 204, 404, 410 or 503.
    this.close();
    this.on.lost?.();
  }

  end(kind, data) {
    this.close('ended');
    this.on[kind]?.(data);
  }

  /** Closes the stream and gives its place in the pool back; `connect` may open it again. */
  close(state = 'closed') {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    if (this.state !== 'ended') this.state = state;
    this.pool.release(this);
  }

  /** Frees the connection (the pool calls this); `connect` resumes after the last event. */
  pause() {
    if (!this.source) return;
    this.source.close();
    this.source = null;
    this.pool.release(this);
    this.setState('paused');
  }

  /** Marks the stream as viewed just now: the pool pauses it last. */
  touch() {
    this.pool.touch(this);
  }

  setState(state) {
    this.state = state;
    this.on.state?.(state);
  }
}
