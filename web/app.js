// The Sluice dashboard: plain JavaScript and the browser's own EventSource.
//
// Browsers allow six HTTP/1.1 connections per origin, shared by every tab of
// the origin. The page therefore never holds more than MAX_STREAMS event
// streams: opening one more pauses the stream of the run viewed least
// recently, and viewing that run again resumes it after its last event
// (`last_event_id`), so no text is lost or repeated.

import { WebhooksPanel } from './webhooks.js';

const MAX_STREAMS = 4;
const POLL_MS = 1000;
const CHART_SECONDS = 60;
const LIST_LIMIT = 50;
const POLL_LIMIT = 1000;

const $ = (selector, root = document) => root.querySelector(selector);

/**
 * Signing in: when the API answers 401, the page asks for a key once (every
 * request waiting on it shares the one dialog), trades it for the session
 * cookie with POST /api/session, and the requests are tried again. The key
 * itself is never stored by the page; EventSource sends the cookie by itself.
 */
const signIn = {
  pending: null,

  ask() {
    if (this.pending) return this.pending;
    this.pending = new Promise((resolve) => {
      const dialog = $('#sign-in');
      const form = $('#sign-in-form');
      const input = $('#api-key');
      const error = $('#sign-in-error');
      const submit = async (event) => {
        event.preventDefault();
        error.hidden = true;
        const response = await fetch('/api/session', {
          method: 'POST',
          headers: { authorization: `Bearer ${input.value.trim()}` },
        });
        if (response.ok) {
          form.removeEventListener('submit', submit);
          input.value = '';
          dialog.close();
          this.pending = null;
          resolve();
        } else {
          error.textContent = response.status === 401 ? 'That key is not valid.' : `Sign-in failed (${response.status}).`;
          error.hidden = false;
          input.select();
        }
      };
      form.addEventListener('submit', submit);
      dialog.addEventListener('cancel', (e) => e.preventDefault());
      dialog.showModal();
      input.focus();
    });
    return this.pending;
  },
};

/** Calls the API; throws an Error with `status` and `code` on a JSON error. */
async function api(method, path, body, signedIn = false) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && !signedIn) {
    await signIn.ask();
    return api(method, path, body, true);
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch { data = null; }
  }
  if (!response.ok) {
    const message = data?.error?.message ?? `${response.status} ${response.statusText}`;
    throw Object.assign(new Error(message), { status: response.status, code: data?.error?.code });
  }
  return data;
}

const runPath = (id) => `/api/runs/${encodeURIComponent(id)}`;
const shareUrl = (id) => `${location.origin}/#/runs/${encodeURIComponent(id)}`;
const seqOf = (eventId) => Number(String(eventId).split(':').pop());

function formatMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

function formatAgo(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  return `${Math.floor(seconds / 3600)}h ago`;
}

/** Limits how many runs stream at once; least recently viewed first out. */
class StreamPool {
  constructor(limit) {
    this.limit = limit;
    this.live = []; // least recently viewed first
  }

  acquire(view) {
    this.live = this.live.filter((v) => v !== view);
    while (this.live.length >= this.limit) this.live.shift().pause();
    this.live.push(view);
  }

  release(view) {
    this.live = this.live.filter((v) => v !== view);
  }

  touch(view) {
    if (this.live.includes(view)) {
      this.release(view);
      this.live.push(view);
    }
  }
}

const FINAL = new Set(['done', 'error', 'cancelled']);
const STATUS_TEXT = {
  connecting: 'connecting',
  streaming: 'streaming',
  reconnecting: 'reconnecting',
  paused: 'paused',
  done: 'done',
  error: 'error',
  cancelled: 'cancelled',
};

/** One open run: its pane, its text, its stream and its numbers. */
class RunView {
  constructor(app, id, meta = {}) {
    this.app = app;
    this.id = id;
    this.status = 'connecting';
    this.source = null;
    this.lastSeq = 0;
    this.lastEventId = null;
    this.tokens = 0;
    this.reconnects = 0;
    this.dropped = false;
    this.createdAt = null;
    this.runSeenAt = null;
    this.firstTokenAt = null;
    this.ttftMs = null;
    this.durationMs = null;
    this.pending = '';
    this.flushQueued = false;
    this.stick = true;
    this.retryTimer = null;
    this.build(meta);
  }

  build(meta) {
    const pane = $('#pane-template').content.firstElementChild.cloneNode(true);
    pane.id = `pane-${this.id}`;
    pane.hidden = true;
    this.pane = pane;
    this.output = $('[data-role=output]', pane);
    this.textNode = document.createTextNode('');
    this.output.append(this.textNode);
    this.badge = $('[data-role=status]', pane);
    this.note = $('[data-role=note]', pane);
    this.cancelButton = $('[data-role=cancel]', pane);
    $('[data-role=id]', pane).textContent = this.id;
    const share = $('[data-role=share]', pane);
    share.href = shareUrl(this.id);
    share.title = 'A link that replays and follows this run';
    $('[data-role=copy]', pane).addEventListener('click', (e) => this.copyLink(e.currentTarget));
    this.cancelButton.addEventListener('click', () => this.cancel());
    this.output.addEventListener('scroll', () => {
      const o = this.output;
      this.stick = o.scrollTop + o.clientHeight >= o.scrollHeight - 8;
    });
    this.setMeta(meta);
    this.setStatus('connecting');
  }

  setMeta({ prompt, agent }) {
    if (prompt !== undefined) {
      this.prompt = prompt;
      $('[data-role=prompt]', this.pane).textContent = prompt || '(empty prompt)';
      this.app.tabs.label(this);
    }
    if (agent !== undefined) $('[data-role=agent]', this.pane).textContent = agent;
  }

  get final() {
    return FINAL.has(this.status);
  }

  setStatus(status) {
    this.status = status;
    this.badge.dataset.status = status;
    this.badge.textContent = STATUS_TEXT[status] ?? status;
    this.cancelButton.disabled = this.final;
    this.app.tabs.status(this);
  }

  showNote(text) {
    this.note.textContent = text ?? '';
    this.note.hidden = !text;
  }

  /** Learns what the run is before streaming it; a gone run is shown as such. */
  async open() {
    try {
      const snapshot = await api('GET', runPath(this.id));
      this.setMeta(snapshot);
      this.createdAt = Date.parse(snapshot.created_at);
    } catch (error) {
      this.fail(error);
      return;
    }
    this.connect();
  }

  /** Opens (or resumes) the event stream, within the pool's limit. */
  connect() {
    clearTimeout(this.retryTimer);
    if (this.final || this.source) return;
    this.app.pool.acquire(this);
    this.showNote(null);
    const resume = this.lastEventId ? `?last_event_id=${encodeURIComponent(this.lastEventId)}` : '';
    const source = new EventSource(`${runPath(this.id)}/events${resume}`);
    this.source = source;
    this.setStatus(this.lastSeq ? 'reconnecting' : 'connecting');
    source.onopen = () => {
      if (this.dropped) {
        this.reconnects += 1;
        this.dropped = false;
        this.showNote('The connection dropped and was resumed where it stopped.');
      }
      this.setStatus('streaming');
      this.renderStats();
    };
    source.addEventListener('run', (e) => this.receive(e, (data) => {
      this.createdAt = Date.parse(data.created_at);
      this.runSeenAt = Date.now();
      this.setMeta({ agent: data.agent });
    }));
    source.addEventListener('token', (e) => this.receive(e, (data) => this.appendToken(data.text)));
    source.addEventListener('done', (e) => this.receive(e, (data) => this.finish(data)));
    source.addEventListener('error', (e) => {
      if (e.data) this.receive(e, (data) => this.finishWithError(data));
      else this.onConnectionError();
    });
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

  onConnectionError() {
    if (!this.source) return;
    if (this.source.readyState === EventSource.CONNECTING) {
      // EventSource reconnects by itself, sending Last-Event-ID: the same run resumes.
      this.dropped = true;
      this.setStatus('reconnecting');
      return;
    }
    // Closed for good: the server answered 204, 404, 410 or 503. The snapshot tells why.
    this.closeStream();
    this.settleFromSnapshot();
  }

  async settleFromSnapshot() {
    try {
      const snapshot = await api('GET', runPath(this.id));
      if (snapshot.status === 'running') {
        this.setStatus('reconnecting');
        this.retryTimer = setTimeout(() => this.connect(), 2000);
        return;
      }
      this.applyFinalSnapshot(snapshot);
    } catch (error) {
      this.fail(error);
    }
  }

  /** A finished run's snapshot holds all its text: it replaces what we had. */
  applyFinalSnapshot(snapshot) {
    this.flush();
    this.textNode.data = snapshot.text ?? '';
    this.tokens = snapshot.usage?.output_tokens ?? this.tokens;
    this.createdAt = Date.parse(snapshot.created_at);
    if (snapshot.finished_at) this.durationMs = Date.parse(snapshot.finished_at) - this.createdAt;
    this.scrollIfStuck();
    this.setStatus(snapshot.status);
    this.renderStats();
  }

  fail(error) {
    this.closeStream();
    this.setStatus('error');
    if (error.status === 410) this.showNote('This run was evicted by the retention policy: its events are gone.');
    else if (error.status === 404) this.showNote('No such run.');
    else this.showNote(error.message);
  }

  appendToken(text) {
    if (this.firstTokenAt === null) {
      this.firstTokenAt = Date.now();
      // A live estimate only when the run was watched from its start.
      if (this.runSeenAt !== null && this.runSeenAt - this.createdAt < 2000) {
        this.ttftMs = Math.max(0, this.firstTokenAt - this.createdAt);
      }
    }
    this.tokens += 1;
    this.pending += text;
    if (!this.flushQueued) {
      this.flushQueued = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.flushQueued = false;
    if (!this.pending) return;
    this.textNode.appendData(this.pending);
    this.pending = '';
    this.scrollIfStuck();
  }

  scrollIfStuck() {
    if (this.stick) this.output.scrollTop = this.output.scrollHeight;
  }

  finish(data) {
    this.ttftMs = data.ttft_ms ?? null;
    this.durationMs = data.duration_ms ?? null;
    if (data.usage?.output_tokens != null) this.tokens = data.usage.output_tokens;
    this.end(data.finish_reason === 'cancelled' ? 'cancelled' : 'done');
  }

  finishWithError(data) {
    this.showNote(`${data.code}: ${data.message}`);
    this.end('error');
  }

  end(status) {
    this.flush();
    this.closeStream();
    this.setStatus(status);
    this.renderStats();
    this.app.refreshSoon();
  }

  closeStream() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    this.app.pool.release(this);
  }

  /** Called by the pool to free a connection for a run viewed more recently. */
  pause() {
    if (!this.source) return;
    this.source.close();
    this.source = null;
    this.flush();
    this.setStatus('paused');
    this.showNote(`Paused: the page keeps at most ${MAX_STREAMS} live streams. It resumes, without gaps, when you open this run.`);
  }

  /** Shown again: resume a paused stream (a finished run is settled from its snapshot). */
  async resume() {
    this.app.pool.touch(this);
    if (this.status !== 'paused' || this.resuming) return;
    this.resuming = true;
    try {
      const snapshot = await api('GET', runPath(this.id));
      if (this.status !== 'paused') return;
      if (FINAL.has(snapshot.status)) this.applyFinalSnapshot(snapshot);
      else this.connect();
    } catch (error) {
      this.fail(error);
    } finally {
      this.resuming = false;
    }
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      await api('DELETE', runPath(this.id));
      // The stream brings the `done` event; a paused one fetches it now.
      if (!this.source) await this.resume();
    } catch (error) {
      this.showNote(`Cancel failed: ${error.message}`);
      this.cancelButton.disabled = this.final;
    }
  }

  async copyLink(button) {
    try {
      await navigator.clipboard.writeText(shareUrl(this.id));
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Copy failed';
    }
    setTimeout(() => { button.textContent = 'Copy link'; }, 1500);
  }

  renderStats() {
    const now = Date.now();
    const elapsed = this.durationMs ?? (this.createdAt ? Math.max(0, now - this.createdAt) : null);
    const seconds = elapsed ? elapsed / 1000 : 0;
    const set = (name, value) => { $(`[data-stat=${name}]`, this.pane).textContent = value; };
    set('ttft', formatMs(this.ttftMs));
    set('tokens', String(this.tokens));
    set('rate', seconds > 0 && this.tokens > 0 ? (this.tokens / seconds).toFixed(1) : '—');
    set('elapsed', formatMs(elapsed));
    set('reconnects', String(this.reconnects));
  }

  destroy() {
    clearTimeout(this.retryTimer);
    this.closeStream();
    this.pane.remove();
  }
}

/** The tab strip: one tab per open run, arrow keys move between them. */
class Tabs {
  constructor(app) {
    this.app = app;
    this.strip = $('#tabs');
    this.tabs = new Map();
    this.strip.addEventListener('keydown', (e) => this.onKey(e));
  }

  add(view) {
    const tab = document.createElement('div');
    tab.className = 'tab';
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'tab-open';
    open.setAttribute('role', 'tab');
    open.id = `tab-${view.id}`;
    open.setAttribute('aria-controls', view.pane.id);
    open.addEventListener('click', () => this.app.show(view.id));
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'tab-close';
    close.textContent = '×';
    close.addEventListener('click', () => this.app.close(view.id));
    tab.append(open, close);
    view.pane.setAttribute('aria-labelledby', open.id);
    this.strip.append(tab);
    this.tabs.set(view.id, { tab, open, close });
    this.label(view);
    this.status(view);
  }

  label(view) {
    const entry = this.tabs.get(view.id);
    if (!entry) return;
    const name = view.prompt ? view.prompt.slice(0, 40) : view.id.slice(0, 8);
    entry.open.textContent = name;
    entry.close.setAttribute('aria-label', `Close ${name}`);
  }

  status(view) {
    const entry = this.tabs.get(view.id);
    if (entry) entry.open.title = `${view.id} · ${view.status}`;
  }

  select(id) {
    for (const [tabId, { open }] of this.tabs) {
      const selected = tabId === id;
      open.setAttribute('aria-selected', String(selected));
      open.tabIndex = selected ? 0 : -1;
      open.parentElement.setAttribute('aria-selected', String(selected));
    }
  }

  remove(id) {
    this.tabs.get(id)?.tab.remove();
    this.tabs.delete(id);
  }

  onKey(event) {
    if (!['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(event.key)) return;
    const ids = [...this.tabs.keys()];
    const at = ids.indexOf(this.app.activeId);
    let next = at;
    if (event.key === 'ArrowLeft') next = (at - 1 + ids.length) % ids.length;
    if (event.key === 'ArrowRight') next = (at + 1) % ids.length;
    if (event.key === 'Home') next = 0;
    if (event.key === 'End') next = ids.length - 1;
    event.preventDefault();
    this.app.show(ids[next]);
    this.tabs.get(ids[next])?.open.focus();
  }
}

/** Gateway tokens per second, from the growth of every listed run's tokens. */
class ThroughputChart {
  constructor(canvas, label) {
    this.canvas = canvas;
    this.label = label;
    this.samples = []; // { t, rate }
    this.previous = null; // run id -> tokens
    this.lastAt = null;
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => this.draw());
    addEventListener('resize', () => this.draw());
  }

  static tokensOf(run) {
    if (run.status === 'running') return Math.max(0, run.events - 1);
    return run.usage?.output_tokens ?? Math.max(0, run.events - 2);
  }

  update(runs, at) {
    const current = new Map(runs.map((run) => [run.id, ThroughputChart.tokensOf(run)]));
    if (this.previous && this.lastAt) {
      let added = 0;
      for (const [id, tokens] of current) {
        added += Math.max(0, tokens - (this.previous.get(id) ?? 0));
      }
      const seconds = Math.max(0.001, (at - this.lastAt) / 1000);
      this.samples.push({ t: at, rate: added / seconds });
    }
    this.previous = current;
    this.lastAt = at;
    this.samples = this.samples.filter((s) => at - s.t <= CHART_SECONDS * 1000);
    const latest = this.samples.at(-1)?.rate ?? 0;
    this.label.textContent = `${Math.round(latest).toLocaleString()} tok/s`;
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(document.documentElement);
    const accent = style.getPropertyValue('--accent').trim() || '#0f766e';
    const border = style.getPropertyValue('--border').trim() || '#ccc';
    ctx.strokeStyle = border;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(0, height - 0.5);
    ctx.lineTo(width, height - 0.5);
    ctx.stroke();
    if (this.samples.length < 2) return;
    const now = this.samples.at(-1).t;
    const max = Math.max(1, ...this.samples.map((s) => s.rate));
    const x = (t) => width - ((now - t) / (CHART_SECONDS * 1000)) * width;
    const y = (rate) => height - 2 - (rate / max) * (height - 6);
    ctx.beginPath();
    this.samples.forEach((s, i) => (i ? ctx.lineTo(x(s.t), y(s.rate)) : ctx.moveTo(x(s.t), y(s.rate))));
    ctx.strokeStyle = accent;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(x(now), height);
    ctx.lineTo(x(this.samples[0].t), height);
    ctx.closePath();
    ctx.globalAlpha = 0.18;
    ctx.fillStyle = accent;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
}

/** The run form: agent picker, prompt, the agent's own parameters. */
class RunForm {
  constructor(app) {
    this.app = app;
    this.form = $('#run-form');
    this.agentSelect = $('#agent');
    this.prompt = $('#prompt');
    this.params = $('#params');
    this.error = $('#form-error');
    this.agents = [];
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    this.prompt.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.agentSelect.addEventListener('change', () => this.renderParams());
  }

  async load() {
    try {
      const { agents } = await api('GET', '/api/agents');
      this.agents = agents;
      this.agentSelect.replaceChildren(...agents.map((agent) => {
        const option = document.createElement('option');
        option.value = agent.name;
        option.textContent = agent.model ? `${agent.name} (${agent.model})` : agent.name;
        return option;
      }));
      if (agents.some((a) => a.name === 'sim')) this.agentSelect.value = 'sim';
      this.renderParams();
    } catch (error) {
      this.showError(`Cannot load the agents: ${error.message}`);
    }
  }

  renderParams() {
    const agent = this.agents.find((a) => a.name === this.agentSelect.value);
    const fields = Object.entries(agent?.params ?? {}).map(([name, description]) => {
      const field = document.createElement('div');
      field.className = 'field';
      const label = document.createElement('label');
      label.htmlFor = `param-${name}`;
      label.textContent = name;
      const input = document.createElement('input');
      input.id = `param-${name}`;
      input.name = name;
      input.autocomplete = 'off';
      input.dataset.param = name;
      input.title = description;
      const fallback = /default:?\s*([^),;]+)/i.exec(description)?.[1]?.trim();
      input.placeholder = fallback && !/derived/i.test(fallback) ? fallback : 'default';
      input.setAttribute('aria-description', description);
      field.append(label, input);
      return field;
    });
    const legend = this.params.querySelector('legend');
    this.params.replaceChildren(legend, ...fields);
    this.params.hidden = fields.length === 0;
  }

  /** The parameters the user filled in; numbers as numbers where JSON keeps them exact. */
  values() {
    const params = {};
    for (const input of this.params.querySelectorAll('input[data-param]')) {
      const value = input.value.trim();
      if (!value) continue;
      const number = Number(value);
      params[input.dataset.param] = /^-?\d+(\.\d+)?$/.test(value) && Number.isSafeInteger(Math.trunc(number)) ? number : value;
    }
    return params;
  }

  async submit() {
    this.showError(null);
    const button = $('#start');
    button.disabled = true;
    try {
      const agent = this.agentSelect.value;
      const prompt = this.prompt.value;
      const created = await api('POST', '/api/runs', { agent, prompt, params: this.values() });
      this.app.openRun(created.id, { prompt, agent });
      if (matchMedia('(max-width: 860px)').matches) {
        this.app.views.get(created.id)?.pane.scrollIntoView({ block: 'start' });
      }
    } catch (error) {
      this.showError(error.message);
    } finally {
      button.disabled = false;
    }
  }

  showError(message) {
    this.error.textContent = message ?? '';
    this.error.hidden = !message;
  }
}

/** The recent runs list, kept current by polling. */
class RunsList {
  constructor(app) {
    this.app = app;
    this.list = $('#runs-list');
    this.empty = $('#runs-empty');
    this.items = new Map();
  }

  render(runs) {
    const shown = runs.slice(0, LIST_LIMIT);
    const keep = new Set(shown.map((r) => r.id));
    for (const [id, item] of this.items) {
      if (!keep.has(id)) {
        item.li.remove();
        this.items.delete(id);
      }
    }
    shown.forEach((run, index) => {
      let item = this.items.get(run.id);
      if (!item) {
        item = this.create(run);
        this.items.set(run.id, item);
      }
      item.prompt.textContent = run.prompt || '(empty prompt)';
      item.badge.dataset.status = run.status;
      item.badge.textContent = run.status;
      item.when.textContent = formatAgo(run.created_at);
      item.events.textContent = `${run.events} events`;
      item.button.setAttribute('aria-current', String(run.id === this.app.activeId));
      if (this.list.children[index] !== item.li) this.list.insertBefore(item.li, this.list.children[index] ?? null);
    });
    this.empty.hidden = shown.length > 0;
  }

  create(run) {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'run-item';
    button.dataset.runId = run.id;
    const prompt = document.createElement('span');
    prompt.className = 'run-prompt';
    const badge = document.createElement('span');
    badge.className = 'badge';
    const meta = document.createElement('span');
    meta.className = 'run-meta';
    const id = document.createElement('code');
    id.textContent = run.id.slice(0, 8);
    id.title = run.id;
    const agent = document.createElement('span');
    agent.textContent = run.agent;
    const events = document.createElement('span');
    const when = document.createElement('span');
    meta.append(id, agent, events, when);
    button.append(prompt, badge, meta);
    button.addEventListener('click', () => this.app.openRun(run.id, { prompt: run.prompt, agent: run.agent }));
    li.append(button);
    return { li, button, prompt, badge, events, when };
  }
}

/** The page: open runs, the list, the chart, and the address bar (#/runs/{id}). */
class App {
  constructor() {
    this.pool = new StreamPool(MAX_STREAMS);
    this.views = new Map();
    this.activeId = null;
    this.tabs = new Tabs(this);
    this.form = new RunForm(this);
    this.runs = new RunsList(this);
    this.chart = new ThroughputChart($('#throughput-chart'), $('#throughput-now'));
    this.webhooks = new WebhooksPanel({
      root: $('#webhooks'),
      template: $('#hook-template'),
      api,
      openRun: (id) => this.openRun(id),
    });
    this.gateway = $('#gateway');
    this.pollTimer = null;
    this.running = new Set(); // ids of runs seen running, to notice when they end
  }

  start() {
    this.form.load();
    addEventListener('hashchange', () => this.route());
    document.addEventListener('visibilitychange', () => !document.hidden && this.refreshSoon());
    setInterval(() => this.views.get(this.activeId)?.renderStats(), 250);
    this.route();
    this.poll();
    this.webhooks.start();
  }

  route() {
    const match = /^#\/runs\/([A-Za-z0-9_-]+)$/.exec(location.hash);
    if (match) this.openRun(match[1]);
  }

  openRun(id, meta = {}) {
    let view = this.views.get(id);
    if (!view) {
      view = new RunView(this, id, meta);
      this.views.set(id, view);
      $('#panes').append(view.pane);
      this.tabs.add(view);
      this.show(id);
      view.open();
    } else {
      this.show(id);
    }
  }

  show(id) {
    const view = this.views.get(id);
    if (!view) return;
    this.activeId = id;
    for (const other of this.views.values()) other.pane.hidden = other !== view;
    $('#viewer-empty').hidden = true;
    this.tabs.select(id);
    if (location.hash !== `#/runs/${id}`) history.replaceState(null, '', `#/runs/${id}`);
    for (const { button } of this.runs.items.values()) {
      button.setAttribute('aria-current', String(button.dataset.runId === id));
    }
    view.renderStats();
    view.resume();
  }

  close(id) {
    const view = this.views.get(id);
    if (!view) return;
    const ids = [...this.views.keys()];
    const at = ids.indexOf(id);
    view.destroy();
    this.views.delete(id);
    this.tabs.remove(id);
    if (this.activeId === id) {
      const next = ids[at + 1] ?? ids[at - 1];
      if (next && next !== id) {
        this.show(next);
      } else {
        this.activeId = null;
        $('#viewer-empty').hidden = false;
        history.replaceState(null, '', location.pathname);
      }
    }
  }

  refreshSoon() {
    clearTimeout(this.pollTimer);
    this.pollTimer = setTimeout(() => this.poll(), 50);
  }

  async poll() {
    clearTimeout(this.pollTimer);
    if (!document.hidden) {
      try {
        const { runs } = await api('GET', `/api/runs?limit=${POLL_LIMIT}`);
        this.runs.render(runs);
        this.chart.update(runs, Date.now());
        this.noticeEnded(runs);
        this.gateway.textContent = 'online';
        this.gateway.className = 'gateway online';
      } catch {
        this.gateway.textContent = 'offline';
        this.gateway.className = 'gateway offline';
      }
    }
    this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
  }

  /** A run that ended has its webhook sent: the webhooks panel looks again soon after. */
  noticeEnded(runs) {
    const running = new Set(runs.filter((r) => r.status === 'running').map((r) => r.id));
    if ([...this.running].some((id) => !running.has(id))) this.webhooks.refreshSoon(1500);
    this.running = running;
  }
}

const app = new App();
app.start();
window.sluice = app; // for the curious, and for the browser tests
