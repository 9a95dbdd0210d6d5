// The Sluice dashboard, in plain JavaScript modules and the browser's own
// EventSource. This is the page itself: it builds the parts from the modules
// beside it, hands each what it needs, and keeps the open runs, the address
// bar (#/runs/{id}), the poll of recent runs and the gateway badge.

import { createApi, runEventsPath, runsPath } from './api.js';
import { ThroughputChart } from './chart.js';
import { RunView } from './run-view.js';
import { RunForm, RunsList } from './runs.js';
import { SignIn } from './sign-in.js';
import { MAX_STREAMS, RunStream, StreamPool } from './streams.js';
import { Tabs } from './tabs.js';
import { WebhooksPanel } from './webhooks.js';

const POLL_MS = 1000;
const POLL_LIMIT = 1000;

const $ = (selector) => document.querySelector(selector);

/** The page: open runs, the list, the chart, and the address bar (#/runs/{id}). */
class App {
  constructor() {
    const signIn = new SignIn({ dialog: $('#sign-in'), form: $('#sign-in-form'), input: $('#api-key'), error: $('#sign-in-error') });
    this.api = createApi(() => signIn.ask());
    this.pool = new StreamPool(MAX_STREAMS);
    this.views = new Map();
    this.activeId = null;
    this.tabs = new Tabs({ strip: $('#tabs'), onSelect: (id) => this.show(id), onClose: (id) => this.close(id) });
    this.form = new RunForm({
      form: $('#run-form'),
      agent: $('#agent'),
      prompt: $('#prompt'),
      params: $('#params'),
      error: $('#form-error'),
      start: $('#start'),
      api: this.api,
      onStarted: (id, meta) => {
        const view = this.openRun(id, meta);
        if (matchMedia('(max-width: 860px)').matches) view.pane.scrollIntoView({ block: 'start' });
      },
    });
    this.runs = new RunsList({ list: $('#runs-list'), empty: $('#runs-empty'), onOpen: (id, meta) => this.openRun(id, meta) });
    this.chart = new ThroughputChart($('#throughput-chart'), $('#throughput-now'));
    this.webhooks = new WebhooksPanel({
      root: $('#webhooks'),
      template: $('#hook-template'),
      api: this.api,
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

  /** Shows run `id`, opening a view of it first if there is none; returns the view. */
  openRun(id, meta = {}) {
    let view = this.views.get(id);
    if (!view) {
      view = new RunView({
        id,
        meta,
        template: $('#pane-template'),
        api: this.api,
        createStream: (on) => new RunStream({
          path: runEventsPath(id),
          createSource: (url) => new EventSource(url),
          pool: this.pool,
          on,
        }),
        onPrompt: (v) => this.tabs.label(v),
        onStatus: (v) => this.tabs.status(v),
        onEnd: () => this.refreshSoon(),
      });
      this.views.set(id, view);
      $('#panes').append(view.pane);
      this.tabs.add(view);
      this.show(id);
      view.open();
    } else {
      this.show(id);
    }
    return view;
  }

  show(id) {
    const view = this.views.get(id);
    if (!view) return;
    this.activeId = id;
    for (const other of this.views.values()) other.pane.hidden = other !== view;
    $('#viewer-empty').hidden = true;
    this.tabs.select(id);
    if (location.hash !== `#/runs/${id}`) history.replaceState(null, '', `#/runs/${id}`);
    this.runs.markCurrent(id);
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
        const { runs } = await this.api('GET', runsPath(POLL_LIMIT));
        this.runs.render(runs, this.activeId);
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
