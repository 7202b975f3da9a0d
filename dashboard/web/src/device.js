import uPlot from 'uplot';
import { $, esc, fmt, ago, clock, unitOf, getJSON, every } from './util.js';
import { LiveFeed } from './live.js';

const RANGES = { '15m': 15 * 60e3, '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 };
const MAX_POINTS = 20000;

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// Chart is one metric's uPlot with its data columns (x in seconds).
class Chart {
  constructor(metric, container) {
    this.metric = metric;
    this.unit = unitOf(metric);
    this.xs = []; this.vals = []; this.mins = []; this.maxs = [];
    this.lastT = -Infinity; // ms of the newest point drawn
    this.ready = false;     // history loaded for the current generation
    this.buffer = [];       // live updates waiting for history
    this.el = document.createElement('div');
    this.el.className = 'chart card';
    this.el.dataset.metric = metric;
    this.el.innerHTML = `<div class="chead"><h3>${esc(metric)}</h3><span class="cval num">–</span></div><div class="plot"></div>`;
    container.appendChild(this.el);
    const accent = cssVar('--accent', '#2563eb');
    const fg = cssVar('--muted', '#667');
    const grid = cssVar('--grid', 'rgba(128,128,128,.15)');
    const unit = this.unit;
    this.u = new uPlot({
      width: Math.max(280, this.el.clientWidth - 24),
      height: 180,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      series: [
        {},
        { label: metric, stroke: accent, width: 1.5, points: { show: false }, spanGaps: false },
        { label: 'min', stroke: 'transparent', points: { show: false } },
        { label: 'max', stroke: 'transparent', points: { show: false } },
      ],
      bands: [{ series: [3, 2], fill: cssVar('--band', 'rgba(37,99,235,.18)') }],
      axes: [
        { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } },
        { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid }, size: 64, values: (u, vs) => vs.map((v) => fmt(v) + (unit ? ' ' + unit : '')) },
      ],
    }, [[], [], [], []], this.el.querySelector('.plot'));
  }

  reset() {
    this.xs = []; this.vals = []; this.mins = []; this.maxs = [];
    this.lastT = -Infinity;
    this.ready = false;
    this.buffer = [];
  }

  // push appends one point unless it is not newer than the last one: the
  // client-side half of the seam rule (dedup by timestamp).
  push(t, v, lo, hi) {
    if (!(t > this.lastT)) return false;
    this.xs.push(t / 1000); this.vals.push(v); this.mins.push(lo); this.maxs.push(hi);
    this.lastT = t;
    if (this.xs.length > MAX_POINTS) this.trimCount(this.xs.length - MAX_POINTS);
    return true;
  }

  trimBefore(ms) {
    let i = 0;
    const s = ms / 1000;
    while (i < this.xs.length && this.xs[i] < s) i++;
    if (i) this.trimCount(i);
  }

  trimCount(n) {
    this.xs.splice(0, n); this.vals.splice(0, n); this.mins.splice(0, n); this.maxs.splice(0, n);
  }

  draw(xmin, xmax) {
    this.u.batch(() => {
      this.u.setData([this.xs, this.vals, this.mins, this.maxs], false);
      this.u.setScale('x', { min: xmin / 1000, max: xmax / 1000 });
    });
    const n = this.vals.length;
    this.el.dataset.points = String(n); // read by the end-to-end test
    this.el.querySelector('.cval').textContent = n ? fmt(this.vals[n - 1]) + (this.unit ? ' ' + this.unit : '') : '–';
  }
}

export function devicePage(data) {
  const device = data.device;
  const chartsEl = $('#charts');
  const charts = new Map();
  let range = { kind: 'live', span: RANGES['15m'] };
  let seam = null;
  let generation = 0;
  let resume = false;
  let dirty = false;

  function ensureChart(metric) {
    let c = charts.get(metric);
    if (c) return c;
    const none = $('#nocharts');
    if (none) none.remove();
    c = new Chart(metric, chartsEl);
    // Keep charts in name order.
    const names = [...charts.keys(), metric].sort();
    const next = names[names.indexOf(metric) + 1];
    if (next) chartsEl.insertBefore(c.el, charts.get(next).el);
    charts.set(metric, c);
    return c;
  }

  function view() {
    const now = Date.now();
    if (range.kind === 'fixed') return [range.from, range.to];
    return [range.from ?? now - range.span, now];
  }

  function redraw() {
    dirty = false;
    const [lo, hi] = view();
    for (const c of charts.values()) {
      if (range.kind === 'live' && range.span) c.trimBefore(lo);
      c.draw(lo, hi);
    }
  }
  function scheduleDraw() {
    if (dirty) return;
    dirty = true;
    requestAnimationFrame(redraw);
  }
  setInterval(() => { if (range.kind === 'live' && !document.hidden) scheduleDraw(); }, 1000);

  // History for one chart: [from, to) from the series API, then the live
  // updates that arrived meanwhile.
  async function loadHistory(c, from, to, gen) {
    const points = Math.min(5000, Math.max(200, Math.round(c.el.clientWidth || 800)));
    const q = new URLSearchParams({ device, metric: c.metric, from: Math.floor(from), to: Math.floor(to), points });
    let s;
    try {
      s = await getJSON('/ui/api/series?' + q);
    } catch (e) {
      console.warn('history', c.metric, e);
      s = { points: [] };
    }
    if (gen !== generation) return; // superseded by a newer range or subscription
    const raw = !s.source || s.source === 'raw';
    for (const p of s.points || []) {
      const t = typeof p.t === 'number' ? p.t : Date.parse(p.t); // Unix ms (storage.Series JSON)
      c.push(t, raw ? p.last : p.avg, p.min, p.max);
    }
    for (const u of c.buffer) c.push(u.t, u.last, u.min, u.max);
    c.buffer = [];
    c.ready = true;
    scheduleDraw();
  }

  function startHistory(c, gen) {
    c.ready = false;
    if (range.kind === 'fixed') {
      c.reset();
      loadHistory(c, range.from, range.to, gen);
      return;
    }
    if (resume && c.lastT > -Infinity) {
      // Reconnected: fill the gap (lastT, seam) and keep what is drawn.
      loadHistory(c, c.lastT + 1, seam, gen);
      return;
    }
    c.reset();
    loadHistory(c, range.from ?? Date.now() - range.span, seam, gen);
  }

  // ---- latest values table ----
  const latestEl = $('#latest');
  function setLatest(metric, v, t) {
    let row = latestEl.querySelector(`tr[data-metric="${CSS.escape(metric)}"]`);
    if (!row) {
      const empty = latestEl.querySelector('tr.empty');
      if (empty) empty.remove();
      row = document.createElement('tr');
      row.dataset.metric = metric;
      row.innerHTML = `<th title="${esc(metric)}">${esc(metric)}</th><td class="num v"></td><td class="unit">${esc(unitOf(metric))}</td><td class="num t muted"></td>`;
      const after = [...latestEl.querySelectorAll('tr[data-metric]')].find((r) => r.dataset.metric > metric);
      latestEl.insertBefore(row, after || null);
    }
    row.querySelector('.v').textContent = fmt(v);
    row.querySelector('.t').textContent = clock(t);
  }

  // ---- live feed ----
  const badge = $('#livestate');
  const feed = new LiveFeed({
    device,
    onState: (s) => { badge.textContent = s; badge.className = 'badge ' + (s.startsWith('live') ? 'on' : 'off'); },
    onMessage: (m) => {
      switch (m.type) {
        case 'hello':
          resume = [...charts.values()].some((c) => c.lastT > -Infinity) && range.kind === 'live';
          // Over SSE the subscription is in the URL and already made.
          if (feed.ws) feed.subscribe([]);
          break;
        case 'subscribed': {
          if (m.device !== device) return;
          seam = m.seam;
          const gen = ++generation;
          for (const [metric, l] of Object.entries(m.latest || {})) setLatest(metric, l.v, l.t);
          const names = new Set([...(data.metrics || []), ...Object.keys(m.latest || {}), ...charts.keys()]);
          for (const metric of names) startHistory(ensureChart(metric), gen);
          resume = false;
          break;
        }
        case 'updates':
          for (const u of m.updates) {
            if (u.device !== device) continue;
            setLatest(u.metric, u.last, u.t);
            if (range.kind === 'fixed') continue;
            let c = charts.get(u.metric);
            if (!c) { c = ensureChart(u.metric); startHistory(c, generation); }
            if (c.ready) c.push(u.t, u.last, u.min, u.max);
            else c.buffer.push(u);
          }
          scheduleDraw();
          break;
        case 'presence':
          if (m.device === device) setOnline(m.online);
          break;
        case 'error':
          console.warn('live:', m.error);
          break;
      }
    },
  });
  feed.start();

  function setOnline(on) {
    const dot = $('#state');
    dot.className = 'dot ' + (on ? 'on' : 'off');
    dot.title = on ? 'online' : 'offline';
  }

  // ---- range picker ----
  const custom = $('#custom');
  for (const b of document.querySelectorAll('.ranges button')) {
    b.addEventListener('click', () => {
      for (const o of document.querySelectorAll('.ranges button')) o.setAttribute('aria-pressed', String(o === b));
      if (b.dataset.range === 'custom') { custom.hidden = false; return; }
      custom.hidden = true;
      range = { kind: 'live', span: RANGES[b.dataset.range] };
      resume = false;
      feed.subscribe([]); // a fresh seam; 'subscribed' reloads every chart
    });
  }
  custom.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const from = Date.parse(custom.elements.from.value);
    const toVal = custom.elements.to.value;
    if (Number.isNaN(from)) return;
    resume = false;
    if (!toVal) {
      range = { kind: 'live', from };
      feed.subscribe([]);
      return;
    }
    const to = Date.parse(toVal);
    if (!(to > from)) return;
    range = { kind: 'fixed', from, to };
    const gen = ++generation;
    for (const c of charts.values()) startHistory(c, gen);
  });

  // ---- stats (rate, last seen, online) ----
  const lastSeen = $('#lastseen');
  every(5000, async () => {
    const d = await getJSON('/ui/api/devices/' + encodeURIComponent(device));
    $('#rate').textContent = d.live.rate.toFixed(2);
    const ls = d.live.last_seen || (d.device.last_seen ? Date.parse(d.device.last_seen) : 0);
    lastSeen.textContent = ago(ls);
    lastSeen.title = ls ? new Date(ls).toISOString() : '';
    setOnline(d.live.online);
  });

  // ---- resize ----
  const ro = new ResizeObserver(() => {
    for (const c of charts.values()) c.u.setSize({ width: Math.max(280, c.el.clientWidth - 24), height: 180 });
  });
  ro.observe(chartsEl);

  // ---- command form ----
  const form = $('#command');
  if (form) {
    const out = $('#cmdresult');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = form.elements.name.value.trim();
      const text = form.elements.payload.value.trim();
      const body = { name };
      if (text) {
        try { body.payload = JSON.parse(text); } catch (e) { out.textContent = 'Payload is not valid JSON: ' + e.message; out.className = 'result err'; return; }
      }
      out.textContent = 'sending…';
      out.className = 'result';
      const btn = form.querySelector('button');
      btn.disabled = true;
      try {
        const res = await fetch('/ui/api/devices/' + encodeURIComponent(device) + '/commands', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': data.csrf },
          body: JSON.stringify(body),
        });
        const r = await res.json().catch(() => ({}));
        const ok = res.ok && r.ok;
        out.className = 'result ' + (ok ? 'ok' : 'err');
        out.textContent = `${ok ? '✓ ok' : '✗ ' + (r.error || r.detail || res.status)}  (id ${r.id || '–'}, HTTP ${res.status})` +
          (r.payload !== undefined ? '\n' + JSON.stringify(r.payload, null, 2) : '');
      } catch (e) {
        out.className = 'result err';
        out.textContent = 'request failed: ' + e.message;
      } finally {
        btn.disabled = false;
      }
    });
  }
}
