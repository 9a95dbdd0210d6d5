// The sidebar's runs: the form that starts one (agent picker, prompt, the
// agent's own parameters) and the list of recent runs, which the page keeps
// current by polling.

import { AGENTS_PATH, RUNS_PATH } from './api.js';

const LIST_LIMIT = 50;

function formatAgo(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  return `${Math.floor(seconds / 3600)}h ago`;
}

/** The run form: agent picker, prompt, the agent's own parameters. */
export class RunForm {
  /**
   * The form and its parts (`agent` select, `prompt`, `params` fieldset,
   * `error` line, `start` button); `api(method, path, body)`: the page's API
   * caller; `onStarted(id, { prompt, agent })`: a run was created.
   */
  constructor({ form, agent, prompt, params, error, start, api, onStarted }) {
    Object.assign(this, { form, agentSelect: agent, prompt, params, error, start, api, onStarted });
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
      const { agents } = await this.api('GET', AGENTS_PATH);
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
    this.start.disabled = true;
    try {
      const agent = this.agentSelect.value;
      const prompt = this.prompt.value;
      const created = await this.api('POST', RUNS_PATH, { agent, prompt, params: this.values() });
      this.onStarted(created.id, { prompt, agent });
    } catch (error) {
      this.showError(error.message);
    } finally {
      this.start.disabled = false;
    }
  }

  showError(message) {
    this.error.textContent = message ?? '';
    this.error.hidden = !message;
  }
}

/** The recent runs list; `render` is given each poll's runs. */
export class RunsList {
  /** `list`, `empty`: the list and the line shown instead; `onOpen(id, { prompt, agent })`: a run was picked. */
  constructor({ list, empty, onOpen }) {
    Object.assign(this, { list, empty, onOpen });
    this.items = new Map();
  }

  /** Shows the newest runs; `activeId`'s is marked current. */
  render(runs, activeId) {
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
      item.button.setAttribute('aria-current', String(run.id === activeId));
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
    button.addEventListener('click', () => this.onOpen(run.id, { prompt: run.prompt, agent: run.agent }));
    li.append(button);
    return { li, button, prompt, badge, events, when };
  }

  /** Marks the run shown in the viewer. */
  markCurrent(id) {
    for (const { button } of this.items.values()) {
      button.setAttribute('aria-current', String(button.dataset.runId === id));
    }
  }
}
