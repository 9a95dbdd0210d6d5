// The tab strip above the viewer: one tab per open run, each with a close
// button; the arrow keys, Home and End move between the tabs.

export class Tabs {
  /** `strip`: the tablist; `onSelect(id)`, `onClose(id)`: what a tab's buttons ask of the page. */
  constructor({ strip, onSelect, onClose }) {
    Object.assign(this, { strip, onSelect, onClose });
    this.tabs = new Map();
    this.selected = null;
    this.strip.addEventListener('keydown', (e) => this.onKey(e));
  }

  /** A tab for `view` ({ id, pane, prompt, status }), after the others. */
  add(view) {
    const tab = document.createElement('div');
    tab.className = 'tab';
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'tab-open';
    open.setAttribute('role', 'tab');
    open.id = `tab-${view.id}`;
    open.setAttribute('aria-controls', view.pane.id);
    open.addEventListener('click', () => this.onSelect(view.id));
    const close = document.createElement('button');
    close.type = 'button';
    close.className = 'tab-close';
    close.textContent = '×';
    close.addEventListener('click', () => this.onClose(view.id));
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
    this.selected = id;
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
    if (this.selected === id) this.selected = null;
  }

  onKey(event) {
    if (!['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(event.key)) return;
    const ids = [...this.tabs.keys()];
    const at = ids.indexOf(this.selected);
    let next = at;
    if (event.key === 'ArrowLeft') next = (at - 1 + ids.length) % ids.length;
    if (event.key === 'ArrowRight') next = (at + 1) % ids.length;
    if (event.key === 'Home') next = 0;
    if (event.key === 'End') next = ids.length - 1;
    event.preventDefault();
    this.onSelect(ids[next]);
    this.tabs.get(ids[next])?.open.focus();
  }
}
