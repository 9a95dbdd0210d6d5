// The dashboard's webhooks panel (SPEC 13): the key's failed deliveries, each
// with a Retry button; hidden while the gateway has webhooks off. What it
// needs is passed in: its section, the `api` caller, how to open a run.

import { deliveriesPath, retryPath } from './api.js';

const REFRESH_MS = 5000;
const FOLLOW_MS = 1000; // while a retried delivery is pending
const LIMIT = 100;

/** What the last attempt got: the receiver's status, else why no answer came. */
function lastAnswer(d) {
  if (d.last_status != null) return `HTTP ${d.last_status}`;
  return d.last_error || (d.status === 'pending' ? 'not sent yet' : 'no answer');
}

const short = (id) => id.slice(0, 12);

export class WebhooksPanel {
  /** `root`: the panel; `template`: a row's; `api(method, path)`: the page's API caller; `openRun(id)`. */
  constructor({ root, template, api, openRun }) {
    Object.assign(this, { root, template, api, openRun });
    const part = (role) => root.querySelector(`[data-role=${role}]`);
    this.list = part('list');
    this.empty = part('empty');
    this.error = part('error');
    this.announce = part('announce');
    this.rows = new Map(); // delivery id -> its row's elements
    this.retried = new Set(); // ids sent again from here, followed until they settle
    this.enabled = null; // unknown until the first answer
    this.timer = null;
    this.seq = 0; // an answer older than a newer request, or than a retry, is dropped
    this.errorFrom = null; // a load error clears on the next good answer; a retry's stays
    part('refresh').addEventListener('click', () => this.refresh());
  }

  start() {
    document.addEventListener('visibilitychange', () => !document.hidden && this.refreshSoon());
    this.refresh();
  }

  /** Refreshes after `ms`, e.g. once a run has ended and its hook has gone out. */
  refreshSoon(ms = 50) {
    if (this.timer && this.due <= Date.now() + ms) return; // never later than already due
    this.schedule(ms);
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.due = Date.now() + ms;
    this.timer = setTimeout(() => this.refresh(), ms);
  }

  async refresh() {
    clearTimeout(this.timer);
    this.timer = null;
    const seq = ++this.seq;
    if (!document.hidden) {
      try {
        const { enabled, deliveries } = await this.api('GET', deliveriesPath('failed', LIMIT));
        let shown = deliveries;
        if (this.retried.size) {
          // A retried delivery stays pending until it is delivered (it leaves) or fails again.
          const pending = (await this.api('GET', deliveriesPath('pending', 1000))).deliveries.filter((d) => this.retried.has(d.id));
          if (seq !== this.seq) return;
          const failed = new Set(deliveries.map((d) => d.id));
          for (const id of this.retried) {
            if (pending.some((d) => d.id === id)) continue;
            this.retried.delete(id);
            if (!failed.has(id)) this.announce.textContent = `Delivery ${short(id)} was delivered.`;
          }
          shown = [...pending, ...deliveries];
        }
        if (seq !== this.seq) return;
        this.enabled = enabled;
        if (this.errorFrom === 'load') this.showError(null);
        this.render(shown);
      } catch (error) {
        if (seq !== this.seq) return;
        // Not while webhooks are known to be off: the gateway badge tells of outages.
        if (this.enabled !== false) this.showError(`Cannot load the webhook deliveries: ${error.message}`, 'load');
      }
    }
    this.refreshSoon(this.retried.size ? FOLLOW_MS : REFRESH_MS);
  }

  render(deliveries) {
    this.root.hidden = !this.enabled;
    const keep = new Set(deliveries.map((d) => d.id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.li.remove();
        this.rows.delete(id);
      }
    }
    deliveries.forEach((delivery, index) => {
      let row = this.rows.get(delivery.id);
      if (!row) this.rows.set(delivery.id, (row = this.create(delivery)));
      this.update(row, delivery);
      if (this.list.children[index] !== row.li) this.list.insertBefore(row.li, this.list.children[index] ?? null);
    });
    this.empty.hidden = deliveries.length > 0;
  }

  /** A row from the page's `#hook-template`, filled in with what never changes. */
  create({ id, url, run_id: runId }) {
    const li = this.template.content.firstElementChild.cloneNode(true);
    const part = (role) => li.querySelector(`[data-role=${role}]`);
    li.dataset.deliveryId = id;
    Object.assign(part('id'), { id: `hook-${id}`, title: `Delivery ${id}`, textContent: short(id) });
    Object.assign(part('url'), { title: url, textContent: url });
    const run = part('run');
    Object.assign(run, { title: `Open run ${runId}`, textContent: runId.slice(0, 8) });
    run.addEventListener('click', () => this.openRun(runId));
    const retry = part('retry');
    retry.setAttribute('aria-describedby', `hook-${id}`);
    retry.addEventListener('click', () => this.retry(id));
    return { li, retry, badge: part('state'), attempts: part('attempts'), answer: part('answer'), busy: false };
  }

  update(row, delivery) {
    row.badge.dataset.status = delivery.status;
    row.badge.textContent = delivery.status;
    row.retry.disabled = row.busy || delivery.status !== 'failed';
    row.attempts.textContent = `${delivery.attempts} attempt${delivery.attempts === 1 ? '' : 's'}`;
    row.answer.textContent = lastAnswer(delivery);
    row.answer.title = delivery.last_error ?? '';
  }

  async retry(id) {
    const row = this.rows.get(id);
    if (!row) return;
    row.busy = row.retry.disabled = true;
    this.showError(null);
    try {
      const delivery = await this.api('POST', retryPath(id));
      this.seq += 1;
      this.retried.add(id);
      this.announce.textContent = `Delivery ${short(id)} is being sent again.`;
      row.busy = false;
      this.update(row, delivery);
    } catch (error) {
      row.busy = row.retry.disabled = false;
      this.showError(`Retry of ${short(id)} failed: ${error.message}`, 'retry');
    }
    this.refreshSoon(FOLLOW_MS);
  }

  showError(message, from = null) {
    this.errorFrom = message ? from : null;
    this.error.textContent = message ?? '';
    this.error.hidden = !message;
    if (message) this.root.hidden = false;
  }
}
