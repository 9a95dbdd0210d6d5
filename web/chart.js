// The gateway throughput chart in the top bar: tokens per second across every
// listed run over the last minute, drawn on a canvas from the page's polls.

const CHART_SECONDS = 60;

/** Gateway tokens per second, from the growth of every listed run's tokens. */
export class ThroughputChart {
  /** `canvas`: where it is drawn; `label`: the latest rate, as text. */
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
