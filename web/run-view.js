// One open run in the viewer: its pane, its text and its numbers, fed by its
// RunStream. It learns what the run is from a snapshot before streaming, and
// settles from a snapshot when the stream cannot tell how the run ended.

import { runPath } from './api.js';
import { RunOutput } from './run-output.js';
import { MAX_STREAMS } from './streams.js';

const FINAL = new Set(['done', 'error', 'cancelled']);

const $ = (selector, root) => root.querySelector(selector);
const shareUrl = (id) => `${location.origin}/#/runs/${encodeURIComponent(id)}`;

function formatMs(ms) {
  if (ms == null || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60000);
  return `${minutes} min ${Math.round((ms % 60000) / 1000)} s`;
}

export class RunView {
  /**
   * `template`: the page's pane template; `api(method, path)`: the page's API
   * caller; `createStream(on)`: this run's RunStream, reporting to `on`;
   * `onPrompt(view)`, `onStatus(view)`: the prompt or status changed (its tab
   * shows both); `onEnd()`: the run ended while watched.
   */
  constructor({ id, meta = {}, template, api, createStream, onPrompt, onStatus, onEnd }) {
    Object.assign(this, { id, api, onPrompt, onStatus, onEnd });
    this.status = 'connecting';
    this.tokens = 0;
    this.createdAt = null;
    this.runSeenAt = null;
    this.firstTokenAt = null;
    this.ttftMs = null;
    this.durationMs = null;
    this.retryTimer = null;
    this.stream = createStream({
      state: (state) => this.streamState(state),
      resumed: () => this.showNote('The connection dropped and was resumed where it stopped.'),
      run: (data) => {
        this.createdAt = Date.parse(data.created_at);
        this.runSeenAt = Date.now();
        this.setMeta({ agent: data.agent });
      },
      token: (text) => this.appendToken(text),
      done: (data) => this.finish(data),
      failed: (data) => this.finishWithError(data),
      lost: () => this.settleFromSnapshot(), // the snapshot tells why
    });
    this.build(template, meta);
  }

  build(template, meta) {
    const pane = template.content.firstElementChild.cloneNode(true);
    pane.id = `pane-${this.id}`;
    pane.hidden = true;
    this.pane = pane;
    this.output = new RunOutput($('[data-role=output]', pane));
    this.badge = $('[data-role=status]', pane);
    this.note = $('[data-role=note]', pane);
    this.cancelButton = $('[data-role=cancel]', pane);
    $('[data-role=id]', pane).textContent = this.id;
    const share = $('[data-role=share]', pane);
    share.href = shareUrl(this.id);
    share.title = 'A link that replays and follows this run';
    $('[data-role=copy]', pane).addEventListener('click', (e) => this.copyLink(e.currentTarget));
    this.cancelButton.addEventListener('click', () => this.cancel());
    this.setMeta(meta);
    this.setStatus('connecting');
  }

  setMeta({ prompt, agent }) {
    if (prompt !== undefined) {
      this.prompt = prompt;
      $('[data-role=prompt]', this.pane).textContent = prompt || '(empty prompt)';
      this.onPrompt(this);
    }
    if (agent !== undefined) $('[data-role=agent]', this.pane).textContent = agent;
  }

  get final() {
    return FINAL.has(this.status);
  }

  setStatus(status) {
    this.status = status;
    this.badge.dataset.status = status;
    this.badge.textContent = status;
    this.cancelButton.disabled = this.final;
    this.onStatus(this);
  }

  streamState(state) {
    if (state === 'paused') {
      this.output.flush();
      this.setStatus('paused');
      this.showNote(`Paused: the page keeps at most ${MAX_STREAMS} live streams. It resumes, without gaps, when you open this run.`);
      return;
    }
    this.setStatus(state);
    if (state === 'streaming') this.renderStats();
  }

  showNote(text) {
    this.note.textContent = text ?? '';
    this.note.hidden = !text;
  }

  /** Learns what the run is before streaming it; a gone run is shown as such. */
  async open() {
    try {
      const snapshot = await this.api('GET', runPath(this.id));
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
    if (!this.final && this.stream.connect()) this.showNote(null);
  }

  async settleFromSnapshot() {
    try {
      const snapshot = await this.api('GET', runPath(this.id));
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
    this.output.replace(snapshot.text ?? '');
    this.tokens = snapshot.usage?.output_tokens ?? this.tokens;
    this.createdAt = Date.parse(snapshot.created_at);
    if (snapshot.finished_at) this.durationMs = Date.parse(snapshot.finished_at) - this.createdAt;
    this.setStatus(snapshot.status);
    this.renderStats();
  }

  fail(error) {
    this.stream.close();
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
    this.output.append(text);
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

  /** The stream brought the final event, and has closed itself. */
  end(status) {
    this.output.flush();
    this.setStatus(status);
    this.renderStats();
    this.onEnd();
  }

  /** Shown again: resume a paused stream (a finished run is settled from its snapshot). */
  async resume() {
    this.stream.touch();
    if (this.status !== 'paused' || this.resuming) return;
    this.resuming = true;
    try {
      const snapshot = await this.api('GET', runPath(this.id));
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
      await this.api('DELETE', runPath(this.id));
      // The stream brings the `done` event; a paused one fetches it now.
      if (!this.stream.isOpen) await this.resume();
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
    set('reconnects', String(this.stream.reconnects));
  }

  destroy() {
    clearTimeout(this.retryTimer);
    this.stream.close();
    this.pane.remove();
  }
}
